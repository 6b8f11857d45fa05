from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import build_strategy
from tests.core.linear_task import LinearTask


def test_inspect_checkpoint_json_matches_model(cli, tmp_path):
    res = run_federated(LinearTask(), build_strategy("fedavgm", {"server_momentum": 0.9}),
                        FederationConfig(rounds=2, clients=4), seed=0, run_dir=tmp_path, config={"run": {"task": "linear"}})
    out = cli("inspect", "ckpt", tmp_path / "checkpoints" / "round_002.pt", "--json")
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["round"] == 2 and info["task"] == "linear" and info["strategy"] == "fedavgm"
    assert info["strategy_state"] == ["momentum"]
    assert info["num_parameters"] == 7 and info["bytes"] == 28
    rows = {r["name"]: r for r in info["tensors"]}
    assert rows["weight"]["shape"] == [1, 6]
    assert abs(rows["weight"]["norm"] - res.model.weight.norm().item()) < 1e-6
    assert info["last_eval"]["val_loss"] == res.history[-1]["val_loss"]


def test_inspect_safetensors_table(cli, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3, 4), "b": torch.zeros(2, dtype=torch.float16)}, str(path))
    out = cli("inspect", "ckpt", path)
    assert out.exit_code == 0
    assert "14 in 2 tensors" in out.stdout and "3×4" in out.stdout and "3.464" in out.stdout
    path.write_bytes(path.read_bytes()[:20])
    bad = cli("inspect", "ckpt", path)
    assert bad.exit_code == 1 and "not a readable safetensors file" in bad.stderr


def test_inspect_deltas_and_run_via_cli(cli, tmp_path):
    from tests.core.toy_classifier import ToyClassifier

    fed = FederationConfig(rounds=3, clients=3, save_deltas_every=1, save_deltas_entity="server")
    run_federated(ToyClassifier(), build_strategy("fedavg"), fed, seed=0, run_dir=tmp_path / "a")
    res = cli("inspect", "deltas", tmp_path / "a", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["rounds"] == [1, 2, 3] and [m["name"] for m in info["matrices"]] == ["0.weight", "2.weight"]
    table = cli("inspect", "deltas", tmp_path / "a")
    assert "0.weight" in table.stdout and "Saved 3 plots" in table.stdout
    bad = cli("inspect", "deltas", tmp_path / "a", "--entity", "client")
    assert bad.exit_code == 1 and "no saved client deltas (it has: server)" in bad.stderr and "--entity server" in bad.stderr
    runs = cli("inspect", "run", tmp_path / "a", "--metric", "val_accuracy", "--json")
    assert runs.exit_code == 0
    assert json.loads(runs.stdout)["runs"][0]["values"] == [
        r["val_accuracy"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "eval"]
    nope = cli("inspect", "run", tmp_path / "a", "--metric", "bleu")
    assert nope.exit_code == 1 and "metric 'bleu' is not logged" in nope.stderr and "val_accuracy" in nope.stderr
