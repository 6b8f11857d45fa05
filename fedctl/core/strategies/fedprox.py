"""FedProx — Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

Clients minimise  loss(w) + (proximal_mu / 2)·||w − w_global||²  (see fedctl.core.task.proximal_term);
the server aggregates like FedAvg.
"""

from __future__ import annotations

from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies.base import Strategy


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01) -> None:
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        self.proximal_mu = proximal_mu

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(proximal_mu=self.proximal_mu)
