"""FedPer — Arivazhagan et al. 2019, "Federated Learning with Personalization Layers".

The model is a federated base and personalised layers: the tensors whose names match a `federation.local_keys`
glob pattern (fnmatch, e.g. `classifier.*` or `*.head.*`) stay on each client and never travel; the base is
averaged as in FedAvg (x ← Σ_i p_i y_i, p_i = n_i / Σ n_j). Every pattern must match at least one shared tensor.
(`federation.local_keys` works with every strategy; FedPer is FedAvg that requires it.)

A client that has not trained yet starts from the initial model's personal layers. Evaluation is personalised (see
`Run.evaluate`): each client with its own layers on its own held-out data; the global record is their
example-weighted mean. Composition: `federation.dp` (both modes: only the base travels and is clipped and noised),
`federation.prune`, every workload. Not on the Flower backend.
"""

from __future__ import annotations

from fedctl.core.strategies.base import Strategy
from fedctl.errors import FedctlError


class FedPer(Strategy):
    name = "fedper"
    client_state = "its personal layers (federation.local_keys)"

    def __init__(self) -> None:
        pass

    def local_keys(self, model, shared_keys: list[str], patterns: list[str]) -> list[str]:
        if not patterns:
            raise FedctlError("strategy fedper needs federation.local_keys: the personal layers that stay on clients",
                              "e.g. --set 'federation.local_keys=[\"classifier.*\"]' (glob patterns over tensor names)")
        return []  # the engine applies the patterns (for every strategy) and checks that each matches
