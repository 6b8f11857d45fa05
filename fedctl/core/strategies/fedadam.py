"""FedAdam — Reddi et al. 2021, "Adaptive Federated Optimization".

    v ← β₂·v + (1 − β₂)·Δ²
    η_t = η · √(1 − β₂^(t+1)) / (1 − β₁^(t+1))      (bias correction as in Flower, t = server_round)
"""

from __future__ import annotations

import math

import torch

from fedctl.core.strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"

    def __init__(
        self,
        *,
        eta: float = 1e-1,
        eta_l: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
    ) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return v.mul_(self.beta_2).addcmul_(delta, delta, value=1 - self.beta_2)

    def step_size(self, server_round: int) -> float:
        return self.eta * math.sqrt(1 - self.beta_2 ** (server_round + 1.0)) / (1 - self.beta_1 ** (server_round + 1.0))
