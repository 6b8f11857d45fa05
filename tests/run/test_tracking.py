"""Trackers hold exactly the numbers of metrics.jsonl, read back with each tracker's own reader; a run killed
after its trackers logged a round that its checkpoint does not hold, then resumed, has every step once."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import linear_cli  # noqa: F401 (fixture)
from tests.reliability.helpers import assert_user_error, cli

ARGS = ("--clients", "2", "--workers", "1", "--set", "federation.eval_clients=true",
        "--track", "tensorboard", "--track", "wandb", "--track", "mlflow")


def expected(run: Path) -> dict[str, dict[int, float]]:
    """tag → {round: value} from metrics.jsonl, by the documented naming: fit/<key>, eval/<key> (global),
    eval/<client_id>/<key>, eval/clients/<key> (aggregate), eval/personal/<client_id>/<key>; numbers only (no bools, lists, strings or nulls)."""
    out: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "fit":
            prefix = "fit/"
        else:
            scope = rec["scope"]
            prefix = ("eval/" if scope == "global" else f"eval/{rec['client_id']}/" if scope == "client"
                      else f"eval/{scope}/{rec['client_id']}/" if "client_id" in rec else f"eval/{scope}/")
        for key, value in rec.items():
            if key in ("type", "scope", "client_id", "round"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out.setdefault(prefix + key, {})[rec["round"]] = value
    return out


def tensorboard_scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def wandb_history(run: Path) -> list[dict[str, float]]:
    """Every history row of the run's W&B offline files (`.wandb`: W&B's transaction log, a LevelDB-style log of
    wandb_internal_pb2.Record protobufs). wandb 0.31 ships no Python reader of it (its `datastore` module is
    gone; the Go core reads it), so the ~20 lines of framing are read here with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, pending = 7, 32768, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 0:
                continue
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # FULL or LAST: a whole record
                record = pb.Record()
                record.ParseFromString(pending)
                if record.WhichOneof("record_type") == "history":
                    rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                 for i in record.history.item})
    return rows


def mlflow_metrics(run: Path) -> dict[str, dict[int, float]]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / state['store']).resolve()}/mlflow.db")
    out: dict[str, dict[int, float]] = {}
    for key in client.get_run(state["run_id"]).data.metrics:
        history = client.get_metric_history(state["run_id"], key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice {steps}"
        out[key] = {m.step: m.value for m in history}
    return out


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory):
    from fedctl.run import registry

    run = tmp_path_factory.mktemp("tracked") / "run"
    saved = registry.WORKLOADS["mamba"]
    registry.WORKLOADS["mamba"] = registry.Workload(
        "mamba", "tests.reliability.linear_workload", "LinearConfig", "LinearWorkloadTask")
    try:
        res = cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run)
    finally:
        registry.WORKLOADS["mamba"] = saved
    assert res.exit_code == 0, res.output
    return run, res


@pytest.mark.system  # wandb starts its core process; MLflow's first SQLite store takes seconds
def test_tensorboard_holds_exactly_the_metrics(three_rounds):
    run, _ = three_rounds
    want, got = expected(run), tensorboard_scalars(run)
    assert any("/client_" in t for t in want) and "fit/train_loss" in want and "eval/val_loss" in want
    for tag, by_round in want.items():
        # TensorBoard stores scalars as float32: the float32 of each metrics.jsonl number, exactly
        assert got[tag] == {r: float(np.float32(v)) for r, v in by_round.items()}, tag
    final = {t.removeprefix("eval/"): v[3] for t, v in want.items() if t.startswith("eval/") and t.count("/") == 1}
    assert {t.removeprefix("final/"): v[3] for t, v in got.items() if t.startswith("final/")} == \
        {k: float(np.float32(v)) for k, v in final.items()}


@pytest.mark.system
def test_wandb_offline_files_hold_exactly_the_metrics(three_rounds):
    run, _ = three_rounds
    want = expected(run)
    rows = wandb_history(run)
    assert [row["_step"] for row in rows] == [1, 2, 3]
    for tag, by_round in want.items():
        assert {row["_step"]: row[tag] for row in rows if tag in row} == by_round, tag


