"""FedYogi — Reddi et al. 2021, "Adaptive Federated Optimization".

    v ← v − (1 − β₂)·Δ²·sign(v − Δ²)      (no bias correction, as in Flower)
"""

from __future__ import annotations

import torch

from fedctl.core.strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        eta_l: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        d2 = delta * delta
        return v.sub_((1 - self.beta_2) * d2 * torch.sign(v - d2))
