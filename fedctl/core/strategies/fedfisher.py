"""FedFisher — Fisher-weighted averaging, after Matena & Raffel 2022, "Merging Models with Fisher-Weighted
Averaging".

Each client estimates the diagonal Fisher F_i of its trained parameters on local data (per-example
gradients vectorised with torch.func vmap(grad); `fisher: true` samples labels from the model,
`empirical` uses the observed ones; at most `max_examples` examples). Per parameter the server takes

    θ = Σ_i n_i F̃_i ⊙ θ_i / Σ_i n_i F̃_i,     F̃_i = max(F_i, epsilon)

The floor makes every weight positive; where no client has Fisher mass above epsilon all F̃_i are
equal and θ is exactly the FedAvg mean (taken from a FedAvg accumulator there, bit for bit). Tensors
without a Fisher (buffers, frozen tensors) are FedAvg-averaged. Memory: three model-sized
accumulators, independent of the client count.
"""

from __future__ import annotations

import torch

from fedctl.core.aggregate import State, WeightedMean
from fedctl.core.instructions import ClientInstructions, FisherRequest
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy


class FisherWeightedMean(Aggregator):
    def __init__(self, epsilon: float, workspace: State | None) -> None:
        self.epsilon = epsilon
        self._mean = WeightedMean(workspace)
        self.num: State = {}
        self.den: State = {}

    @property
    def count(self) -> int:
        return self._mean.count

    def add(self, update: ClientUpdate) -> None:
        n = float(update.num_examples)
        fisher: dict[str, torch.Tensor] = update.stats["fisher"]
        for k, f in fisher.items():
            if k not in update.state:
                continue
            theta = update.state[k].float()
            w = f.to(theta.device).float().clamp_min(self.epsilon).mul_(n)
            if k not in self.num:
                self.den[k] = w
                self.num[k] = w * theta
            else:
                self.den[k].add_(w)
                self.num[k].addcmul_(w, theta)
        self._mean.add(update.state, n)

    def result(self, global_state: State) -> State:
        out = self._mean.result(like=global_state)
        floor = self.epsilon * self._mean.total_weight
        for k, den in self.den.items():
            fisher_mean = self.num[k] / den
            # den == ε·Σn exactly when every client's Fisher is at or below ε there: plain FedAvg
            out[k] = torch.where(den > floor * (1 + 1e-6), fisher_mean, out[k].float()).to(global_state[k].dtype)
        return out


class FedFisher(Strategy):
    name = "fedfisher"
    aggregation_rule = "weighs each coordinate by each client's Fisher, a statistic of its data"

    def __init__(self, *, fisher: bool | str = True, max_examples: int = 64, chunk: int = 8,
                 epsilon: float = 1e-8) -> None:
        mode = {"true": "true", True: "true", "empirical": "empirical"}.get(fisher if isinstance(fisher, bool) else str(fisher).lower())
        if mode is None:
            raise ValueError("fisher must be true (labels sampled from the model) or 'empirical' (observed labels)")
        if max_examples < 1 or chunk < 1:
            raise ValueError("max_examples and chunk must be >= 1")
        if not epsilon > 0:
            raise ValueError("epsilon must be > 0")
        self.mode, self.max_examples, self.chunk, self.epsilon = mode, max_examples, chunk, epsilon

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(fisher=FisherRequest(mode=self.mode, max_examples=self.max_examples, chunk=self.chunk))

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return FisherWeightedMean(self.epsilon, workspace)
