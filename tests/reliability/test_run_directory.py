"""The run directory cannot deadlock or be corrupted: killed writes, two writers, edited configs on resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from fedctl.core.rundir import RunDir
from tests.reliability.helpers import assert_user_error

ARGS = ("--clients", "2", "--workers", "1", "--set", "federation.checkpoint_every=1")


def final_weights(run):
    path = RunDir(run).latest_checkpoint()
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("first", [True, False], ids=["first-write", "later-write"])
def test_a_killed_checkpoint_write_neither_counts_nor_blocks(linear_cli, tmp_path, first):
    """SIGKILL during a checkpoint write leaves a hidden temp file: it must never be taken for a checkpoint,
    never block a fresh start or --resume, and the resumed run must equal an uninterrupted one."""
    run = tmp_path / "run"
    rounds_done = 0 if first else 2
    if not first:
        assert linear_cli("train", "mamba", "--rounds", "2", *ARGS, "--out", run).exit_code == 0
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    leftover = run / "checkpoints" / f".round_{rounds_done + 1:03d}.pt.k1ll3d.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a zip")  # what a write killed mid-way leaves
    if first:
        res = linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run, "--resume")
        assert "config.yaml" in assert_user_error(res) or "no checkpoint" in res.stderr
        res = linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run)  # a fresh start is not blocked
    else:
        res = linear_cli("train", "mamba", "--rounds", "3", "--workers", "1", "--out", run, "--resume")
    assert res.exit_code == 0, res.output
    assert not leftover.exists()  # cleared by the next writer
    straight = tmp_path / "straight"
    assert linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", straight).exit_code == 0
    a, b = final_weights(run), final_weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.system
def test_a_second_writer_is_refused_naming_the_holder(linear_cli, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from fedctl.core.rundir import RunDir
            with RunDir({str(run)!r}).locked():
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = linear_cli("train", "mamba", "--rounds", "1", *ARGS, "--out", run)
        msg = assert_user_error(res)
        assert f"PID {holder.pid}" in msg and "in use" in msg
        assert not (run / "config.yaml").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder: the run can start now
    assert linear_cli("train", "mamba", "--rounds", "1", *ARGS, "--out", run).exit_code == 0


def test_resume_refuses_an_edited_config_and_a_smaller_round_count(linear_cli, tmp_path):
    run = tmp_path / "run"
    assert linear_cli("train", "mamba", "--rounds", "2", *ARGS, "--out", run).exit_code == 0
    config = run / "config.yaml"
    original = config.read_text()
    edited = yaml.safe_load(original)
    edited["task"]["lr"], edited["federation"]["clients"] = 0.5, 3
    config.write_text(yaml.safe_dump(edited))
    msg = assert_user_error(linear_cli("train", "mamba", "--rounds", "4", "--out", run, "--resume"))
    assert "federation.clients" in msg and "task.lr" in msg
    config.write_text(original)
    for rounds in ("2", "1"):  # a finished 2-round run: nothing left to train, and config.yaml is not rewritten
        msg = assert_user_error(linear_cli("train", "mamba", "--rounds", rounds, "--out", run, "--resume"))
        assert "nothing left to train" in msg
        assert config.read_text() == original
    assert linear_cli("train", "mamba", "--rounds", "3", "--out", run, "--resume").exit_code == 0
    assert yaml.safe_load(config.read_text())["federation"]["rounds"] == 3
