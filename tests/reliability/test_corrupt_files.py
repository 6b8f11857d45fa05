"""Every command that reads a file, fed damaged copies of a good one (truncations, bit flips, fields of the
wrong JSON/YAML/torch type): it either still works (exit 0) or prints exactly one `Error:` and one `Hint:`
line and exits 1 — never a traceback — and it changes no existing file (class 8; class 7 for audio)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fedctl.core.checkpoint import FORMAT, save_checkpoint
from fedctl.lora.adapters import write_adapter_dir
from tests.reliability.helpers import assert_ok_or_user_error, assert_user_error, cli, tree_state

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW = settings(SETTINGS, max_examples=8)
PLOTTING = settings(SETTINGS, max_examples=8)  # a readable input costs a matplotlib figure (~0.5 s)
TYPES = settings(SETTINGS, max_examples=15)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
torch_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**62), max_value=2**62), st.floats(),
              st.text(max_size=6), st.just(torch.ones(2)), st.just(torch.tensor(3))),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def damage(draw, size: int):
    """A truncation length or a set of bit flips (byte index, bit) for a file of `size` bytes."""
    if draw(st.booleans()):
        return ("truncate", draw(st.integers(min_value=0, max_value=size - 1)))
    flips = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=4))
    return ("flip", flips)


def apply_damage(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[:arg]
    buf = bytearray(data)
    for pos, bit in arg:
        buf[pos] ^= 1 << bit
    return bytes(buf)


def check_unchanged_on_error(result, before, root) -> None:
    assert_ok_or_user_error(result)
    if result.exit_code != 0:
        assert tree_state(root) == before


# ------------------------------------------------------------------------------------- inspect ckpt


def _checkpoint_payload() -> dict:
    return {"round": 2, "task": "linear", "strategy": "fedavgm",
            "model": {"weight": torch.ones(1, 3), "bias": torch.zeros(1)},
            "strategy_state": {"momentum": {"weight": torch.zeros(1, 3)}}, "client_optimizer_states": {},
            "rng": {}, "config": {"federation": {"rounds": 3, "clients": 2}},
            "metrics": [{"type": "fit", "round": 1, "train_loss": 0.5},
                        {"type": "eval", "scope": "global", "round": 1, "val_loss": 0.4}]}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "round_002.pt"
    save_checkpoint(path, _checkpoint_payload())
    assert cli("inspect", "ckpt", path).exit_code == 0
    return path.read_bytes()


@SETTINGS
@given(data=st.data())
def test_inspect_ckpt_damaged_bytes(good_checkpoint, data):
    how = data.draw(damage(len(good_checkpoint)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "round_002.pt"
        path.write_bytes(apply_damage(good_checkpoint, how))
        before = tree_state(Path(tmp))
        res = cli("inspect", "ckpt", path)
        assert_ok_or_user_error(res)
        assert tree_state(Path(tmp)) == before  # inspect only reads


@TYPES
@given(field=st.sampled_from(["round", "task", "strategy", "model", "strategy_state", "config", "metrics"]),
       value=torch_values, as_json=st.booleans())
def test_inspect_ckpt_fields_of_wrong_type(field, value, as_json):
    payload = {"format": FORMAT, **_checkpoint_payload(), field: value}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "round_002.pt"
        torch.save(payload, path)
        res = cli("inspect", "ckpt", path, *(["--json"] if as_json else []))
        assert_ok_or_user_error(res)


def test_inspect_ckpt_json_of_crafted_fields(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": FORMAT, **_checkpoint_payload(), "config": {"x": torch.ones(2), "y": (1, 2), 3: "z"},
                "metrics": [{"type": "fit", "v": torch.ones(3), "w": float("nan")}], "round": torch.tensor(7)}, path)
    res = cli("inspect", "ckpt", path, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["round"] == 7 and info["config"]["x"] == [1.0, 1.0] and info["last_fit"]["w"] is None


def test_inspect_ckpt_crafted_model_field_is_an_error(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": FORMAT, **_checkpoint_payload(), "model": {"w": "not a tensor"}}, path)
    assert "model" in assert_user_error(cli("inspect", "ckpt", path))
    torch.save({"format": FORMAT, **_checkpoint_payload(), "metrics": "oops"}, path)
    assert "metrics" in assert_user_error(cli("inspect", "ckpt", path))


# ----------------------------------------------------------------------------------- inspect deltas


def _deltas_run(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for r in (1, 2, 3):
        path = root / "deltas" / "server" / f"round_{r:03d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"layer.weight": torch.randn(4, 3, generator=g), "layer.bias": torch.randn(4, generator=g)},
                  str(path), metadata={"round": str(r)})
    return root


@PLOTTING
@given(data=st.data())
def test_inspect_deltas_damaged_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        run = _deltas_run(Path(tmp) / "run")
        target = run / "deltas" / "server" / f"round_{data.draw(st.integers(1, 3)):03d}.safetensors"
        good = target.read_bytes()
        target.write_bytes(apply_damage(good, data.draw(damage(len(good)))))
        before = tree_state(run)
        res = cli("inspect", "deltas", run, "--json")
        check_unchanged_on_error(res, before, run)
        if res.exit_code == 0:  # only plots/ was added
            after = tree_state(run)
            assert {k: v for k, v in after.items() if not k.startswith("plots")} == before


def test_inspect_deltas_truncated_file_is_one_error(tmp_path):
    run = _deltas_run(tmp_path / "run")
    path = run / "deltas" / "server" / "round_002.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    before = tree_state(run)
    assert "round_002" in assert_user_error(cli("inspect", "deltas", run))
    assert tree_state(run) == before


# -------------------------------------------------------------------------------------- inspect run


def _metrics_lines() -> list[dict]:
    return [{"type": "fit", "round": r, "train_loss": 1.0 / r, "local_steps": 3} for r in (1, 2)] + [
        {"type": "eval", "scope": "global", "round": r, "val_loss": 1.2 / r} for r in (1, 2)]


@PLOTTING
@given(lines=st.lists(json_values, min_size=1, max_size=5), metric=st.sampled_from([None, "val_loss", "x"]))
def test_inspect_run_metrics_of_any_json_shape(lines, metric):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(v) + "\n" for v in [*_metrics_lines(), *lines]))
        before = tree_state(run)
        res = cli("inspect", "run", run, *(["--metric", metric] if metric else []), "--json")
        check_unchanged_on_error(res, before, run)


@PLOTTING
@given(data=st.data())
def test_inspect_run_damaged_bytes(data):
    good = "".join(json.dumps(v) + "\n" for v in _metrics_lines()).encode()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_bytes(apply_damage(good, data.draw(damage(len(good)))))
        (run / "config.yaml").write_bytes(data.draw(st.binary(max_size=40)))
        before = tree_state(run)
        check_unchanged_on_error(cli("inspect", "run", run), before, run)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"[1, 2, 3]\n", b'{"round": "one"}\n',
                                     b'{"type": "eval", "round": 1, "val_loss": "low"}\n'])
def test_inspect_run_binary_or_array_lines_are_one_error(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_bytes(content)
    before = tree_state(tmp_path)
    assert_user_error(cli("inspect", "run", tmp_path))
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------------------------------- merge


def _adapter(path: Path, seed: int, **config) -> Path:
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"], **config}
    write_adapter_dir(path, cfg, {"base_model.model.q.lora_A.weight": torch.randn(2, 5, generator=g),
                                  "base_model.model.q.lora_B.weight": torch.randn(6, 2, generator=g)})
    return path


@TYPES
@given(field=st.sampled_from(["r", "lora_alpha", "use_rslora", "alpha_pattern", "rank_pattern", "peft_type",
                              "use_dora"]),
       value=json_values, method=st.sampled_from(["svd", "naive"]))
def test_merge_adapter_config_fields_of_wrong_type(field, value, method):
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _adapter(Path(tmp) / "a", 0), _adapter(Path(tmp) / "b", 1, **{field: value})
        before = tree_state(Path(tmp))
        res = cli("merge", method, "--adapters", a, b, "--out", Path(tmp) / "out")
        check_unchanged_on_error(res, before, Path(tmp))


def test_merge_lora_alpha_eight_is_one_error(tmp_path):
    a, b = _adapter(tmp_path / "a", 0), _adapter(tmp_path / "b", 1, lora_alpha="eight")
    before = tree_state(tmp_path)
    assert "lora_alpha" in assert_user_error(cli("merge", "svd", "--adapters", a, b, "--out", tmp_path / "o"))
    assert tree_state(tmp_path) == before


@TYPES
@given(data=st.data(), which=st.sampled_from(["adapter_model.safetensors", "adapter_config.json"]))
def test_merge_damaged_adapter_files(data, which):
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _adapter(Path(tmp) / "a", 0), _adapter(Path(tmp) / "b", 1)
        good = (b / which).read_bytes()
        (b / which).write_bytes(apply_damage(good, data.draw(damage(len(good)))))
        before = tree_state(Path(tmp))
        res = cli("merge", "svd", "--adapters", a, b, "--out", Path(tmp) / "out")
        check_unchanged_on_error(res, before, Path(tmp))


# ------------------------------------------------------------------------- data partition / kmeans


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from fedctl.data.speech.synth import synth_corpus

    root = tmp_path_factory.mktemp("speech") / "corpus"
    synth_corpus(root, speakers=2, utterances=3, seed=0)
    return root


@FEW
@given(fraction=st.floats(min_value=0.02, max_value=0.97))
def test_truncated_flac_is_a_bad_file_at_partition_time(corpus, fraction):
    """A FLAC cut anywhere keeps its full-length header; partition must still list it (and --strict refuse)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        shutil.copytree(corpus, root)
        victim = sorted(root.rglob("*.flac"))[1]
        data = victim.read_bytes()
        victim.write_bytes(data[: max(1, int(len(data) * fraction))])
        before = tree_state(root)
        res = cli("data", "partition", "librispeech", "--root", root, "--clients", "2", "--out", Path(tmp) / "p",
                  "--json")
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout)
        assert summary["num_bad_files"] == 1 and summary["bad_files"][0]["path"].endswith(victim.name)
        assert "audio" in summary["bad_files"][0]["reason"]
        strict = cli("data", "partition", "librispeech", "--root", root, "--clients", "2", "--out",
                     Path(tmp) / "p2", "--strict")
        assert victim.name in assert_user_error(strict)
        assert not (Path(tmp) / "p2").exists() and tree_state(root) == before


