"""SCAFFOLD — Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"
(ICML 2020, Algorithm 1, option II).

State: x the global model, c the server control variate, c_i client i's variate (kept on the client, in the
client-state store; zeros before its first round); all shaped like x's trainable parameters.
Client i, starting from y_i = x, takes K local steps on the corrected gradient
    y_i ← y_i − η_l · (g_i(y_i) − c_i + c)
(fedctl adds c − c_i to each step's final gradient, so with AdamW or momentum the correction goes through the
optimizer like the gradient does; with plain SGD this is the paper's step), then (option II)
    c_i⁺ = c_i − c + (x − y_i) / (K·η_l)
(K·η_l is the sum of the K steps' learning rates, so a warmup schedule is accounted for) and uploads y_i and
Δc_i = c_i⁺ − c_i. The server, with S the clients that returned and N all clients:
    x ← x + server_learning_rate · mean_S(y_i − x)        (η_g; buffers such as BatchNorm statistics: the mean)
    c ← c + (|S| / N) · mean_S(Δc_i)
Means are weighted by num_examples (as Flower Baselines' niid_bench does; the paper's uniform mean is the
equal-size case; under `federation.dp` mode client the weights are equal).

Cost: traffic is 2× the model each way (c down, Δc up); memory is one model-sized c_i per client (spilled to
disk beyond `federation.client_state_memory`) and c on the server.
Composition: `federation.dp` mode client — Δc_i is computed from the clipped and noised update, so it is
post-processing of what the noise covers; mode server is refused (the server would average un-noised Δc_i).
`federation.prune` prunes y_i − x before Δc_i is derived from it. Not on the Flower backend (client state).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedctl.core.aggregate import State, WeightedMean
from fedctl.core.instructions import ClientInstructions
from fedctl.core.stateful import SCAFFOLD_DELTA
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy
from fedctl.errors import FedctlError


class _ScaffoldMean(Aggregator):
    def __init__(self, owner: Scaffold, workspace: State | None) -> None:
        self.owner = owner
        self.y = WeightedMean(workspace)
        self.dc = WeightedMean()

    @property
    def count(self) -> int:
        return self.y.count

    def add(self, update: ClientUpdate) -> None:
        dc = update.stats.get(SCAFFOLD_DELTA)
        if dc is None:
            raise FedctlError(f"client {update.client_id} returned no SCAFFOLD control-variate update",
                              "the client side must run fedctl.core.stateful.train (every fedctl executor does)")
        self.y.add(update.state, float(update.num_examples))
        self.dc.add(dc, float(update.num_examples))

    def result(self, global_state: State) -> State:
        mean = self.y.result(like=global_state)
        eta = self.owner.server_learning_rate
        out = {}
        for k, x in global_state.items():
            if k in self.owner.variate_keys and eta != 1.0:
                out[k] = (x + eta * (mean[k] - x)).to(x.dtype)
            else:
                out[k] = mean[k]
        return out


class Scaffold(Strategy):
    name = "scaffold"
    aggregation_rule = ("also averages each client's control-variate update Δc_i, which server-side noise does not "
                        "cover")
    client_state = "a control variate c_i per client"

    def __init__(self, *, server_learning_rate: float = 1.0) -> None:
        if not (math.isfinite(server_learning_rate) and server_learning_rate > 0):
            raise ValueError(f"server_learning_rate = {server_learning_rate} must be a finite number > 0")
        self.server_learning_rate = server_learning_rate
        self.num_clients = 0
        self.c: State = {}
        self.variate_keys: list[str] = []
        self._pending: _ScaffoldMean | None = None

    def check_model(self, model, shared_keys: list[str]) -> None:
        params = dict(model.named_parameters())
        self.variate_keys = [k for k in shared_keys if k in params and params[k].requires_grad
                             and params[k].is_floating_point()]
        if not self.variate_keys:
            raise FedctlError("strategy scaffold: the model shares no trainable parameters to correct",
                              "use another strategy, or share trainable tensors (federation.local_keys keeps them)")
        if not self.c:
            self.c = {k: torch.zeros_like(params[k].detach(), device="cpu") for k in self.variate_keys}

    def bind(self, *, num_clients: int) -> None:
        self.num_clients = num_clients

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(scaffold=True)

    def broadcast(self, server_round: int) -> State:
        return self.c

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        self._pending = _ScaffoldMean(self, workspace)
        return self._pending

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        agg = self._pending
        if agg is not None and agg.count > 0:  # c ← c + (|S|/N)·mean_S(Δc_i)
            share = agg.count / max(1, self.num_clients)
            mean_dc = agg.dc.result()
            self.c = {k: (v + share * mean_dc[k].to(v.dtype)) for k, v in self.c.items()}
        self._pending = None
        return aggregated

    def state_dict(self) -> dict[str, Any]:
        return {"c": {k: v.clone() for k, v in self.c.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "c" in state:
            self.c = {k: v.clone() for k, v in state["c"].items()}
