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
from tests.core.linear_task import LinearTask, PersonalLinearTask


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
    run_federated(task, build_strategy("fedavg"), cfg, seed=3, run_dir=tmp_path)
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


def test_personal_evaluation_is_each_trained_clients_own_model_on_eval_rounds_only():
    from fedctl.core import local
    from fedctl.core.engine import prepare_client
    from fedctl.core.instructions import ClientInstructions

    cfg = FederationConfig(rounds=3, clients=4, fraction=0.5, eval_every=2, eval_clients=True)
    res = run_federated(PersonalLinearTask(num_clients=4, steps=2), build_strategy("fedavg"), cfg, seed=1)
    rows = [r for r in res.history if r.get("scope") in ("personal", "personals")]
    fits = {r["round"]: r["fit_clients"] for r in res.history if r["type"] == "fit"}
    assert sorted({r["round"] for r in rows}) == [2, 3]  # eval_every 2, and the last round
    for rnd in (2, 3):
        personal = [r for r in rows if r["round"] == rnd and r["scope"] == "personal"]
        agg = next(r for r in rows if r["round"] == rnd and r["scope"] == "personals")
        assert [r["client_id"] for r in personal] == fits[rnd] == agg["evaluate_clients"]
        n = [r["num_examples"] for r in personal]
        assert agg["val_loss"] == pytest.approx(sum(a * r["val_loss"] for a, r in zip(n, personal)) / sum(n), rel=1e-12)
    # replay round 3's first client by hand: the global model after round 2, trained locally, evaluated on its data
    replay_task = PersonalLinearTask(num_clients=4, steps=2)
    first = run_federated(replay_task, build_strategy("fedavg"),
                          FederationConfig(rounds=2, clients=4, fraction=0.5, eval_every=2), seed=1)
    model = first.model
    index = int(fits[3][0].split("_")[1])
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ccfg = prepare_client(1, 3, index, ClientInstructions(evaluate_personal=True), global_state)
    result = local.train_client(replay_task, model, fits[3][0], ccfg, list(global_state))
    personal = next(r for r in rows if r["round"] == 3 and r["scope"] == "personal")
    assert result.metrics["personal_val_loss"] == personal["val_loss"]
    assert personal["val_loss"] == replay_task.evaluate(model, fits[3][0])["val_loss"]


def test_no_personal_rows_for_a_task_without_a_personal_model():
    cfg = FederationConfig(rounds=1, clients=2, eval_clients=True)
    res = run_federated(LinearTask(num_clients=2, steps=1), build_strategy("fedavg"), cfg, seed=0)
    assert not [r for r in res.history if r.get("scope") in ("personal", "personals")]
