"""Federated evaluation: a seeded sample of clients per round (fraction_evaluate, min_evaluate_clients), drawn
independently of the training sample, recorded in metrics.jsonl, and aggregated (weighted | mean | median)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedctl.core.aggregate import aggregate_metrics
from fedctl.core.config import FederationConfig
from fedctl.core.engine import EVALUATE_STREAM, run_federated, sample_clients
from fedctl.core.strategies import build_strategy
from tests.core.linear_task import LinearTask


class RecordingTask(LinearTask):
    """Logs which clients it was asked to evaluate."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.evaluated: list[str] = []

    def evaluate(self, model, client_id=None):
        if client_id is not None:
            self.evaluated.append(client_id)
        return super().evaluate(model, client_id)


def _run(tmp_path, **fed):
    task = RecordingTask(num_clients=6, steps=2)
    cfg = FederationConfig(**{"rounds": 3, "clients": 6, "fraction": 0.5, "eval_clients": True, **fed})
    result = run_federated(task, build_strategy("fedavg"), cfg, seed=3, run_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return task, rows


def test_sampled_evaluation_uses_exactly_the_recorded_clients(tmp_path):
    task, rows = _run(tmp_path, fraction_evaluate=0.5)
    evaluated_by_round, fit_by_round = [], []
    for r in (1, 2, 3):
        agg = [x for x in rows if x["type"] == "eval" and x["round"] == r and x["scope"] == "clients"]
        per_client = [x["client_id"] for x in rows if x["type"] == "eval" and x["round"] == r and x["scope"] == "client"]
        fit = next(x for x in rows if x["type"] == "fit" and x["round"] == r)
        assert len(agg) == 1
        expected = [f"client_{i}" for i in sample_clients(6, 0.5, 1, 3, r, EVALUATE_STREAM)]
        assert agg[0]["evaluate_clients"] == per_client == expected and len(expected) == 3
        assert fit["fit_clients"] == [f"client_{i}" for i in sample_clients(6, 0.5, 1, 3, r)]
        assert len(fit["fit_clients"]) == fit["sampled"] == 3
        evaluated_by_round.append(expected)
        fit_by_round.append(fit["fit_clients"])
    # what the task was asked to evaluate is exactly what metrics.jsonl says, round after round
    assert task.evaluated == [c for rnd in evaluated_by_round for c in rnd]
    assert evaluated_by_round != fit_by_round  # drawn independently of the training sample
    assert len({tuple(e) for e in evaluated_by_round}) > 1  # and anew each round


def test_min_evaluate_clients_raises_the_sample(tmp_path):
    _, rows = _run(tmp_path, fraction_evaluate=0.2, min_evaluate_clients=4)
    aggs = [x for x in rows if x.get("scope") == "clients"]
    assert [len(a["evaluate_clients"]) for a in aggs] == [4, 4, 4]  # max(int(0.2·6), 4)


@pytest.mark.parametrize("how", ["weighted", "mean", "median"])
def test_the_aggregate_equals_the_weighted_mean_mean_or_median_of_the_rows(tmp_path, how):
    task, rows = _run(tmp_path, evaluate_aggregation=how)  # fraction_evaluate 1: all 6 clients
    for r in (1, 2, 3):
        clients = [x for x in rows if x["type"] == "eval" and x["round"] == r and x["scope"] == "client"]
        agg = next(x for x in rows if x["type"] == "eval" and x["round"] == r and x["scope"] == "clients")
        losses = np.array([c["val_loss"] for c in clients])
        assert agg["aggregation"] == how and len(clients) == 6
        if how == "weighted":
            n = [c["num_examples"] for c in clients]
            assert n == [64 + 8 * k for k in range(6)]  # each client's own data, as LinearTask evaluates it
            assert agg["num_examples"] == sum(n)
            assert agg["val_loss"] == pytest.approx(sum(ni * li for ni, li in zip(n, losses)) / sum(n), rel=1e-12)
        elif how == "mean":
            assert agg["val_loss"] == pytest.approx(losses.sum() / 6, rel=1e-12)
        else:
            srt = np.sort(losses)
            assert agg["val_loss"] == pytest.approx((srt[2] + srt[3]) / 2, rel=1e-12)
        fit = next(x for x in rows if x["type"] == "fit" and x["round"] == r)
        assert "val_loss" not in fit  # the round row of the table carries it as clients_val_loss (see RoundFinished)


def test_aggregate_metrics_hand_computed():
    rows = [{"a": 1.0, "b": 2.0, "only_here": 1.0}, {"a": 3.0, "b": 2.0}, {"a": 10.0, "b": 5.0}]
    assert aggregate_metrics(rows, [1, 1, 2], "weighted") == {"a": 24 / 4, "b": 14 / 4}
    assert aggregate_metrics(rows, None, "mean") == {"a": 14 / 3, "b": 3.0}
    assert aggregate_metrics(rows, None, "median") == {"a": 3.0, "b": 2.0}
    assert np.isnan(aggregate_metrics([{"a": 1.0}, {"a": float("nan")}], [1, 1], "weighted")["a"])


def test_round_row_carries_the_clients_aggregate():
    from fedctl.core.events import RoundFinished

    events = []
    cfg = FederationConfig(rounds=1, clients=3, eval_clients=True, evaluate_aggregation="mean")
    res = run_federated(LinearTask(num_clients=3, steps=1), build_strategy("fedavg"), cfg, seed=0,
                        on_event=events.append)
    row = next(e for e in events if isinstance(e, RoundFinished)).metrics
    agg = next(r for r in res.history if r.get("scope") == "clients")
    assert row["clients_val_loss"] == agg["val_loss"]
