"""Option aliases shared by every command, so flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (see `templates/`); flags override it.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: --set section.key=value (repeatable)."),
]
RoundsOpt = Annotated[int | None, typer.Option("--rounds", help="Federated rounds.")]
ClientsOpt = Annotated[int | None, typer.Option("--clients", help="Number of clients the data is split across.")]
FractionOpt = Annotated[
    float | None, typer.Option("--fraction", help="Fraction of clients sampled per round, in (0, 1].")
]
StrategyOpt = Annotated[
    str | None, typer.Option("--strategy", help="Aggregation strategy, e.g. fedavg, fedavgm, fedadam, krum.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (sampling, init, data order).")]
OutDirOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]
