"""`fedctl attack ds1|ds2` through Typer's CliRunner: metrics.csv with every column, resume skips finished
utterances, plots and log, and bad input → one-line Error/Hint, exit 1."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from fedctl.attacks.runner import COLUMNS
from fedctl.cli.app import app
from fedctl.tasks.asr.models import build_asr_model

runner = CliRunner()
FAST = ["--max-iter", "3", "--seeds", "2", "--preset", "tiny"]


def _attack(*args):
    return runner.invoke(app, ["attack", *[str(a) for a in args]], catch_exceptions=False)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_has_every_column_and_resume_skips_finished(corpus, tmp_path):
    out = tmp_path / "atk"
    res = _attack("ds1", "--corpus", corpus, "--min-dur", 1000, "--max-dur", 2000, "--batch-end", 2, *FAST,
                  "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["attacked"] == 2 and summary["skipped"] == 0
    rows = _rows(out / "metrics.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 2
    for r in rows:
        assert 1000 <= int(r["duration_ms"]) < 2000 and r["method"] == "gradient" and r["defense"] == "none"
        assert float(r["random_mae"]) > 0 and float(r["feature_mae"]) > 0 and int(r["iterations"]) == 3
        assert abs(float(r["mae_ratio"]) - float(r["feature_mae"]) / float(r["random_mae"])) < 1e-3
        assert r["transcript_cer"] == ""  # transcripts given: nothing recovered to score
    assert len(list((out / "plots").glob("*.png"))) == 2 and (out / "attack.log").exists()
    assert len(list((out / "recon").glob("*.pt"))) == 2
    first = (out / "metrics.csv").read_text()
    # the same command over a wider range: only the new utterance is attacked, earlier rows untouched
    res = _attack("ds1", "--corpus", corpus, "--min-dur", 1000, "--max-dur", 2000, "--batch-end", 3, *FAST,
                  "--out", out, "--json")
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["skipped"] == 2 and summary["attacked"] == 1
    rows = _rows(out / "metrics.csv")
    assert len(rows) == 3 and (out / "metrics.csv").read_text().startswith(first)


def test_no_transcripts_reports_the_recovered_transcripts_cer(corpus, tmp_path):
    out = tmp_path / "nt"
    res = _attack("ds1", "--corpus", corpus, "--min-dur", 1000, "--max-dur", 2000, "--batch-end", 1, *FAST,
                  "--max-frames", 9, "--crop-transcript", "--no-transcripts", "--out", out)
    assert res.exit_code == 0, res.output
    assert "CER" in res.stdout
    rows = _rows(out / "metrics.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 1
    for r in rows:
        assert 0.0 <= float(r["transcript_cer"]) <= 3.0  # 3 true characters; at most 9 decoded
        # 29 × 17 output-layer entries for 9 frames × (26 features + 28 free alignment posteriors)
        assert abs(float(r["budget"]) - 29 * 17 / (9 * (26 + 28))) < 1e-3
        assert "transcript_hat" in torch.load(out / "recon" / f"{r['utterance']}.pt", weights_only=True)
    assert (out / "attack.log").read_text().count("recovered transcript") == 1


def test_ds2_hfgm_with_defences_runs_and_table_renders(corpus, tmp_path):
    res = _attack("ds2", "--corpus", corpus, "--min-dur", 1000, "--max-dur", 1300, "--batch-end", 1,
                  "--method", "hfgm", "--hfgm-directions", "7", *FAST, "--defense-clip", "1", "--defense-noise",
                  "0.01", "--defense-prune", "0.5", "--out", tmp_path / "d2")
    assert res.exit_code == 0, res.output
    assert "ratio" in res.stdout and "Saved" in res.stdout
    (row,) = _rows(tmp_path / "d2" / "metrics.csv")
    assert row["method"] == "hfgm" and row["defense"] == "prune0.5+dp(C=1,σ=0.01)"


@pytest.mark.parametrize("args,message", [
    (["--batch-start", "500", "--batch-end", "600"], "is past the"),
    (["--min-dur", "9000", "--max-dur", "9500"], "no utterance lies in the duration bin"),
    (["--max-frames", "3"], "too short for its transcript"),
    (["--optimizer", "sgd"], "option --optimizer = 'sgd' is not one of lbfgs, adam"),
    (["--dtype", "float16"], "option --dtype = 'float16' is not one of float64, float32"),
    (["--no-transcripts", "--method", "hfgm"], "--method hfgm needs the transcripts"),
])
def test_bad_input_is_one_line_error_and_hint(corpus, tmp_path, args, message):
    res = _attack("ds1", "--corpus", corpus, *FAST, "--out", tmp_path / "x", *args)
    assert res.exit_code == 1
    assert "Error:" in res.output and message in res.output and "Hint:" in res.output
    assert "Traceback" not in res.output


def test_victim_checkpoint_of_the_other_architecture_is_refused(corpus, tmp_path):
    ckpt = tmp_path / "round_003.pt"
    torch.save({"model": build_asr_model("ds2", "tiny").state_dict(),
                "config": {"task": {"arch": "ds2", "preset": "tiny"}}}, ckpt)
    res = _attack("ds1", "--corpus", corpus, *FAST, "--checkpoint", ckpt, "--out", tmp_path / "x")
    assert res.exit_code == 1 and "is a ds2 model, not ds1" in res.output and "Hint:" in res.output
    bare = tmp_path / "bare.pt"
    torch.save(build_asr_model("ds2", "tiny").state_dict(), bare)
    res = _attack("ds1", "--corpus", corpus, *FAST, "--checkpoint", bare, "--out", tmp_path / "y")
    assert res.exit_code == 1 and "holds a ds2 model, not ds1" in res.output


def test_victim_checkpoint_weights_are_used(corpus, tmp_path):
    model = build_asr_model("ds1", "tiny")
    with torch.no_grad():
        model.out.weight.fill_(0.01)
    ckpt = tmp_path / "final.pt"
    torch.save({"model": model.state_dict(), "config": {"task": {"arch": "ds1", "preset": "tiny"}}}, ckpt)
    from fedctl.attacks.case import load_victim

    victim = load_victim("ds1", "tiny", checkpoint=ckpt)
    assert float(victim.out.weight.abs().max() - 0.01) == 0.0


def test_victim_checkpoint_model_settings_come_from_its_config(tmp_path):
    from fedctl.attacks.case import load_victim

    model = build_asr_model("ds1", "tiny", n_hidden=24)
    ckpt = tmp_path / "round_001.pt"
    torch.save({"model": model.state_dict(), "config": {"task": {"arch": "ds1", "preset": "tiny", "n_hidden": 24,
                                                                 "lr": 0.1}}}, ckpt)
    victim = load_victim("ds1", "tiny", checkpoint=ckpt)
    assert victim.config.n_hidden == 24 and torch.equal(victim.out.weight, model.out.weight)


def test_speakers_scores_reconstructions_at_the_attacks_crop_and_refuses_bad_folders(corpus, tmp_path):
    from fedctl.attacks.analysis import windows
    from fedctl.tasks.asr.data import FeatureCache, load_corpus

    out = tmp_path / "atk"
    # every 4th utterance of the bin: two speakers (one alone would make identification meaningless: refused)
    res = _attack("ds1", "--corpus", corpus, "--min-dur", 1000, "--max-dur", 2500, "--batch-end", 9,
                  "--batch-stride", 4, *FAST, "--max-frames", 9, "--crop-transcript", "--out", out)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["attack", "speakers", str(out), "--corpus", str(corpus), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout[res.stdout.index("{"):])
    attacked = {p.stem for p in (out / "recon").glob("*.pt")}
    cache = FeatureCache("ds1")
    # settings.json says the attack cropped to 9 frames: the model trains on every 9-frame window of the others
    expected = sum(len(windows(cache(u), 9)) for u in load_corpus([str(corpus)]) if u.id not in attacked)
    assert got["train_examples"] == expected and got["utterances"] == 3 and got["speakers"] == 4
    assert got["chance"] == {"top1": 0.25, "top5": 1.0}
    table = runner.invoke(app, ["attack", "speakers", str(out), "--corpus", str(corpus)])
    assert table.exit_code == 0 and "reconstructed" in table.stdout and "random start" in table.stdout
    for args, needle in (([str(tmp_path)], "no reconstructions"), ([str(out), "--frames", "0"], "--frames 0")):
        bad = runner.invoke(app, ["attack", "speakers", *args, "--corpus", str(corpus)])
        lines = [ln for ln in bad.output.splitlines() if ln.strip()]
        assert bad.exit_code == 1 and needle in lines[0] and lines[0].startswith("Error:")
        assert lines[1].startswith("Hint:") and "Traceback" not in bad.output


def test_threads_sets_torchs_threads_and_refuses_zero(corpus, tmp_path, monkeypatch):
    from fedctl.attacks import runner as attack_runner
    from fedctl.errors import FedctlError

    seen = []

    def stop_at_the_attack(spec, progress, **_):  # the thread count is set before the attack: no need to run one
        seen.append(torch.get_num_threads())
        raise FedctlError("stopped by the test", "none")

    monkeypatch.setattr(attack_runner, "run_attack", stop_at_the_attack)
    before = torch.get_num_threads()
    try:
        for args, expected in (([], 1), (["--threads", "2"], 2)):  # 1 is the default
            torch.set_num_threads(3)
            res = _attack("ds1", "--corpus", corpus, *args, "--out", tmp_path / "t")
            assert res.exit_code == 1 and "stopped by the test" in res.output and seen[-1] == expected
        bad = runner.invoke(app, ["attack", "ds1", "--corpus", str(corpus), "--threads", "0", "--out", str(tmp_path / "u")])
        lines = [ln for ln in bad.output.splitlines() if ln.strip()]
        assert bad.exit_code == 1 and lines[0].startswith("Error:") and "--threads 0" in lines[0]
        assert lines[1].startswith("Hint:") and not (tmp_path / "u").exists()
    finally:
        torch.set_num_threads(before)


def test_attack_runs_from_a_shipped_template_with_set(corpus, tmp_path, monkeypatch):
    """`fedctl attack ds1 --config attack_ds1_tiny --set attack.max_iter=3`: the template's settings (its corpus/
    relative to the working directory, 10-frame crops), a --set over them, a flag over the file."""
    import shutil

    from typer.testing import CliRunner as Runner

    from fedctl.cli.app import app as fedctl_app

    shutil.copytree(corpus, tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    res = Runner().invoke(fedctl_app, ["attack", "ds1", "--config", "attack_ds1_tiny", "--set", "attack.max_iter=3",
                                       "--batch-end", "1"])
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "attack_ds1_tiny" / "settings.json").read_text())
    assert settings["attack"]["max_iter"] == 3 and settings["max_frames"] == 10 and settings["batch_end"] == 1
    assert settings["model"] == {"n_hidden": 256}
    rows = (tmp_path / "attack_ds1_tiny" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and ",10," in rows[1]  # one utterance, 10 frames
    # --set beats the flag, and the same settings resume (nothing redone)
    res = Runner().invoke(fedctl_app, ["attack", "ds1", "--config", "attack_ds1_tiny", "--set", "attack.max_iter=3",
                                       "--batch-end", "2", "--set", "batch_end=1"])
    assert res.exit_code == 0 and "1 resumed" in res.output, res.output
    # a changed setting from the file's side is refused, naming it
    res = Runner().invoke(fedctl_app, ["attack", "ds1", "--config", "attack_ds1_tiny", "--set", "attack.max_iter=4",
                                       "--batch-end", "1"])
    assert res.exit_code == 1 and "attack.max_iter" in res.output and "--overwrite" in res.output, res.output


@pytest.mark.parametrize("item,named", [("attack.max_itr=3", "attack.max_itr"), ("bogus=1", "bogus"),
                                        ("defense.clipp=1", "defense.clipp")])
def test_attack_set_with_an_unknown_key_is_one_error_naming_the_valid_keys(tmp_path, item, named):
    from typer.testing import CliRunner as Runner

    from fedctl.cli.app import app as fedctl_app

    res = Runner().invoke(fedctl_app, ["attack", "ds1", "--config", "attack_ds1_tiny", "--set", item,
                                       "--out", str(tmp_path / "x")])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert sum(ln.startswith("Error:") for ln in lines) == 1 and sum(ln.startswith("Hint:") for ln in lines) == 1
    assert f"unknown config key '{named}'" in res.output and "valid keys" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x").exists()
