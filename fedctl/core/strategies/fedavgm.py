"""FedAvgM — Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification": server momentum on the pseudo-gradient.

With x the global state and x̄ the example-weighted client mean (Flower's parameter names):
    g = x − x̄;  v ← server_momentum · v + g  (v = g in the first round);
    x ← x − server_learning_rate · v
With server_momentum = 0 and server_learning_rate = 1 this is FedAvg. fedctl's default server_momentum is 0.9
(the federated Mamba2 README's, and Hsu et al.'s usual value): Flower's FedAvgM defaults to 0.0, which makes
`--strategy fedavgm` without options plain FedAvg.
"""

from __future__ import annotations

import math
from typing import Any

from fedctl.core.aggregate import State
from fedctl.core.strategies.base import Strategy


class FedAvgM(Strategy):
    name = "fedavgm"

    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.9) -> None:
        if not (math.isfinite(server_learning_rate) and server_learning_rate > 0):
            raise ValueError(f"server_learning_rate = {server_learning_rate} must be a finite number > 0")
        if not 0.0 <= server_momentum < 1.0:  # momentum >= 1 makes the server step grow without bound
            raise ValueError(f"server_momentum = {server_momentum} must be in [0, 1)")
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.momentum: State | None = None

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        if self.server_momentum == 0.0 and self.server_learning_rate == 1.0:
            return aggregated
        new: State = {}
        first = self.momentum is None
        if first:
            self.momentum = {}
        for k, x in global_state.items():
            if not x.is_floating_point():
                new[k] = aggregated[k]
                continue
            g = x.float() - aggregated[k].float()
            if self.server_momentum > 0.0:
                if first:
                    self.momentum[k] = g
                else:
                    g = self.momentum[k].mul_(self.server_momentum).add_(g)
            new[k] = (x.float() - self.server_learning_rate * g).to(x.dtype)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = state.get("momentum")
