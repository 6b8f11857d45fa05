"""`fedctl attack sweep --config attack_sweep_tiny`: method × defence × duration bin, one resumable attack
folder per cell (`out/<method>/<defence>/<bin>/`), then one table: MAE ratio to the random start, SNR and
speaker top-1/top-5 on the reconstructions (with clean and chance alongside), and the recovered transcripts'
CER when `attack: {transcripts: false}`. Written to `out/sweep.csv`."""

from __future__ import annotations

import csv
import io
from dataclasses import fields
from pathlib import Path

import yaml

from fedctl.attacks.attack import AttackConfig
from fedctl.attacks.case import Defense
from fedctl.attacks.runner import AttackSpec, legacy_attack_folder, read_metrics, run_attack, speaker_leakage
from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.utils.io import write_text

KEYS = {"arch", "preset", "model", "bins", "batch_start", "batch_end", "batch_size", "max_frames", "victim_seed", "crop_transcript", "batch_stride",
        "attack", "methods", "defenses", "local_steps", "local_lr"}
CLIENT_KEYS = ("local_steps", "local_lr")  # AttackConfig fields that describe the client: top-level keys only
SWEEP_COLUMNS = ["method", "defense", "bin", "utterances", "budget", "mae_ratio", "snr_db", "seconds",
                 "speaker_top1", "speaker_top5", "clean_top1", "clean_top5", "chance_top1", "chance_top5",
                 "transcript_cer"]  # empty unless attack.transcripts is false


def load_sweep(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise FedctlError(f"unknown sweep key(s) in {path}: {', '.join(unknown)}", f"valid keys: {', '.join(sorted(KEYS))}")
    attack_keys = {f.name for f in fields(AttackConfig)} - set(CLIENT_KEYS)
    bad = sorted(set(data.get("attack", {})) - attack_keys)
    if bad:
        hint = f"valid: {', '.join(sorted(attack_keys))}"
        if set(bad) & set(CLIENT_KEYS):
            hint = "local_steps and local_lr describe the client: set them at the top level of the sweep"
        raise FedctlError(f"unknown attack setting(s) in {path}: {', '.join(bad)}", hint)
    defense_keys = {f.name for f in fields(Defense)}
    for name, d in (data.get("defenses") or {"none": {}}).items():
        bad = sorted(set(d or {}) - defense_keys)
        if bad:
            raise FedctlError(f"defence {name!r} in {path} has unknown key(s) {', '.join(bad)}",
                              f"valid: {', '.join(sorted(defense_keys))}")
    return data


def run_sweep(config: Path, corpus: list[str], out: Path, progress=None, overwrite: bool = False) -> list[dict]:
    data = load_sweep(config)
    root = RunDir(out, label="attack sweep folder")
    root.check_owner("attack sweep", legacy=_legacy_sweep)  # the user's folder is never written into
    with root.locked():  # a second sweep on this folder is refused while this one runs
        root.mark("attack sweep")
        return _run_cells(data, corpus, Path(out), progress, overwrite)


def _legacy_sweep(path: Path) -> bool:
    """A sweep folder written by a fedctl from before the ownership marker."""
    try:
        table = (path / "sweep.csv").read_text(encoding="utf-8").startswith("method,defense,bin,")
    except (OSError, UnicodeDecodeError):
        table = False
    return table or any(legacy_attack_folder(c) for c in path.glob("*/*/*"))


def _run_cells(data: dict, corpus: list[str], out: Path, progress, overwrite: bool) -> list[dict]:
    rows = []
    for method in data.get("methods", ["gradient"]):
        for dname, dkw in (data.get("defenses") or {"none": {}}).items():
            for lo, hi in data.get("bins", [[1000, 2000]]):
                cell = out / method / dname / f"{lo}-{hi}ms"
                spec = AttackSpec(arch=data.get("arch", "ds1"), preset=data.get("preset", "tiny"),
                                  model=data.get("model", {}) or {}, corpus=list(corpus), min_dur=lo, max_dur=hi,
                                  batch_start=data.get("batch_start", 0), batch_end=data.get("batch_end", 4),
                                  batch_size=data.get("batch_size", 1), batch_stride=data.get("batch_stride", 1), victim_seed=data.get("victim_seed", 0),
                                  max_frames=data.get("max_frames"),
                                  crop_transcript=bool(data.get("crop_transcript", False)), defense=Defense(**(dkw or {})),
                                  local_steps=data.get("local_steps", 1), local_lr=data.get("local_lr", 1.0),
                                  attack=AttackConfig(**{**data.get("attack", {}), "method": method}), out=str(cell),
                                  plots=1)
                if progress:
                    progress(f"cell {method} / {dname} / {lo}-{hi} ms")
                run_attack(spec, progress, overwrite=overwrite)
                metrics = read_metrics(cell / "metrics.csv")
                spk = speaker_leakage([cell], corpus, spec.arch, frames=spec.max_frames)
                def mean(k, metrics=metrics):
                    return sum(float(r[k]) for r in metrics) / len(metrics)

                rows.append({"method": method, "defense": dname, "bin": f"{lo}-{hi}ms", "utterances": len(metrics),
                             "budget": mean("budget"), "mae_ratio": mean("mae_ratio"), "snr_db": mean("snr_db"),
                             "seconds": mean("seconds"),
                             "speaker_top1": spk["reconstructed"]["top1"], "speaker_top5": spk["reconstructed"]["top5"],
                             "clean_top1": spk["clean"]["top1"], "clean_top5": spk["clean"]["top5"],
                             "chance_top1": spk["chance"]["top1"], "chance_top5": spk["chance"]["top5"],
                             "transcript_cer": (mean("transcript_cer") if all(r.get("transcript_cer") for r in metrics)
                                                else "")})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.csv", buf.getvalue())
    return rows