@FEW
@given(data=st.data())
def test_partition_with_damaged_audio_or_transcripts(corpus, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        shutil.copytree(corpus, root)
        files = sorted(p for p in root.rglob("*") if p.suffix in (".flac", ".txt"))
        victim = data.draw(st.sampled_from(files))
        good = victim.read_bytes()
        victim.write_bytes(apply_damage(good, data.draw(damage(len(good)))))
        before = tree_state(root)
        res = cli("data", "partition", "librispeech", "--root", root, "--clients", "2", "--out", Path(tmp) / "p")
        assert_ok_or_user_error(res)
        assert tree_state(root) == before


@pytest.fixture(scope="module")
def parts(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speech") / "parts"
    assert cli("data", "partition", "librispeech", "--root", corpus, "--clients", "2", "--out", out).exit_code == 0
    return out


@FEW
@given(data=st.data())
def test_kmeans_with_damaged_partition(parts, data):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "parts"
        shutil.copytree(parts, p)
        victim = data.draw(st.sampled_from(["summary.json", "client_000.jsonl"]))
        if data.draw(st.booleans()):
            good = (p / victim).read_bytes()
            (p / victim).write_bytes(apply_damage(good, data.draw(damage(len(good)))))
        else:
            (p / victim).write_text("".join(json.dumps(v) + "\n" for v in data.draw(st.lists(json_values, min_size=1,
                                                                                             max_size=3))))
        before = tree_state(p)
        res = cli("data", "kmeans", "--parts", p, "--clusters", "2", "--out", Path(tmp) / "labels")
        assert_ok_or_user_error(res)
        assert tree_state(p) == before
        if res.exit_code != 0:
            assert not (Path(tmp) / "labels").exists()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
def test_probe_detects_truncated_audio_of_both_formats(tmp_path, fraction, fmt):
    import numpy as np
    import soundfile as sf

    from fedctl.data.speech.audio import AudioInfo
    from fedctl.data.speech.librispeech import probe as _probe

    path = tmp_path / f"u.{fmt.lower()}"
    sf.write(path, (np.random.default_rng(0).standard_normal(16000) * 0.1).astype("float32"), 16000, format=fmt,
             subtype="PCM_16")
    assert _probe(path) == AudioInfo(frames=16000, rate=16000, channels=1)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    assert "truncated" in _probe(path)


@pytest.mark.parametrize("config", [b"[1", b"\xff\xfe", b"[1, 2]", b'{"model_type": 5}'])
def test_kmeans_hubert_model_folder_damaged(parts, tmp_path, config):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_bytes(config)
    before = tree_state(tmp_path)
    res = cli("data", "kmeans", "--parts", parts, "--features", "hubert", "--model", tmp_path / "m", "--out",
              tmp_path / "labels")
    assert "--model" in assert_user_error(res)
    assert tree_state(tmp_path) == before
