"""FedAdagrad — Reddi et al. 2021, "Adaptive Federated Optimization".

    m ← Δ (β₁ = 0);   v ← v + Δ²
"""

from __future__ import annotations

import torch

from fedctl.core.strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def __init__(self, *, eta: float = 1e-1, eta_l: float | None = None, tau: float = 1e-9) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=0.0, beta_2=0.0, tau=tau)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return v.addcmul_(delta, delta)
