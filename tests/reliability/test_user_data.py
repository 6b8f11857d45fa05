"""User data is never replaced or moved (class 6), outputs follow the umask (class 9), and a folder that
cannot be written or a full disk is one Error/Hint with the existing files intact (class 8)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fedctl.errors import FedctlError
from fedctl.lora.adapters import write_adapter_dir
from fedctl.utils import io
from tests.reliability.helpers import assert_user_error, cli, tree_state


def _adapter(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    write_adapter_dir(path, {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"]},
                      {"base_model.model.q.lora_A.weight": torch.randn(2, 5, generator=g),
                       "base_model.model.q.lora_B.weight": torch.randn(6, 2, generator=g)})
    return path


def _merge(tmp: Path, out, *extra):
    a = tmp / "a" if (tmp / "a").exists() else _adapter(tmp / "a", 0)
    b = tmp / "b" if (tmp / "b").exists() else _adapter(tmp / "b", 1)
    return cli("merge", "svd", "--adapters", a, b, "--out", out, *extra)


# ------------------------------------------------------------------------------ --out on user data


def _user_things(tmp: Path) -> dict[str, Path]:
    things = {"file": tmp / "f.txt", "folder": tmp / "mine", "symlink": tmp / "link"}
    things["file"].write_text("precious\n")
    things["folder"].mkdir()
    (things["folder"] / "notes.txt").write_text("precious too\n")
    things["symlink"].symlink_to(things["folder"])
    return things


@pytest.mark.parametrize("kind", ["file", "folder", "symlink"])
@pytest.mark.parametrize("command", ["synth", "partition", "merge", "kmeans"])
def test_out_on_user_data_is_refused_and_untouched(tmp_path, kind, command):
    target = _user_things(tmp_path)[kind]
    if command == "merge":
        _adapter(tmp_path / "a", 0), _adapter(tmp_path / "b", 1)
    before = tree_state(tmp_path)
    if command == "synth":
        res = cli("data", "synth", "--speakers", "1", "--utterances", "1", "--out", target)
    elif command == "partition":
        res = cli("data", "partition", "librispeech", "--root", tmp_path / "nowhere", "--out", target)
    elif command == "kmeans":
        res = cli("data", "kmeans", "--parts", tmp_path / "nowhere", "--out", target)
    else:
        res = _merge(tmp_path, target)
    assert "--out" in assert_user_error(res)
    assert tree_state(tmp_path) == before  # nothing moved to .f.txt.old, nothing replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_under_a_file_is_one_error(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    before = tree_state(tmp_path)
    assert "f.txt" in assert_user_error(_merge(tmp_path, tmp_path / "f.txt" / "sub" / "out"))
    assert_user_error(cli("data", "synth", "--speakers", "1", "--utterances", "1", "--out", tmp_path / "f.txt" / "o"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"type": "fit", "round": 1, "train_loss": 1.0}\n')
    before = tree_state(tmp_path)
    assert_user_error(cli("inspect", "run", tmp_path / "run", "--out", tmp_path / "f.txt" / "p.png"))
    assert_user_error(cli("inspect", "run", tmp_path / "run", "--out", tmp_path / "run"))  # a folder, not a file
    assert tree_state(tmp_path) == before


def test_fedctl_output_is_replaced_only_with_overwrite(tmp_path):
    assert _merge(tmp_path, tmp_path / "out").exit_code == 0
    assert io.is_fedctl_output(tmp_path / "out")
    before = tree_state(tmp_path)
    res = _merge(tmp_path, tmp_path / "out")
    assert "already holds fedctl output" in assert_user_error(res) and "--overwrite" in res.stderr
    assert tree_state(tmp_path) == before
    res = _merge(tmp_path, tmp_path / "out", "--overwrite")
    assert res.exit_code == 0, res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or .old left behind


def test_empty_folder_is_fine_as_out(tmp_path):
    (tmp_path / "out").mkdir()
    assert _merge(tmp_path, tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("which", ["a", "b", "."])
def test_merge_out_equal_to_or_holding_an_input_is_refused(tmp_path, which):
    _adapter(tmp_path / "a", 0), _adapter(tmp_path / "b", 1)
    before = tree_state(tmp_path)
    target = tmp_path / which
    assert "input" in assert_user_error(_merge(tmp_path, target, "--overwrite"))
    assert tree_state(tmp_path) == before


def test_merge_out_equal_to_an_input_written_by_fedctl(tmp_path):
    """Even a merged adapter (fedctl's own output) used as an input is not overwritten by --out."""
    assert _merge(tmp_path, tmp_path / "m").exit_code == 0
    before = tree_state(tmp_path)
    res = cli("merge", "naive", "--adapters", tmp_path / "a", tmp_path / "m", "--out", tmp_path / "m", "--overwrite")
    assert "input" in assert_user_error(res)
    assert tree_state(tmp_path) == before


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["../../x", "../x", "/tmp/x", "a/../../b", "..", ".", ".x"]))
def test_run_name_cannot_leave_runs(linear_cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    assert "run.name" in assert_user_error(linear_cli("train", "mamba", "--set", f"run.name={name}"))
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------------------------------- umask


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.write_text(tmp_path / "x" / "f.txt", "hi")
        with io.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "inner.txt").write_text("x")
            (tmp / "sub").mkdir(mode=0o700)
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "w.safetensors"))  # safetensors writes 0600
        with io.atomic_path(tmp_path / "delta.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        assert _merge(tmp_path, tmp_path / "merged").exit_code == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "x" / "f.txt") == 0o666 & ~umask
    assert mode(tmp_path / "d") == mode(tmp_path / "d" / "sub") == 0o777 & ~umask
    assert mode(tmp_path / "d" / "sub" / "w.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "delta.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "merged") == 0o777 & ~umask
    files = sorted(p.name for p in (tmp_path / "merged").iterdir())
    assert "adapter_model.safetensors" in files
    assert {p.name: mode(p) for p in (tmp_path / "merged").iterdir()} == {f: 0o666 & ~umask for f in files}


# ---------------------------------------------------------------------- permissions and full disks


def test_unwritable_output_folder_is_one_error(tmp_path, monkeypatch):
    """Tests run as root, so chmod cannot deny writes: inject the PermissionError the OS would raise."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(io.tempfile, "mkdtemp", denied)
    monkeypatch.setattr(io.tempfile, "mkstemp", denied)
    _adapter(tmp_path / "a", 0), _adapter(tmp_path / "b", 1)
    before = tree_state(tmp_path)
    msg = assert_user_error(_merge(tmp_path, tmp_path / "locked" / "out"))
    assert "Permission denied" in msg and "locked" in msg
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"type": "fit", "round": 1, "train_loss": 1.0}\n')
    before = tree_state(tmp_path)
    assert "Permission denied" in assert_user_error(cli("inspect", "run", tmp_path / "run"))
    after = tree_state(tmp_path)
    assert {k: after[k] for k in before} == before


def test_oserror_anywhere_below_the_cli_is_one_error(tmp_path, monkeypatch):
    """The root group renders any OSError (read-only disk here) as Error/Hint naming the path."""
    import fedctl.lora.merge as merge

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr(merge, "read_adapter_dir", read_only)
    _adapter(tmp_path / "a", 0), _adapter(tmp_path / "b", 1)
    msg = assert_user_error(_merge(tmp_path, tmp_path / "out"))
    assert "Read-only" in msg and str(tmp_path / "ro") in msg


def test_full_disk_keeps_the_checkpoint_and_prints_one_error(linear_cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert linear_cli("train", "mamba", "--rounds", "2", "--clients", "2", "--set", "federation.checkpoint_every=1",
                      "--out", run).exit_code == 0
    ckpts = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.torch, "save", full)
    res = linear_cli("train", "mamba", "--out", run, "--resume", "--rounds", "3")
    msg = assert_user_error(res)
    assert "No space left" in msg and "round_003.pt" in msg
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == ckpts  # intact, no temp files


def test_torch_write_failure_is_one_error(tmp_path, monkeypatch):
    def failed(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(io.torch, "save", failed)
    (tmp_path / "round_001.pt").write_bytes(b"old")
    with pytest.raises(FedctlError, match="cannot write"):
        io.torch_save({"x": 1}, tmp_path / "round_001.pt")
    assert (tmp_path / "round_001.pt").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_train_out_that_is_a_file_or_under_one(linear_cli, tmp_path):
    (tmp_path / "f.txt").write_text("precious\n")
    before = tree_state(tmp_path)
    for out in (tmp_path / "f.txt", tmp_path / "f.txt" / "run"):
        assert "f.txt" in assert_user_error(linear_cli("train", "mamba", "--out", out))
    assert tree_state(tmp_path) == before


def test_svd_rank_beyond_the_module_is_one_error(tmp_path):
    for rank in ("7", str(2**70)):
        assert "--svd-rank" in assert_user_error(_merge(tmp_path, tmp_path / "out", "--svd-rank", rank))
    assert not (tmp_path / "out").exists()
