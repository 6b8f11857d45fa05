"""FedEntropy — client weights from the entropy of each client's predictive distribution.

After local training, client i measures H_i, the mean entropy (nats) of its model's predictive
distribution over held-out local examples. The server weights client i by

    w_i = n_i · softmax(−H / temperature)_i        (n_i dropped with use_num_examples=false)

and averages the client models with w / Σ w: confident (low-entropy) clients count more; a high
temperature tends to FedAvg, a low one to picking the most confident client. The weights are folded
in log space, so extreme entropies neither overflow nor underflow, and memory stays O(model).
"""

from __future__ import annotations

import math
from typing import Any

from fedctl.core.aggregate import State, WeightedMean
from fedctl.core.instructions import ClientInstructions, EntropyRequest
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy


class EntropyWeightedMean(Aggregator):
    weighted_mean = True

    def __init__(self, temperature: float, use_num_examples: bool, workspace: State | None) -> None:
        self._mean = WeightedMean(workspace)
        self.temperature = temperature
        self.use_num_examples = use_num_examples
        self.log_weights: dict[str, float] = {}

    @property
    def count(self) -> int:
        return self._mean.count

    def log_weight(self, update: ClientUpdate) -> float:
        entropy = float(update.stats["entropy"])
        return -entropy / self.temperature + (math.log(update.num_examples) if self.use_num_examples else 0.0)

    def add(self, update: ClientUpdate) -> None:
        log_w = self.log_weight(update)
        self.log_weights[update.client_id] = log_w
        self._mean.add_log(update.state, log_w)

    def result(self, global_state: State) -> State:
        return self._mean.result(like=global_state)

    def summary(self) -> dict[str, Any]:
        top = max(self.log_weights.values())
        z = sum(math.exp(v - top) for v in self.log_weights.values())
        return {"client_weights": {c: math.exp(v - top) / z for c, v in self.log_weights.items()}}


class FedEntropy(Strategy):
    name = "fedentropy"
    aggregation_rule = "weighs clients by the entropy each one reports, a statistic of its data"

    def __init__(self, *, temperature: float = 1.0, use_num_examples: bool = True, max_examples: int = 64) -> None:
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        if max_examples < 1:
            raise ValueError("max_examples must be >= 1")
        self.temperature = temperature
        self.use_num_examples = use_num_examples
        self.max_examples = max_examples

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(entropy=EntropyRequest(max_examples=self.max_examples))

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return EntropyWeightedMean(self.temperature, self.use_num_examples, workspace)
