"""`fedctl attack sweep --config attack_sweep_tiny`: method × defence × duration bin, one resumable attack
folder per cell (`out/<method>/<defence>/<bin>/`), then one table: MAE ratio to the random start, SNR and
speaker top-1/top-5 on the reconstructions (with clean and chance alongside), and the recovered transcripts'
CER when `attack: {transcripts: false}`. Written to `out/sweep.csv`."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from fedctl.attacks.attack import AttackConfig
from fedctl.attacks.runner import (
    AttackSpec,
    attack_spec,
    legacy_attack_folder,
    read_metrics,
    run_attack,
    speaker_leakage,
)
from fedctl.core.config import apply_mapping, load_yaml, unknown_key_error
from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.utils.io import write_text

SPEC_KEYS = ("arch", "preset", "model", "batch_start", "batch_end", "batch_size", "batch_stride", "max_frames",
             "crop_transcript", "victim_seed", "local_steps", "local_lr", "attack")  # AttackSpec keys a sweep sets
CLIENT_KEYS = ("local_steps", "local_lr")  # AttackConfig fields that describe the client: top-level keys only
SWEEP_COLUMNS = ["method", "defense", "bin", "utterances", "budget", "mae_ratio", "snr_db", "seconds",
                 "speaker_top1", "speaker_top5", "clean_top1", "clean_top5", "chance_top1", "chance_top5",
                 "transcript_cer", "prior_top1", "prior_top5"]  # transcript_cer: empty unless attack.transcripts is false


@dataclass
class SweepGrid:
    """The sweep's axes; every other key of the file is an AttackSpec setting shared by all cells."""

    bins: list[list[int]] = field(default_factory=lambda: [[1000, 2000]])  # duration bins, ms [min, max)
    methods: list[str] = field(default_factory=lambda: ["gradient"])
    defenses: dict = field(default_factory=lambda: {"none": {}})  # name → Defense settings


@dataclass
class Cell:
    method: str
    defense: str
    bin: tuple[int, int]
    spec: AttackSpec


def load_sweep(path: Path) -> dict:
    """The sweep file, strictly: YAML as the training config reads it (UTF-8, syntax, a mapping), then every cell
    through `attack_spec` (the attack's typed settings: unknown keys, types, ranges), so that a bad value is
    one error naming the file and the key before any cell runs."""
    data = load_yaml(path)
    try:
        sweep_cells(data, [], Path("."))
    except FedctlError as exc:  # the config checks' examples say `--set key=value`: a sweep file says `key: value`
        hint = re.sub(r"--set ([^=\s]+)=(\S*)", r"\1: \2", exc.hint or "")
        raise FedctlError(f"{path}: {exc.message}", hint) from None
    return data


def sweep_cells(data: dict, corpus: list[str], out: Path) -> list[Cell]:
    """method × defence × bin: one checked AttackSpec per cell, writing to `out/<method>/<defence>/<bin>/`."""
    grid = SweepGrid()
    common = {}
    for key, value in data.items():
        if key in {f.name for f in fields(SweepGrid)}:
            continue
        if key not in SPEC_KEYS:
            raise unknown_key_error(str(key), sorted([*SPEC_KEYS, *(f.name for f in fields(SweepGrid))]), "")
        common[key] = value
    apply_mapping(grid, {k: data[k] for k in (f.name for f in fields(SweepGrid)) if k in data}, "")
    attack = common.pop("attack", None) or {}
    if not isinstance(attack, dict):
        raise FedctlError("config key 'attack' must be a mapping", "e.g. attack: {restarts: 2, max_iter: 200}")
    attack_keys = {f.name for f in fields(AttackConfig)} - set(CLIENT_KEYS) - {"method"}
    bad = sorted(str(k) for k in set(attack) - attack_keys)
    if bad:
        hint = f"valid: {', '.join(sorted(attack_keys))}"
        if set(bad) & set(CLIENT_KEYS):
            hint = "local_steps and local_lr describe the client: set them at the top level of the sweep"
        elif "method" in bad:
            hint = "the methods are an axis of the sweep: methods: [gradient, hfgm]"
        raise FedctlError(f"unknown attack setting(s): {', '.join(bad)}", hint)
    for i, pair in enumerate(grid.bins):
        if len(pair) != 2:
            raise FedctlError(f"config key 'bins[{i}]' = {pair} is not a [min, max) pair of milliseconds",
                              "e.g. bins: [[1000, 2000], [2000, 3000]]")
    cells = []
    for j, method in enumerate(grid.methods):
        for dname, dkw in grid.defenses.items():
            if dkw is not None and not isinstance(dkw, dict):
                raise FedctlError(f"config key 'defenses.{dname}' must be a mapping",
                                  "e.g. defenses: {none: {}, dp: {clip: 1.0, noise: 0.1}}")
            for i, (lo, hi) in enumerate(grid.bins):
                def label(key: str, i=i, j=j, dname=dname) -> str:
                    if key in ("min_dur", "max_dur"):
                        return f"bins[{i}]"
                    if key == "attack.method":
                        return f"methods[{j}]"
                    return f"defenses.{dname}.{key[8:]}" if key.startswith("defense.") else key

                spec = attack_spec({"batch_end": 4, **common, "corpus": list(corpus), "min_dur": lo, "max_dur": hi,
                                    "defense": dkw or {}, "attack": {**attack, "method": method},
                                    "out": str(out / method / str(dname) / f"{lo}-{hi}ms"), "plots": 1}, label)
                cells.append(Cell(method, str(dname), (lo, hi), spec))
    return cells


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
    for c in sweep_cells(data, corpus, out):  # every cell checked before the first runs
        cell = Path(c.spec.out)
        if progress:
            progress(f"cell {c.method} / {c.defense} / {c.bin[0]}-{c.bin[1]} ms")
        run_attack(c.spec, progress, overwrite=overwrite)
        metrics = read_metrics(cell / "metrics.csv")
        spk = speaker_leakage([cell], corpus, c.spec.arch, frames=c.spec.max_frames)

        def mean(k, metrics=metrics):
            return sum(float(r[k]) for r in metrics) / len(metrics)

        rows.append({"method": c.method, "defense": c.defense, "bin": f"{c.bin[0]}-{c.bin[1]}ms",
                     "utterances": len(metrics), "budget": mean("budget"), "mae_ratio": mean("mae_ratio"),
                     "snr_db": mean("snr_db"), "seconds": mean("seconds"),
                     "speaker_top1": spk["reconstructed"]["top1"], "speaker_top5": spk["reconstructed"]["top5"],
                     "clean_top1": spk["clean"]["top1"], "clean_top5": spk["clean"]["top5"],
                     "chance_top1": spk["chance"]["top1"], "chance_top5": spk["chance"]["top5"],
                     "prior_top1": spk["prior"]["top1"], "prior_top5": spk["prior"]["top5"],
                     "transcript_cer": (mean("transcript_cer") if all(r.get("transcript_cer") for r in metrics)
                                        else "")})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.csv", buf.getvalue())
    return rows
