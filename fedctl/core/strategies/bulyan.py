"""Bulyan — El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium" (ICML), as Flower 1.41's `flwr.server.strategy.Bulyan` computes it.

With n client states of a round and f = num_malicious_clients (n ≥ 4f + 3 is required):
    θ = n − 2f states are chosen by iterative Krum: θ times, the Krum winner of the remaining states (lowest sum
        of squared distances to its max(1, k − f − 2) nearest others, k = states left) is moved to the chosen set;
    m = the coordinate-wise median of the θ chosen states;
    x_j = the mean of the β = θ − 2f chosen values x_ij closest to m_j, for every coordinate j.
num_examples is not used (as in Flower). The selection is the paper's and Flower's legacy API's (iterative, scores
recomputed after each removal); Flower's message API instead keeps the θ best scores of one multi-Krum pass and
skips a round with too few replies, where fedctl refuses the run up front and fails such a round loudly.
Holds every update of the round: memory O(n × model) — Krum distances and per-coordinate medians need all of them.
"""

from __future__ import annotations

from typing import Any

from fedctl.core.aggregate import State, bulyan
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Collect, Strategy
from fedctl.errors import FedctlError


class Bulyan(Strategy):
    name = "bulyan"
    aggregation_rule = ("keeps the clients whose individual states are closest to the others (iterative Krum), "
                        "then averages per coordinate the values closest to their median")

    def __init__(self, *, num_malicious_clients: int = 0) -> None:
        if num_malicious_clients < 0:
            raise ValueError("num_malicious_clients must be >= 0")
        self.num_malicious_clients = num_malicious_clients
        self.last_selected: list[str] = []

    @property
    def min_clients(self) -> int:
        """n ≥ 4f + 3: fewer client states leave the attacker more leeway than the paper's bound."""
        return 4 * self.num_malicious_clients + 3

    def check_clients(self, num_sampled: int) -> None:
        if num_sampled < self.min_clients:
            f = self.num_malicious_clients
            raise FedctlError(
                f"strategy bulyan needs at least 4·f + 3 = {self.min_clients} clients per round "
                f"(num_malicious_clients f = {f}), but the run samples {num_sampled}",
                "raise --clients / --fraction (federation.clients, federation.fraction, federation.min_fit_clients)"
                f" to sample at least {self.min_clients}, or lower federation.strategy_args.num_malicious_clients",
            )

    def _reduce(self, updates: list[ClientUpdate]) -> State:
        if len(updates) < self.min_clients:
            raise FedctlError(
                f"strategy bulyan: only {len(updates)} client updates arrived, it needs 4·f + 3 = {self.min_clients}",
                "fix the failing clients or lower federation.strategy_args.num_malicious_clients, then --resume")
        state, chosen = bulyan([u.state for u in updates], self.num_malicious_clients)
        self.last_selected = [updates[i].client_id for i in chosen]
        return state

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        agg = _BulyanCollect(self._reduce, self)
        agg.min_count = self.min_clients
        return agg


class _BulyanCollect(Collect):
    def __init__(self, reduce, owner: Bulyan) -> None:
        super().__init__(reduce)
        self.owner = owner

    def summary(self) -> dict[str, Any]:
        return {"bulyan_selected": list(self.owner.last_selected)}
