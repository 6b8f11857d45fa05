"""checkpoints/best.pt: the round with the best logged validation metric, kept apart from retention."""

from __future__ import annotations

import json

import pytest
import torch

from fedctl.core.checkpoint import load_checkpoint
from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import build_strategy
from tests.core.linear_task import LinearTask


def run(tmp_path, name, **kw):
    base = dict(rounds=4, clients=4, fraction=1.0, min_fit_clients=1, checkpoint_every=1)
    base.update(kw)
    run_federated(LinearTask(), build_strategy("fedavg"), FederationConfig(**base), seed=0, run_dir=tmp_path / name)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "eval" and r["scope"] == "global"]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_pt_holds_the_round_with_the_best_logged_metric_despite_retention(tmp_path, mode):
    evals = run(tmp_path, mode, keep_checkpoints=1, best_mode=mode)
    pick = min if mode == "min" else max
    want = pick(evals, key=lambda r: r["val_loss"])
    best = load_checkpoint(tmp_path / mode / "checkpoints" / "best.pt")
    assert best["best"] == {"metric": "val_loss", "mode": mode, "value": want["val_loss"], "round": want["round"]}
    assert best["round"] == want["round"]
    # val_loss falls every round here, so max keeps round 1 although retention deleted round_001.pt
    assert want["round"] == (4 if mode == "min" else 1)
    ckpts = sorted(p.name for p in (tmp_path / mode / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "round_004.pt"]
    # the weights are that round's: equal to the round checkpoint of a run that keeps them all
    run(tmp_path, f"{mode}-all", best_metric=None)
    assert not (tmp_path / f"{mode}-all" / "checkpoints" / "best.pt").exists()
    ref = load_checkpoint(tmp_path / f"{mode}-all" / "checkpoints" / f"round_{want['round']:03d}.pt")
    assert all(torch.equal(best["model"][k], ref["model"][k]) for k in ref["model"])
