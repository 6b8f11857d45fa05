"""Krum — Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent".

Each client's score is the sum of squared distances to its K − f − 2 nearest other clients
(f = num_malicious_clients); Krum keeps the client with the lowest score. With
num_clients_to_keep = m > 0 it is Multi-Krum: the example-weighted mean of the m best.
Holds every update of the round: memory O(clients × model).
"""

from __future__ import annotations

from fedctl.core.aggregate import State, krum_scores, weighted_mean
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Collect, Strategy


class Krum(Strategy):
    name = "krum"
    aggregation_rule = "keeps the clients whose individual states are closest to the others (Krum scores)"

    def __init__(self, *, num_malicious_clients: int = 0, num_clients_to_keep: int = 0) -> None:
        if num_malicious_clients < 0 or num_clients_to_keep < 0:
            raise ValueError("num_malicious_clients and num_clients_to_keep must be >= 0")
        self.num_malicious_clients = num_malicious_clients
        self.num_clients_to_keep = num_clients_to_keep
        self.last_selected: list[str] = []

    def select(self, updates: list[ClientUpdate]) -> list[int]:
        """Indices of the kept clients, best first."""
        scores = krum_scores([u.state for u in updates], self.num_malicious_clients)
        order = scores.argsort(stable=True).tolist()
        return order[: self.num_clients_to_keep] if self.num_clients_to_keep > 0 else order[:1]

    def _reduce(self, updates: list[ClientUpdate]) -> State:
        keep = self.select(updates)
        self.last_selected = [updates[i].client_id for i in keep]
        if len(keep) == 1:
            return updates[keep[0]].state
        return weighted_mean((updates[i].state, float(updates[i].num_examples)) for i in keep)

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return Collect(self._reduce)
