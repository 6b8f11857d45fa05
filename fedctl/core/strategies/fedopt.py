"""Adaptive server optimizers — Reddi et al. 2021, "Adaptive Federated Optimization" — shared math.

The pseudo-gradient is Δ = x̄ − x (client mean minus global). Moments follow Flower's FedOpt
family exactly, so configs carry over:
    m ← β₁·m + (1 − β₁)·Δ
    v ← rule(v, Δ)                       (Adam, Yogi or Adagrad; see the subclasses)
    x ← x + η_t · m / (√v + τ)
`eta_l` is the client learning rate in Flower; fedctl sends it to clients as `client_lr` when set.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedctl.core.aggregate import State
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies.base import Strategy


def check_fedopt_options(*, eta: float, eta_l: float | None, beta_1: float, beta_2: float, tau: float) -> None:
    """Ranges in which the update stays finite and means what the paper says (ValueError otherwise)."""
    for key, value in (("eta", eta), ("tau", tau)) + ((("eta_l", eta_l),) if eta_l is not None else ()):
        if not (math.isfinite(value) and value > 0):
            # tau = 0 divides by √v = 0 wherever a coordinate did not move: NaN
            raise ValueError(f"{key} = {value} must be a finite number > 0")
    for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key} = {value} must be in [0, 1)")


class FedOpt(Strategy):
    name = "fedopt"

    def __init__(
        self,
        *,
        eta: float = 1e-1,
        eta_l: float | None = None,
        beta_1: float = 0.0,
        beta_2: float = 0.0,
        tau: float = 1e-9,
    ) -> None:
        check_fedopt_options(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau)
        self.eta = eta
        self.eta_l = eta_l
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.m_t: State | None = None
        self.v_t: State | None = None

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(client_lr=self.eta_l)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_size(self, server_round: int) -> float:
        return self.eta

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        if self.m_t is None:
            self.m_t, self.v_t = {}, {}
        eta = self.step_size(server_round)
        new: State = {}
        for k, x in global_state.items():
            if not x.is_floating_point():
                new[k] = aggregated[k]
                continue
            delta = aggregated[k].float() - x.float()
            m = self.m_t.get(k)
            m = (1 - self.beta_1) * delta if m is None else m.mul_(self.beta_1).add_(delta, alpha=1 - self.beta_1)
            v = self.v_t.get(k)
            v = self.second_moment(torch.zeros_like(delta) if v is None else v, delta)
            self.m_t[k], self.v_t[k] = m, v
            new[k] = (x.float() + eta * m / (v.sqrt() + self.tau)).to(x.dtype)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"m_t": self.m_t, "v_t": self.v_t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m_t, self.v_t = state.get("m_t"), state.get("v_t")
