"""FedBN — Li et al. 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization" (ICLR 2021).

Every BatchNorm layer's tensors — weight γ, bias β, running_mean, running_var, num_batches_tracked — stay on the
client: they never travel, never enter the aggregate and never get DP noise; everything else is averaged as in
FedAvg (x ← Σ_i p_i y_i over the shared tensors, p_i = n_i / Σ n_j). Layers are found by module type
(torch's `_BatchNorm`: BatchNorm1d/2d/3d, SyncBatchNorm; not by a "bn" in the name as Flower Baselines' fedbn
does). LayerNorm and GroupNorm hold no data statistics and stay federated; to keep them local too, add their names
to `federation.local_keys`. A model without BatchNorm is refused: FedBN would be FedAvg.

A client that has not trained yet starts from the initial model's BatchNorm tensors. Evaluation is personalised:
see fedctl.core.engine (`Run.evaluate`): each client is evaluated with the global tensors and its own BatchNorm on
its own held-out data, and the global record is the example-weighted mean of those.
Composition: `federation.dp` (both modes; BatchNorm statistics no longer travel, so `dp.buffers` does not apply to
them), `federation.prune`, every workload with BatchNorm (asr's DeepSpeech2). Not on the Flower backend.
"""

from __future__ import annotations

from torch import nn

from fedctl.core.strategies.base import Strategy
from fedctl.errors import FedctlError


def batchnorm_keys(model: nn.Module) -> list[str]:
    """State-dict names of every BatchNorm module's parameters and buffers."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            prefix = f"{name}." if name else ""
            keys += [prefix + k for k in module.state_dict()]
    return keys


class FedBN(Strategy):
    name = "fedbn"
    client_state = "its BatchNorm parameters and statistics"

    def __init__(self) -> None:
        pass

    def local_keys(self, model, shared_keys: list[str], patterns: list[str]) -> list[str]:
        keys = [k for k in batchnorm_keys(model) if k in shared_keys]
        if not keys:
            raise FedctlError("strategy fedbn: the model has no BatchNorm layer among its shared tensors, so FedBN "
                              "would be FedAvg",
                              "use --strategy fedavg, or fedper with federation.local_keys for other local layers")
        return keys
