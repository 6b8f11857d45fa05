"""FedMedian — Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates": the coordinate-wise median of client models (mean of the two middle values
for an even count). Holds every update of the round: memory O(clients × model)."""

from __future__ import annotations

from fedctl.core.aggregate import State, coordinate_median
from fedctl.core.strategies.base import Aggregator, Collect, Strategy


class FedMedian(Strategy):
    name = "fedmedian"
    aggregation_rule = "takes the coordinate-wise median of the individual client states"

    def __init__(self) -> None:
        pass

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return Collect(lambda updates: coordinate_median([u.state for u in updates]))
