"""Multi-seed, multi-setting studies: `fedctl sweep --config TEMPLATE --seeds 0 1 2 --grid key=a,b`.

Every combination of the grid's values and the seeds is one run of the template, trained one after another
into `OUT/<template>-<key=value…>-seed<s>`; a run that already finished is skipped, one that stopped part-way
is resumed, so a killed sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from fedctl.core.config import load_yaml
from fedctl.core.engine import EventSink
from fedctl.core.events import Message
from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.utils.templates import resolve_template


@dataclass
class SweepRun:
    name: str
    run_dir: Path
    sets: list[str]  # the --set overrides of this combination (grid values, run.seed, run.out)
    status: str = "planned"  # planned, skipped (finished before), resumed, trained


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """`section.key=a,b` items as (key, values)."""
    out = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or "." not in key or not values:
            raise FedctlError(f"--grid {item!r} is not section.key=value1,value2",
                              "e.g. --grid federation.strategy=fedavg,fedavgm")
        out.append((key.strip(), [v.strip() for v in values.split(",") if v.strip()]))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def plan_sweep(config: str | Path, seeds: list[int], grid: list[str], out: str | Path | None = None,
               sets: list[str] | None = None) -> tuple[str, list[SweepRun]]:
    """(task name, the runs in order): grid combinations outermost, seeds innermost."""
    if not seeds:
        raise FedctlError("--seeds needs at least one seed", "e.g. --seeds 0 1 2")
    path = resolve_template(config)
    data = load_yaml(path)
    task = str(((data.get("run") or {}).get("task")) or "mamba")
    stem = Path(path).stem
    root = sweep_root(path, out)
    axes = parse_grid(grid)
    runs = []
    for values in itertools.product(*[vals for _, vals in axes]) if axes else [()]:
        setting = [f"{key}={value}" for (key, _), value in zip(axes, values)]
        label = "-".join(_slug(f"{key.rsplit('.', 1)[-1]}={value}") for (key, _), value in zip(axes, values))
        for seed in seeds:
            name = "-".join(p for p in (stem, label, f"seed{seed}") if p)
            run_dir = root / name
            runs.append(SweepRun(name, run_dir, [*(sets or []), *setting, f"run.seed={seed}", f"run.name={name}",
                                                 f"run.out={run_dir}"]))
    return task, runs


def finished(run_dir: Path, rounds: int) -> bool:
    rd = RunDir(run_dir)
    ckpts = rd.list_checkpoints()
    return bool(ckpts) and int(ckpts[-1].stem.split("_")[1]) >= rounds


def sweep_root(config: str | Path, out: str | Path | None = None) -> Path:
    """The sweep's folder: `out`, or runs/sweep-<template>."""
    return Path(out) if out is not None else Path("runs") / f"sweep-{Path(resolve_template(config)).stem}"


def run_sweep(config: str | Path, seeds: list[int], grid: list[str], out: str | Path | None = None,
              sets: list[str] | None = None, on_event: EventSink | None = None,
              track: list[str] | None = None) -> list[SweepRun]:
    """Train every combination one after another (see the module docstring); returns them with their status.
    `track`: trackers for every run, besides those the template names (run.track)."""
    from fedctl.run import recipe, tracking
    from fedctl.utils import record

    emit = on_event or (lambda e: None)
    task, runs = plan_sweep(config, seeds, grid, out, sets)
    exps = [recipe.resolve(task, config, sets=r.sets) for r in runs]  # every combination checked before training
    for exp in exps:
        exp.run.track = tracking.check([*exp.run.track, *(track or [])], "--track")
    record.attach(sweep_root(config, out))  # the sweep's own run.log and meta.json, beside its runs
    for i, (r, exp) in enumerate(zip(runs, exps), 1):
        if finished(r.run_dir, exp.federation.rounds):
            r.status = "skipped"
            emit(Message(f"[{i}/{len(runs)}] {r.name}: finished before, skipped"))
            continue
        RunDir(r.run_dir).check_unlocked()  # another sweep is training it: say so, not "resuming"
        resume = RunDir(r.run_dir).has_checkpoints()
        emit(Message(f"[{i}/{len(runs)}] {r.name}" + (" (resuming)" if resume else "")))
        recipe.train(exp, on_event=on_event, resume=resume)
        r.status = "resumed" if resume else "trained"
    return runs


def _config_key(run_dir: Path) -> str:
    """The run's resolved config without run.seed/name/out (and where it ran): runs equal here form a group."""
    import json

    cfg = load_yaml(Path(run_dir) / "config.yaml") if (Path(run_dir) / "config.yaml").is_file() else {}
    run = {k: v for k, v in (cfg.get("run") or {}).items() if k not in ("seed", "name", "out", "device", "threads")}
    return json.dumps({**cfg, "run": run}, sort_keys=True, default=str)


def group_runs(run_dirs: list[Path]) -> list[list[Path]]:
    """Run directories grouped by config (all keys but run.seed/name/out), in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for d in run_dirs:
        groups.setdefault(_config_key(d), []).append(Path(d))
    return list(groups.values())

