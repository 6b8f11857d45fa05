"""`fedctl sweep` over seeds and a grid, and `fedctl inspect run` grouping seeds into mean ± std bands."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.reliability.helpers import cli


@pytest.fixture
def linear(monkeypatch):
    """`mamba` trains the tiny linear workload (same CLI path, no transformers)."""
    from fedctl.run import registry

    monkeypatch.setitem(registry.WORKLOADS, "mamba", registry.Workload(
        "mamba", "tests.reliability.linear_workload", "LinearConfig", "LinearWorkloadTask"))


def final_val(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if r["type"] == "eval" and r["scope"] == "global"]


def test_sweep_runs_every_combination_skips_finished_and_inspect_groups_seeds(linear, tmp_path):
    template = tmp_path / "tiny.yaml"
    template.write_text("run:\n  task: mamba\nfederation:\n  rounds: 3\n  clients: 3\n")
    out = tmp_path / "study"
    args = ("sweep", "--config", template, "--seeds", 0, 1, 2, "--grid", "federation.strategy=fedavg,fedavgm",
            "--set", "federation.strategy_args.server_momentum=0.0", "--out", out, "--json")
    # fedavg takes no server_momentum: the whole grid is checked before anything trains
    res = cli(*args)
    assert res.exit_code == 1 and not out.exists()
    args = tuple(a for a in args if a not in ("--set", "federation.strategy_args.server_momentum=0.0"))
    res = cli(*args)
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)
    names = [r["name"] for r in runs]
    assert names == [f"tiny-strategy={s}-seed{k}" for s in ("fedavg", "fedavgm") for k in (0, 1, 2)]
    assert {r["status"] for r in runs} == {"trained"}
    again = json.loads(cli(*args).stdout)
    assert {r["status"] for r in again} == {"skipped"}

    assert {p.name for p in out.iterdir() if p.is_file()} == {"run.log", "meta.json"}  # the sweep's own record
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    res = cli("inspect", "run", *dirs, "--metric", "val_loss", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    groups = result["groups"]
    assert [g["n"] for g in groups] == [3, 3]
    for g in groups:
        finals = [final_val(out.joinpath(r.split("/")[-1]))[-1] for r in g["runs"]]
        assert g["final_mean"] == pytest.approx(statistics.mean(finals), rel=1e-12)
        assert g["final_std"] == pytest.approx(statistics.stdev(finals), rel=1e-12)
        assert g["rounds"] == [1, 2, 3] and len({r.split("seed")[0] for r in g["runs"]}) == 1
    saved = json.loads((out / dirs[0].name / "plots" / "runs_val_loss.json").read_text())
    assert saved["groups"] == groups  # the JSON beside the PNG holds exactly the plotted numbers
    assert (out / dirs[0].name / "plots" / "runs_val_loss.png").is_file()
    res = cli("inspect", "run", *sorted(out.iterdir()), "--metric", "val_loss")  # `inspect run study/*` as documented
    assert "mean ± std" in res.stdout and "(n=3)" in res.stdout


@pytest.mark.parametrize("has_checkpoint", [False, True])
def test_a_run_another_sweep_is_training_is_reported_locked_not_resumed(linear, tmp_path, has_checkpoint):
    """The second sweep on a folder is told that another process holds the run, never "resuming" / --resume."""
    import os

    from fedctl.core.rundir import RunDir
    from tests.reliability.helpers import assert_user_error

    template = tmp_path / "tiny.yaml"
    template.write_text("run:\n  task: mamba\nfederation:\n  rounds: 3\n  clients: 3\n")
    out = tmp_path / "study"
    run = out / "tiny-seed0"
    if has_checkpoint:  # the other sweep has saved a round of it already
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "round_001.pt").write_bytes(b"")
    with RunDir(run).locked():  # an OS file lock: held here as the other process would
        res = cli("sweep", "--config", template, "--seeds", 0, "--out", out)
    msg = assert_user_error(res)
    assert f"run directory {run} is in use by another fedctl process (PID {os.getpid()})" in msg
    assert "--resume" not in res.output and "resuming" not in res.output
