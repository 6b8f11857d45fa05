"""`fedctl eval`: a saved model reproduces the validation metrics its run logged."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import SMALL
from tests.cli.test_train_lora import TINY


def logged_evals(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["round"]: r for r in rows if r["type"] == "eval" and r["scope"] == "global"}


def test_eval_reproduces_a_rounds_logged_validation_loss_exactly(cli, tmp_path):
    run = tmp_path / "run"
    res = cli("train", "mamba", "--rounds", 2, "--clients", 2, "--set", "federation.checkpoint_every=1",
              "--set", "federation.best_mode=max", "--out", run, *SMALL)
    assert res.exit_code == 0, res.output
    logged = logged_evals(run)
    for target, r in ((run / "checkpoints" / "round_001.pt", 1), (run / "checkpoints" / "best.pt", 1),
                      (run, 2), (run / "final", 2)):
        res = cli("eval", target, "--json")
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert got["metrics"]["val_loss"] == logged[r]["val_loss"], target  # bit for bit
        assert got["metrics"]["val_ppl"] == logged[r]["val_ppl"]
    res = cli("eval", run, "--clients", "--json")
    got = json.loads(res.stdout)
    assert sorted(got["clients"]) == ["client_0", "client_1"]
    # the aggregate is the run's federation.evaluate_aggregation (default weighted by evaluation examples)
    rows, agg = list(got["clients"].values()), got["clients_aggregate"]
    n = [r["num_examples"] for r in rows]
    assert agg["aggregation"] == "weighted" and agg["num_examples"] == sum(n) and min(n) > 0
    assert agg["val_loss"] == pytest.approx(sum(k * r["val_loss"] for k, r in zip(n, rows)) / sum(n), rel=1e-12)


def test_eval_of_an_svd_merged_fused_adapter_reproduces_the_logged_accuracy(cli, tmp_path):
    run = tmp_path / "lora"
    res = cli("train", "lora", "--rounds", 1, "--clients", 2, "--lora-r", 8, "--svd-rank", 8, "--merge", "svd",
              "--out", run, *TINY)
    assert res.exit_code == 0, res.output
    fused = tmp_path / "fused"
    res = cli("merge", "svd", "--adapters", run / "adapters" / "round_001" / "fused", "--svd-rank", 8, "--out", fused)
    assert res.exit_code == 0, res.output
    res = cli("eval", fused, "--config", run, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["kind"] == "adapter"
    assert abs(got["metrics"]["val_accuracy"] - logged_evals(run)[1]["val_accuracy"]) < 1e-9
    # the run's own export evaluates the same (its config is found above the folder)
    res = cli("eval", run / "final" / "hf", "--json")
    assert json.loads(res.stdout)["metrics"]["val_accuracy"] == logged_evals(run)[1]["val_accuracy"]
