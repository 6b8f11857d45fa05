"""The shipped attack sweep template opens with its command and loads strictly; a sweep runs its cells
and writes the method × defence × bin table with speaker ID."""

from __future__ import annotations

import shlex

import pytest
import yaml

from fedctl.attacks.sweep import SWEEP_COLUMNS, load_sweep, run_sweep
from fedctl.errors import FedctlError
from fedctl.utils.templates import list_templates

ATTACK_TEMPLATES = [p for p in list_templates() if p.read_text().startswith("# fedctl attack sweep ")]  # sweep files


def test_attack_sweep_template_opens_with_its_command_and_loads():
    assert {p.stem for p in ATTACK_TEMPLATES} >= {"attack_sweep_tiny"}
    for path in ATTACK_TEMPLATES:
        argv = shlex.split(path.read_text().splitlines()[0][2:])
        assert argv[:3] == ["fedctl", "attack", "sweep"] and path.stem in argv
        data = load_sweep(path)
        assert set(data["methods"]) <= {"gradient", "hfgm"} and data["defenses"]


def test_sweep_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"arch": "ds1", "defenses": {"x": {"sigma": 1}}}))
    with pytest.raises(FedctlError, match="unknown config key 'defenses.x.sigma'"):
        load_sweep(bad)


def test_sweep_runs_cells_and_reports_speaker_id(corpus, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"arch": "ds1", "preset": "tiny", "bins": [[1000, 1300]], "batch_end": 4,
                                   "batch_stride": 2,  # two speakers
                                   "max_frames": 9, "crop_transcript": True,
                                   "attack": {"restarts": 1, "max_iter": 2}, "methods": ["gradient"],
                                   "defenses": {"none": {}, "dp": {"clip": 1.0, "noise": 0.1}}}, sort_keys=False))
    rows = run_sweep(cfg, [str(corpus)], tmp_path / "out")
    assert [r["defense"] for r in rows] == ["none", "dp"]
    assert (tmp_path / "out" / "sweep.csv").read_text().splitlines()[0] == ",".join(SWEEP_COLUMNS)
    for r in rows:
        assert r["utterances"] == 2 and r["chance_top1"] == 0.25 and r["chance_top5"] == 1.0
        assert 0.0 <= r["speaker_top1"] <= 1.0 and r["budget"] > 0
        assert 0.0 <= r["prior_top1"] <= r["prior_top5"] == 1.0  # 4 speakers: the 5 most frequent cover all