@pytest.mark.system
def test_mlflow_store_holds_exactly_the_metrics_and_the_config(three_rounds):
    from mlflow.tracking import MlflowClient

    run, _ = three_rounds
    want, got = expected(run), mlflow_metrics(run)
    for tag, by_round in want.items():
        assert got[tag] == by_round, tag
    state = json.loads((run / "tracking.json").read_text())["mlflow"]
    params = MlflowClient(tracking_uri=f"sqlite:///{run.resolve()}/mlflow.db").get_run(state["run_id"]).data.params
    assert params["federation.rounds"] == "3" and params["federation.clients"] == "2"


@pytest.mark.system
def test_a_killed_and_resumed_run_logs_every_step_once(linear_cli, tmp_path):  # noqa: F811
    """The trackers logged round 3 but the process died before checkpoint 3 was written: the resume trains
    round 3 again (and 4); each tracker must hold rounds 1–4 once, with the numbers of the final metrics.jsonl."""
    run = tmp_path / "run"
    assert linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run,
                      "--set", "federation.checkpoint_every=1").exit_code == 0
    (run / "checkpoints" / "round_003.pt").unlink()  # what a kill between the trackers and the checkpoint leaves
    res = linear_cli("train", "mamba", "--rounds", "4", "--out", run, "--resume")
    assert res.exit_code == 0, res.output
    want = expected(run)
    assert want["fit/train_loss"].keys() == {1, 2, 3, 4}
    tb, ml = tensorboard_scalars(run), mlflow_metrics(run)
    rows = wandb_history(run)
    assert sorted(row["_step"] for row in rows) == [1, 2, 3, 4]  # across both offline runs of the same id
    assert len(list(run.glob("wandb/offline-run-*"))) == 2
    assert len({p.name.rsplit("-", 1)[1] for p in run.glob("wandb/offline-run-*")}) == 1
    clock = ("seconds", "time", "_per_s", "peak_rss_mb", "peak_rss_tree_mb")  # wall-clock: round 3 ran twice, the trackers keep the first
    for tag, by_round in want.items():
        if tag.endswith(clock):
            by_round = {r: v for r, v in by_round.items() if r != 3}
            assert {3} == tb[tag].keys() - by_round.keys() == ml[tag].keys() - by_round.keys(), tag
        wb = {row["_step"]: row[tag] for row in rows if tag in row}
        assert {r: v for r, v in tb[tag].items() if r in by_round} == {r: float(np.float32(v)) for r, v in by_round.items()}
        assert {r: v for r, v in ml[tag].items() if r in by_round} == by_round, tag
        assert {r: v for r, v in wb.items() if r in by_round} == by_round, tag
        assert tb[tag].keys() == ml[tag].keys() == wb.keys() == want[tag].keys(), tag
    meta = json.loads((run / "meta.json").read_text())
    assert [i["exit_status"] for i in meta["invocations"]] == [0, 0]
    log = (run / "run.log").read_text()
    assert log.count("== fedctl train mamba") == 2 and log.count("[round 4/4]") == 1


@pytest.mark.parametrize("track", ["tensorbored", "wandb,neptune"])
def test_an_unknown_tracker_is_refused_before_training(linear_cli, tmp_path, track):  # noqa: F811
    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "1", "--out", run, "--track", track)
    assert "is not a tracker" in assert_user_error(res)
    assert "tensorboard, wandb, mlflow" in res.stderr
    assert not run.exists()


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_tracker_whose_package_is_missing_names_the_install_command(linear_cli, tmp_path, monkeypatch, name):  # noqa: F811
    import sys

    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` now raises ImportError, as when not installed
    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "1", "--out", run, "--track", name)
    assert f"tracker '{name}'" in assert_user_error(res)
    assert "Hint: install the tracking extra: pip install 'fedctl[tracking]'" in res.stderr
    assert not run.exists()  # nothing trained, nothing written
    res = linear_cli("train", "mamba", "--rounds", "1", "--out", run, "--set", f"run.track=[{name}]")
    assert f"tracker '{name}'" in assert_user_error(res)
