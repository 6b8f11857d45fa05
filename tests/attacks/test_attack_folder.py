"""An attack folder has the run directory's discipline (`RunDir`: owner marker, lock, settings check): a folder
fedctl did not write is refused untouched; one written with other settings is refused naming the changed keys
(`--overwrite` replaces only fedctl's own attack files); the same settings resume; a folder in use by another
process is refused, for `attack ds1|ds2` and `attack sweep` alike."""

from __future__ import annotations

import csv
import json
import os

from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.core.rundir import RunDir

runner = CliRunner()
FAST = ["--min-dur", "1000", "--max-dur", "2000", "--max-iter", "2", "--seeds", "1"]


def _attack(*args):
    return runner.invoke(app, ["attack", *[str(a) for a in args]])


def _rows(out):
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _snapshot(folder, locks=True):
    """Every file under `folder` (hidden ones too) with its bytes and modification time; `locks=False` leaves
    out the lock's own files (each writer that takes the lock records its PID)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), os.stat(p).st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and (locks or not p.name.startswith(".fedctl.lock"))}


def _refused(res, *phrases):
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    for phrase in phrases:
        assert phrase in res.output, res.output


def test_a_folder_fedctl_did_not_write_is_refused_untouched(corpus, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "metrics.csv").write_text("my,own\n1,2\n")
    (user / "attack.log").write_text("my notes\n")
    before = _snapshot(user)
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--batch-end", 1, "--out", user),
             "fedctl did not write", "another --out")
    assert _snapshot(user) == before  # not even a lock file
    # another fedctl output (the synth corpus folder, marked by `fedctl data synth`) is not an attack folder
    corpus_before = _snapshot(corpus)
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--batch-end", 1, "--out", corpus),
             "another fedctl output, not a attack folder")
    assert _snapshot(corpus) == corpus_before
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--batch-end", 1, "--out", a_file), "is a file")
    assert a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _attack("ds1", "--corpus", corpus, *FAST, "--batch-end", 1, "--out", empty).exit_code == 0


def test_other_settings_are_refused_naming_the_changed_keys(corpus, tmp_path):
    out = tmp_path / "atk"
    base = ["ds1", "--corpus", corpus, *FAST, "--out", out]
    res = _attack(*base, "--batch-end", 1)
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("the user's own file in the attack folder\n")
    before = _snapshot(out, locks=False)
    for extra, keys in ((["--defense-clip", 1], ["defense.clip: 0.0 → 1.0"]),
                        (["--method", "hfgm"], ["attack.method: 'gradient' → 'hfgm'"]),
                        (["--seeds", 2, "--max-iter", 3], ["attack.restarts: 1 → 2", "attack.max_iter: 2 → 3"]),
                        (["--min-dur", 1100], ["min_dur: 1000 → 1100"])):
        _refused(_attack(*base, "--batch-end", 1, *extra), *keys, "--overwrite", "another --out")
        assert _snapshot(out, locks=False) == before  # metrics.csv, settings.json, attack.log: as they were
    out_ds2 = ["ds2", *base[1:]]
    _refused(_attack(*out_ds2, "--batch-end", 1), "arch: 'ds1' → 'ds2'")
    assert _snapshot(out, locks=False) == before
    res = runner.invoke(app, ["attack", "speakers", str(out), "--corpus", str(corpus), "--json"])
    # still a ds1 folder: its one reconstruction is read with ds1 features and then refused only because one
    # speaker cannot measure leakage (a ds2-overwritten folder crashed here before)
    _refused(res, "all come from one speaker")


def test_the_same_settings_resume_and_overwrite_replaces_only_the_attack_results(corpus, tmp_path):
    out = tmp_path / "atk"
    base = ["ds1", "--corpus", corpus, *FAST, "--out", out]
    res = _attack(*base, "--batch-end", 1)
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("the user's own file in the attack folder\n")
    before = _snapshot(out, locks=False)
    res = _attack(*base, "--batch-end", 1, "--json")  # the same settings: resumed, nothing redone
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert (summary["skipped"], summary["attacked"]) == (1, 0)
    assert (out / "metrics.csv").read_bytes() == before["metrics.csv"][0]
    res = _attack(*base, "--batch-end", 2, "--json")  # a larger --batch-end attacks more of the same experiment
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert (summary["skipped"], summary["attacked"]) == (1, 1)
    rows = _rows(out)
    assert len(rows) == 2 and (out / "metrics.csv").read_bytes().startswith(before["metrics.csv"][0])
    assert json.loads((out / "settings.json").read_text())["batch_end"] == 2
    assert len(list((out / "recon").glob("*.pt"))) == 2

    res = _attack(*base, "--batch-end", 1, "--defense-clip", 1, "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert (summary["skipped"], summary["attacked"]) == (0, 1)
    rows = _rows(out)
    assert [r["defense"] for r in rows] == ["dp(C=1,σ=0)"]  # the old rows are gone, not mixed in
    assert json.loads((out / "settings.json").read_text())["defense"]["clip"] == 1.0
    assert [p.stem for p in (out / "recon").glob("*.pt")] == [rows[0]["utterance"]]
    assert (out / "notes.txt").read_text() == "the user's own file in the attack folder\n"
    assert (out / "attack.log").read_text().count(" settings {") == 1  # the old log went with the old results


def test_an_attack_folder_in_use_is_refused(corpus, tmp_path):
    out = tmp_path / "atk"
    with RunDir(out).locked():  # another process's attack holds it (an OS file lock, as across processes)
        res = _attack("ds1", "--corpus", corpus, *FAST, "--batch-end", 1, "--out", out)
        _refused(res, f"attack folder {out} is in use by another fedctl process (PID {os.getpid()})")
        assert "--resume" not in res.output
    assert not (out / "metrics.csv").exists()


SWEEP = """arch: ds1
preset: tiny
bins: [[1000, 2000]]
batch_end: 1
attack: {restarts: 1, max_iter: 2}
methods: [gradient]
"""


def test_a_second_attack_sweep_is_told_the_folder_is_locked(corpus, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP)
    out = tmp_path / "sweep"
    with RunDir(out).locked():
        res = runner.invoke(app, ["attack", "sweep", "--config", str(cfg), "--corpus", str(corpus), "--out", str(out)])
        _refused(res, "attack sweep folder", "is in use by another fedctl process")
        assert "--resume" not in res.output
    assert not (out / "sweep.csv").exists() and not (out / "gradient").exists()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "sweep.csv").write_text("mine\n")
    before = _snapshot(user)
    res = runner.invoke(app, ["attack", "sweep", "--config", str(cfg), "--corpus", str(corpus), "--out", str(user)])
    _refused(res, "fedctl did not write")
    assert _snapshot(user) == before
