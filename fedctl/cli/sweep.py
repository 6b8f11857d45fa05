"""`fedctl sweep`: one template over seeds and a grid of settings, one run after another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedctl.cli.console import err, out, print_json
from fedctl.cli.options import JsonOpt, TrackOpt, complete_config, multi_value_command

EPILOG = """Examples:

  fedctl sweep --config mamba_tiny --seeds 0 1 2

  fedctl sweep --config mamba_tiny --seeds 0 1 2 --grid federation.strategy=fedavg,fedavgm --out runs/study

  fedctl inspect run runs/study/*      # mean ± std bands per config
"""

Command = multi_value_command("--seeds", "--grid", "--set")


def command(
    config: Annotated[str, typer.Option("--config", help="Template: a YAML path or a shipped template name.",
                                        autocompletion=complete_config)],
    seeds: Annotated[list[int], typer.Option("--seeds", help="Seeds, e.g. --seeds 0 1 2.")],
    grid: Annotated[list[str] | None, typer.Option("--grid", help="section.key=a,b (several allowed): every "
                                                   "combination is run with every seed.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder of the runs (default runs/sweep-<template>).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="section.key=value for every run.")] = None,
    track: TrackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a template for several seeds (and a grid of settings); finished runs are skipped."""
    from fedctl.cli.render import RunRenderer
    from fedctl.core.events import Message
    from fedctl.run.sweep import run_sweep, sweep_root
    from fedctl.run.tracking import Tracking

    def on_event(event):
        if isinstance(event, Message):
            err.print(f"[bold]{escape(event.text)}[/]", highlight=False)
        else:
            render(event)
            trackers(event)

    root = sweep_root(config, out_dir)
    # one tracker group per sweep: W&B group and MLflow experiment named after its folder, one MLflow store there
    with RunRenderer(quiet=True) as render, Tracking(group=root.name, store=root) as trackers:
        runs = run_sweep(config, seeds, grid or [], out_dir, sets, on_event=on_event, track=track)
    if as_json:
        print_json([{"name": r.name, "run_dir": str(r.run_dir), "status": r.status} for r in runs])
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("run")
    table.add_column("status")
    for r in runs:
        table.add_row(escape(str(r.run_dir)), r.status)
    out.print(table)
