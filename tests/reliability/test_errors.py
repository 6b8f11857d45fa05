"""The one-line `Error:` / `Hint:` contract for argument-parser mistakes (exit 2, the usage-error convention)
and the smaller class-9 cases: negative counts, Flower ports, Ctrl-C, binary `--data`."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedctl.core.checkpoint import save_checkpoint
from fedctl.errors import FedctlError
from tests.reliability.helpers import assert_user_error, cli, tree_state

USAGE = [
    ["train", "mamba", "--rounds", "abc"],
    ["train", "mamba", "--lr", "fast"],
    ["train", "mamba", "--bogus", "1"],
    ["train", "nosuch"],
    ["merge", "svd", "--adapters", "a"],  # --out missing
    ["inspect", "ckpt"],  # PATH missing
    ["inspect", "ckpt", "x.pt", "--limit", "-1"],
    ["inspect", "deltas", "run", "--top-k", "-3"],
    ["inspect", "deltas", "run", "--top-k", "0"],
    ["data", "synth", "--out", "x", "--seed", "-1"],
    ["data", "synth", "--out", "x", "--seed", str(2**70)],
    ["data", "partition", "librispeech", "--out", "x"],  # --root missing
    ["--bogus"],
    ["nosuch"],
]


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a) for a in USAGE])
def test_usage_errors_are_one_error_and_hint_with_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli(*args)
    assert_user_error(res, code=2)
    assert "--help" in res.stderr and not list(tmp_path.iterdir())


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return not text.startswith("-")  # "-x" would be read as an option name
    return False


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(min_size=1, max_size=8).filter(_not_a_number), st.sampled_from(["2.5", "1e-3", "0.1"])),
       flag=st.sampled_from(["--rounds", "--clients", "--seed", "--local-updates", "--batch-size"]))
def test_non_integer_flags_are_usage_errors(value, flag):
    assert_user_error(cli("train", "mamba", flag, value), code=2)


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCTL_DEBUG", "1")
    with pytest.raises(FedctlError):
        cli("inspect", "ckpt", tmp_path / "missing.pt")


@pytest.mark.parametrize("limit", ["0", "2"])
def test_limit_zero_or_positive_still_works(tmp_path, limit):
    path = tmp_path / "round_001.pt"
    save_checkpoint(path, {"round": 1, "task": "t", "model": {"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(1)},
                           "config": {}})
    res = cli("inspect", "ckpt", path, "--limit", limit)
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------ Flower ports


@pytest.mark.parametrize("ports", [("0", "9094"), ("70000", "9094"), ("9092", "65535"), ("9092", "-5"),
                                   ("9094", "9094"), ("9095", "9094")])
def test_flower_app_ports_out_of_range_or_colliding(linear_cli, tmp_path, ports):
    link, node = ports
    res = linear_cli("train", "flower-app", "--clients", "2", "--superlink-port", link, "--supernode-port", node,
                     "--out", tmp_path / "run", "--app", tmp_path / "app")
    assert "port" in assert_user_error(res).lower()
    assert not (tmp_path / "app").exists()


def test_flower_app_valid_ports_work(linear_cli, tmp_path):
    res = linear_cli("train", "flower-app", "--clients", "2", "--superlink-port", "9092", "--supernode-port", "9094",
                     "--out", tmp_path / "run", "--app", tmp_path / "app", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["commands"][0].endswith("--disable-runtime-dependency-installation")


# ------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_says_which_round_is_saved_and_how_to_resume(linear_cli, tmp_path, monkeypatch):
    from tests.reliability.linear_workload.task import LinearWorkloadTask

    def client_trained(self, model, client_id, server_round):
        if server_round == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(LinearWorkloadTask, "client_trained", client_trained)
    run = tmp_path / "run"
    # the interrupt is simulated inside training, so in this process (--workers 1), as a real Ctrl-C reaches it
    res = linear_cli("train", "mamba", "--rounds", "4", "--clients", "2", "--set", "federation.checkpoint_every=1",
                     "--workers", "1", "--out", run)
    assert res.exit_code == 130
    assert "round 2 of 4 is saved" in res.stderr and "round_002.pt" in res.stderr
    assert f"fedctl train mamba --out {run} --resume" in res.stderr
    assert "Traceback" not in res.output


def test_ctrl_c_before_any_checkpoint(linear_cli, tmp_path, monkeypatch):
    from tests.reliability.linear_workload.task import LinearWorkloadTask

    def client_trained(self, model, client_id, server_round):
        raise KeyboardInterrupt

    monkeypatch.setattr(LinearWorkloadTask, "client_trained", client_trained)
    res = linear_cli("train", "mamba", "--rounds", "2", "--workers", "1", "--out", tmp_path / "run")
    assert res.exit_code == 130 and "no checkpoint saved yet" in res.stderr


# ------------------------------------------------------------------------------ binary --data text


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=64, max_size=2048))
def test_random_bytes_are_not_text_data(tmp_path, data):
    from fedctl.tasks.mamba.config import MambaConfig
    from fedctl.tasks.mamba.data import load_text

    if b"\0" not in data:
        try:
            data.decode("utf-8")
            return  # hypothesis found valid UTF-8 text: that is text
        except UnicodeDecodeError:
            pass
    undecodable = len(data) - len(data.decode("utf-8", errors="ignore").encode())
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    if b"\0" in data or undecodable > 0.01 * len(data):
        with pytest.raises(FedctlError, match="not text"):
            load_text(MambaConfig(data=str(path)))


def test_binary_data_via_cli_is_one_error(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(4096))
    before = tree_state(tmp_path)
    res = cli("train", "mamba", "--data", blob, "--rounds", "1", "--out", tmp_path / "run")
    assert "not text" in assert_user_error(res)
    assert {k: v for k, v in tree_state(tmp_path).items() if k in before} == before
