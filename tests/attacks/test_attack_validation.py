"""Attack inputs go through the training config's checks (issue 22, classes 3, 4 and the attack part of 6):
every numeric flag and sweep key is declared with a range, refused by name before any work (one Error/Hint,
exit 1, nothing written); defences share training's check functions; damaged attack folders, victims and
checkpoints are errors, not tracebacks; speaker rates come with intervals and a frequency-prior baseline."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import save_file

from fedctl.attacks.analysis import prior_topk, wilson_interval
from fedctl.attacks.attack import AttackConfig
from fedctl.attacks.case import Defense
from fedctl.attacks.runner import COLUMNS, AttackSpec, attack_spec
from fedctl.attacks.sweep import load_sweep
from fedctl.cli import attack as attack_cli
from fedctl.core.checkpoint import FORMAT
from fedctl.core.config import FederationConfig, apply_mapping, check_dropout, check_prune, check_range
from fedctl.core.strategies.dp import check_noise_multiplier, dp_config
from fedctl.errors import FedctlError
from fedctl.tasks.asr.config import AsrConfig
from fedctl.tasks.asr.models import build_asr_model
from tests.reliability.helpers import assert_user_error, cli, tree_state

FAST = ["--max-iter", "2", "--seeds", "1", "--preset", "tiny", "--batch-end", "1"]

# ------------------------------------------------------------------------------- every option, refused by name

BAD_OPTIONS = [
    ("--seeds", "0"), ("--seeds", "-3"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "inf"),
    ("--lr-step", "0"), ("--max-iter", "0"), ("--patience", "0"), ("--seed", "-1"),
    ("--top-grad-fraction", "0"), ("--top-grad-fraction", "1.5"), ("--top-grad-fraction", "nan"),
    ("--distance-weight", "-0.1"), ("--distance-weight", "1.5"), ("--distance-weight", "nan"),
    ("--hfgm-directions", "0"), ("--hfgm-plateau", "0"),
    ("--defense-dropout", "1"), ("--defense-dropout", "1.5"), ("--defense-dropout", "-0.1"), ("--defense-dropout", "nan"),
    ("--defense-prune", "1"), ("--defense-prune", "-0.5"), ("--defense-prune", "nan"),
    ("--defense-clip", "-1"), ("--defense-clip", "nan"), ("--defense-clip", "inf"),
    ("--defense-noise", "-0.01"), ("--defense-noise", "nan"), ("--defense-noise", "inf"),
    ("--batch-stride", "0"), ("--batch-size", "0"), ("--batch-start", "-1"), ("--batch-end", "0"),
    ("--min-dur", "-1"), ("--max-dur", "0"), ("--local-steps", "0"), ("--local-lr", "0"), ("--local-lr", "nan"),
    ("--client-lr", "0"), ("--client-lr", "nan"), ("--victim-seed", "-1"), ("--max-frames", "0"),
    ("--round", "0"), ("--hidden", "0"), ("--method", "sgd"), ("--optimizer", "sgd"), ("--dtype", "float16"),
    ("--distance", "l1"), ("--match", "first"), ("--threads", "0"),
]


@pytest.mark.parametrize("arch", ["ds1", "ds2"])
@pytest.mark.parametrize("flag,value", BAD_OPTIONS)
def test_every_bad_option_value_is_one_error_naming_the_flag(corpus, tmp_path, arch, flag, value):
    out = tmp_path / "atk"
    res = cli("attack", arch, "--corpus", corpus, *FAST, "--out", out, flag, value)
    error = assert_user_error(res)
    assert flag.split("/")[0] in error, error
    assert not out.exists()  # refused before any work


def test_every_numeric_attack_flag_is_declared_with_a_check():
    """The class, not the examples: each int/float option of `attack ds1` maps to a declared key whose field
    carries a range check (a new flag without one fails here)."""
    import typer.main

    command = typer.main.get_command(attack_cli.app).commands["ds1"]
    flag_to_key = {flag: key for key, flag in attack_cli.FLAGS.items()}
    checked = {}
    for cls, prefix in ((AttackSpec, ""), (Defense, "defense."), (AttackConfig, "attack.")):
        checked.update({prefix + f.name: f.metadata.get("check") for f in dataclasses.fields(cls)})
    numeric = [p for p in command.params if p.opts and p.opts[0] not in ("--threads", "--json")
               and getattr(p.type, "name", "") in ("integer", "float")]
    assert len(numeric) >= 25
    for param in numeric:
        flag = param.opts[0]
        if flag == "--hidden":  # a model setting: build_asr_model's checks (positive), run on the meta device
            assert flag_to_key.get("--preset/--hidden") == "model"
            continue
        assert flag in flag_to_key, f"{flag} is not declared in cli/attack.py FLAGS"
        assert checked.get(flag_to_key[flag]) is not None, f"{flag} ({flag_to_key[flag]}) has no range check"


@pytest.mark.parametrize("args,needle", [
    (["--crop-transcript"], "--crop-transcript without --max-frames"),
    (["--min-dur", "2000", "--max-dur", "2000"], "--min-dur, --max-dur"),
    (["--batch-start", "3", "--batch-end", "3"], "--batch-start 3, --batch-end 3"),
    (["--round", "2"], "--round 2 without --run"),
    (["--preset", "huge"], "unknown ds1 preset"),
])
def test_settings_that_would_do_nothing_are_refused_before_any_work(corpus, tmp_path, args, needle):
    res = cli("attack", "ds1", "--corpus", corpus, *FAST, "--out", tmp_path / "atk", *args)
    assert needle in assert_user_error(res)
    assert not (tmp_path / "atk").exists()


# ------------------------------------------------------------------- the defences use training's very checks


def test_defences_are_checked_by_the_training_settings_check_functions():
    fields = {f.name: f.metadata["check"] for f in dataclasses.fields(Defense)}
    assert fields["dropout"] is check_dropout
    assert {f.name: f.metadata.get("check") for f in dataclasses.fields(AsrConfig)}["dropout"] is check_dropout
    assert fields["prune"] is check_prune
    assert {f.name: f.metadata.get("check") for f in dataclasses.fields(FederationConfig)}["prune"] is check_prune
    assert fields["noise"] is check_noise_multiplier


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, math.nan])
@pytest.mark.parametrize("train_key,section,attack_key", [("dropout", AsrConfig, "dropout"),
                                                           ("prune", FederationConfig, "prune")])
def test_same_range_and_message_as_training(value, train_key, section, attack_key):
    with pytest.raises(FedctlError) as trained:
        apply_mapping(section(), {train_key: value}, "k")
    with pytest.raises(FedctlError) as attacked:
        attack_spec({"defense": {attack_key: value}})
    assert trained.value.message.replace(f"'k.{train_key}'", "KEY") == \
        attacked.value.message.replace(f"'defense.{attack_key}'", "KEY")
    assert trained.value.hint.replace(f"k.{train_key}", "KEY") == \
        attacked.value.hint.replace(f"defense.{attack_key}", "KEY")


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_dp_noise_and_attack_noise_refuse_alike(value):
    with pytest.raises(FedctlError) as trained:
        dp_config({"noise_multiplier": value})
    with pytest.raises(FedctlError) as attacked:
        attack_spec({"defense": {"noise": value}})
    assert "federation.dp.noise_multiplier" in trained.value.message and "defense.noise" in attacked.value.message
    if value == -1.0:  # a finite value reaches the one range check: same message and hint
        assert trained.value.message.replace("federation.dp.noise_multiplier", "K") == \
            attacked.value.message.replace("defense.noise", "K")
        assert trained.value.hint == attacked.value.hint


def test_check_range_bounds_are_exact():
    half_open = check_range(low=0, high=1, high_open=True, hint="h")
    for ok in (0, 0.0, 0.5, 1 - 1e-16):
        half_open(ok, "k")
    for bad in (1, 1.0, -1e-300, math.nan, math.inf, -math.inf):
        with pytest.raises(FedctlError, match=r"it must be in \[0, 1\)"):
            half_open(bad, "k")
    positive = check_range(low=0, low_open=True, hint="h")
    positive(1e-300, "k")
    with pytest.raises(FedctlError, match="option --x = 0 is out of range: it must be > 0"):
        positive(0, "--x")
    unbounded = check_range(low=0, finite=False, hint="h")
    unbounded(math.inf, "k")
    with pytest.raises(FedctlError):
        unbounded(math.nan, "k")


# ------------------------------------------------------------------------------------------- sweep YAML


@pytest.mark.parametrize("text,needle", [
    (b"arch: [ds1\n", "not valid YAML at line"),
    (b"\xff\xfearch: ds1\n", "not UTF-8"),
    (b"- arch\n- ds1\n", "must be a mapping"),
    (b"batch_end: many\n", "'batch_end' = 'many' is not a valid int"),
    (b"arch: ds3\n", "'arch' = 'ds3' is not one of ds1, ds2"),
    (b"bogus: 1\n", "unknown config key 'bogus'"),
    (b"attack: {restarts: 0}\n", "'attack.restarts' = 0 is out of range"),
    (b"attack: {max_iter: 0}\n", "'attack.max_iter' = 0 is out of range"),
    (b"attack: {lr: .nan}\n", "'attack.lr' = nan is not a finite number"),
    (b"attack: {method: hfgm}\n", "unknown attack setting(s): method"),
    (b"attack: [1, 2]\n", "'attack' must be a mapping"),
    (b"defenses: {dp: {noise: -1}}\n", "'defenses.dp.noise' = -1.0 is out of range"),
    (b"defenses: {d: {dropout: 1.0}}\n", "'defenses.d.dropout' = 1.0 is out of range"),
    (b"defenses: {p: {prune: 1}}\n", "'defenses.p.prune' = 1.0 is out of range"),
    (b"defenses: {x: {sigma: 1}}\n", "unknown config key 'defenses.x.sigma'"),
    (b"defenses: {x: 3}\n", "'defenses.x' must be a mapping"),
    (b"bins: [[2000, 1000]]\n", "[2000, 1000) ms (bins[0]) is empty"),
    (b"bins: [[1000]]\n", "'bins[0]' = [1000] is not a [min, max) pair"),
    (b"methods: [gradient, sgd]\n", "'methods[1]' = 'sgd' is not one of gradient, hfgm"),
    (b"model: {n_hidden: 0}\n", "n_hidden must be positive"),
    (b"batch_stride: 0\n", "'batch_stride' = 0 is out of range"),
    (b"crop_transcript: true\n", "crop_transcript without max_frames"),
])
def test_sweep_yaml_is_checked_like_the_training_config(tmp_path, text, needle):
    path = tmp_path / "s.yaml"
    path.write_bytes(text)
    with pytest.raises(FedctlError) as info:
        load_sweep(path)
    assert needle in info.value.message and str(path) in info.value.message and info.value.hint
    assert "--set" not in info.value.hint  # a sweep file says `key: value`


def test_sweep_cli_refuses_a_bad_file_before_any_cell(corpus, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"arch": "ds1", "bins": [[1000, 2000]],
                                    "defenses": {"none": {}, "dp": {"clip": 1.0, "noise": float("nan")}}}))
    res = cli("attack", "sweep", "--config", path, "--corpus", corpus, "--out", tmp_path / "sw")
    assert "defenses.dp.noise" in assert_user_error(res)
    assert not (tmp_path / "sw").exists()  # the valid first cell did not run either


# --------------------------------------------------------------------------------- damaged attack folders


def _good_row(**over):
    row = {"utterance": "u1", "duration_ms": "1200", "speaker": "s0", "method": "gradient", "defense": "none",
           "restart": "0", "grad_distance": "0.1", "feature_mae": "0.2", "random_mae": "0.5", "mae_ratio": "0.4",
           "cosine": "0.9", "snr_db": "3.1", "iterations": "2", "seconds": "0.5", "frames": "60", "budget": "2.1",
           "transcript_cer": ""}
    return {**row, **over}


def _csv(rows, header=COLUMNS):
    return (",".join(header) + "\n" + "".join(",".join(r[c] for c in header) + "\n" for r in rows)).encode()


@pytest.fixture(scope="module")
def attack_folder(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack") / "atk"
    res = cli("attack", "ds1", "--corpus", corpus, *FAST, "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("content,needle", [
    (b"\x80\x81\x00\xffbinary", "is not UTF-8"),
    (b"", "does not have fedctl attack's columns"),
    (b"a,b,c\n1,2,3\n", "does not have fedctl attack's columns"),
    (_csv([_good_row()]).rsplit(b",", 6)[0] + b"\n", "line 2 has"),  # a truncated last row
    (_csv([_good_row(feature_mae="abc")]), "feature_mae = 'abc' is not a number"),
    (_csv([_good_row(duration_ms="1.5e3x")]), "duration_ms"),
    (_csv([_good_row()]) + b'"unterminated,\n', "line"),
])
def test_damaged_metrics_csv_on_resume_is_one_error_and_nothing_is_written(corpus, tmp_path, content, needle,
                                                                             attack_folder):
    out = tmp_path / "atk"
    shutil.copytree(attack_folder, out)  # a real attack folder (marker, settings.json) whose metrics.csv is damaged
    (out / "metrics.csv").write_bytes(content)
    before = tree_state(out)
    res = cli("attack", "ds1", "--corpus", corpus, *FAST, "--out", out)
    error = assert_user_error(res)
    assert "metrics.csv" in error and needle in error, error
    assert tree_state(out) == before


# ------------------------------------------------------------------------------------ victims and checkpoints


def _victim_files(tmp_path):
    good = build_asr_model("ds1", "tiny").state_dict()
    wrong = {k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k == "out.weight" else v) for k, v in good.items()}
    files = {}
    files["wrong_shape_ckpt"] = tmp_path / "round_001.pt"
    torch.save({"format": FORMAT, "round": 1, "task": "asr", "model": wrong,
                "config": {"task": {"arch": "ds1", "preset": "tiny"}}}, files["wrong_shape_ckpt"])
    files["wrong_shape_bare"] = tmp_path / "bare.pt"
    torch.save(wrong, files["wrong_shape_bare"])
    files["model_a_list"] = tmp_path / "list.pt"
    torch.save({"format": FORMAT, "round": 1, "task": "asr", "model": [1, 2], "config": {}}, files["model_a_list"])
    files["config_a_list"] = tmp_path / "cfg.pt"
    torch.save({"format": FORMAT, "round": 1, "task": "asr", "model": good, "config": [1]}, files["config_a_list"])
    files["a_tensor"] = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), files["a_tensor"])
    files["non_tensor_entry"] = tmp_path / "entry.pt"
    torch.save({**good, "out.weight": "x"}, files["non_tensor_entry"])
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "asr_config.json").write_text(json.dumps({"arch": "ds1", "preset": "tiny"}))
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(hf / "model.safetensors"))
    files["wrong_shape_safetensors"] = hf
    return files


@pytest.mark.parametrize("which,needle", [
    ("wrong_shape_ckpt", "tensor 'out.weight' is"), ("wrong_shape_bare", "tensor 'out.weight' is"),
    ("model_a_list", "field 'model' is a list"), ("config_a_list", "field 'config' is a list"),
    ("a_tensor", "neither a fedctl checkpoint nor a state dict"), ("non_tensor_entry", "entry 'out.weight' is a str"),
    ("wrong_shape_safetensors", "tensor 'out.weight' is"),
])
def test_victim_files_of_the_wrong_shape_are_one_error(corpus, tmp_path, which, needle):
    victim = _victim_files(tmp_path)[which]
    res = cli("attack", "ds1", "--corpus", corpus, *FAST, "--checkpoint", victim, "--out", tmp_path / "atk")
    assert needle in assert_user_error(res)
    assert not (tmp_path / "atk").exists()


def _checkpoint(tmp_path, **over):
    path = tmp_path / "checkpoints" / "round_002.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "round": 2, "task": "linear", "model": {"w": torch.ones(2)},
                "config": {"run": {"task": "linear"}}, **over}, path)
    return path


@pytest.mark.parametrize("over,needle", [
    ({"round": "two"}, "field 'round'"), ({"round": 2.5}, "field 'round'"), ({"round": [2]}, "field 'round'"),
    ({"round": True}, "field 'round'"), ({"round": -1}, "field 'round'"),
    ({"model": [1, 2]}, "field 'model' is a list"), ({"model": {"w": "x"}}, "model entry 'w' is a str"),
    ({"config": [1, 2]}, "field 'config' is a list"), ({"round": None}, "lacks round"),
])
def test_eval_and_inspect_refuse_damaged_checkpoints_alike(tmp_path, over, needle):
    path = _checkpoint(tmp_path, **over)
    before = tree_state(tmp_path)
    assert needle in assert_user_error(cli("eval", path))
    if over.get("round", 2) is not None:  # inspect shows a checkpoint without a round
        assert needle in assert_user_error(cli("inspect", "ckpt", path))
    assert tree_state(tmp_path) == before


# ------------------------------------------------------------------------------------- honest attack numbers


def test_mae_ratio_shows_small_values(monkeypatch):
    console = Console(record=True, width=200)
    monkeypatch.setattr(attack_cli, "out", console)
    attack_cli._render({"skipped": 0, "bins": {"1-2s": {"utterances": 2, "budget": 3.0, "feature_mae": 1.2e-5,
                                                        "random_mae": 0.57, "mae_ratio": 2.104e-5, "cosine": 1.0,
                                                        "snr_db": 80.0, "seconds": 1.0}}}, "ds1", "gradient")
    text = console.export_text()
    assert "2.1e-05" in text and "0.000" not in text


def test_wilson_interval_is_the_closed_form():
    z = 1.959963984540054
    for hits, n in ((3, 8), (0, 8), (8, 8), (7, 20)):
        p = hits / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = wilson_interval(hits, n)
        assert abs(low - (centre - half)) < 1e-12 and abs(high - (centre + half)) < 1e-12
    assert wilson_interval(3, 8) == pytest.approx([0.136844, 0.694258], abs=1e-6)


def test_frequency_prior_is_the_expected_accuracy_of_guessing_the_most_frequent_speakers():
    train = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"]
    scored = ["a", "a", "b", "d"]
    got = prior_topk(train, scored, ks=(1, 2, 3, 5))
    # top-1 guesses a: 2/4; top-2 guesses a and one of the tied b, c (1/2 each): (2 + 0.5) / 4;
    # top-3 guesses a, b, c: 3/4; top-5 covers all four speakers: 1
    assert got == {"top1": 0.5, "top2": 0.625, "top3": 0.75, "top5": 1.0}


def _fake_attack_folder(root, utts, cache):
    (root / "recon").mkdir(parents=True)
    (root / "settings.json").write_text(json.dumps({"arch": "ds1", "max_frames": None}))
    for u in utts:
        x = cache(u)
        torch.save({"x_hat": x.clone(), "x_true": x.clone(), "x_init": torch.rand_like(x), "speaker": u.speaker,
                    "curve": []}, root / "recon" / f"{u.id}.pt")


def test_speakers_refuses_a_one_speaker_scored_set_and_reports_prior_and_intervals(corpus, tmp_path):
    from fedctl.tasks.asr.data import FeatureCache, load_corpus

    utts = load_corpus([str(corpus)])
    cache = FeatureCache("ds1")
    one = [u for u in utts if u.speaker == utts[0].speaker][:3]
    _fake_attack_folder(tmp_path / "one", one, cache)
    error = assert_user_error(cli("attack", "speakers", tmp_path / "one", "--corpus", corpus))
    assert "one speaker" in error
    two = one[:2] + [u for u in utts if u.speaker != utts[0].speaker][:2]
    _fake_attack_folder(tmp_path / "two", two, cache)
    res = cli("attack", "speakers", tmp_path / "two", "--corpus", corpus, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout[res.stdout.index("{"):])
    assert got["scored_speakers"] == 2 and got["utterances"] == 4
    for name in ("reconstructed", "clean", "random_start"):
        for k in ("top1", "top5"):
            hits = round(got[name][k] * 4)
            assert got[name][f"{k}_ci"] == pytest.approx(wilson_interval(hits, 4))
    assert got["reconstructed"] == got["clean"]  # x_hat = x_true here
    train = [u for u in utts if u.id not in {t.id for t in two}]
    assert got["prior"] == pytest.approx(prior_topk([u.speaker for u in train], [u.speaker for u in two]))
    table = cli("attack", "speakers", tmp_path / "two", "--corpus", corpus)
    assert "frequency prior" in table.stdout and "uniform chance" in table.stdout and "95% CI" in table.stdout
