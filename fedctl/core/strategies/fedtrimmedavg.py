"""FedTrimmedAvg — Yin et al. 2018, "Byzantine-Robust Distributed Learning": per coordinate, drop
the int(beta·K) largest and smallest client values and average the rest (unweighted, as in Flower).
Holds every update of the round: memory O(clients × model)."""

from __future__ import annotations

from fedctl.core.aggregate import State, trimmed_mean
from fedctl.core.strategies.base import Aggregator, Collect, Strategy


class FedTrimmedAvg(Strategy):
    name = "fedtrimmedavg"
    aggregation_rule = "takes a trimmed mean of the individual client states (which values survive depends on each one)"

    def __init__(self, *, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError("beta must be in the range [0, 0.5)")
        self.beta = beta

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return Collect(lambda updates: trimmed_mean([u.state for u in updates], self.beta))
