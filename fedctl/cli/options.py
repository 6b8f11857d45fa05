"""Option aliases shared by every command, so flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperCommand


class WholeNumber(click.ParamType):
    """An int flag that also takes an integral number in scientific notation (`--rounds 1e3`)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a valid integer", param, ctx)
        if not number.is_integer():
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(number)

def complete_config(incomplete: str) -> list[str]:
    """Shell completion of --config: the shipped template names, then YAML files and folders on disk."""
    from fedctl.utils.templates import list_templates

    names = [p.stem for p in list_templates() if p.stem.startswith(incomplete)]
    base = Path(incomplete).parent if "/" in incomplete else Path()
    files = sorted(str(p) + ("/" if p.is_dir() else "") for p in base.glob(Path(incomplete).name + "*")
                   if p.is_dir() or p.suffix in (".yaml", ".yml"))
    return names + files


def complete_strategy(incomplete: str) -> list[str]:
    """Shell completion of --strategy: the registered strategy names."""
    from fedctl.core.strategies import STRATEGIES

    return [name for name in STRATEGIES if name.startswith(incomplete)]


def complete_tracker(incomplete: str) -> list[str]:
    from fedctl.run.tracking import TRACKERS

    return [name for name in TRACKERS if name.startswith(incomplete)]


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (see `templates/`); flags override it.",
                              autocompletion=complete_config)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: --set section.key=value (repeatable)."),
]
RoundsOpt = Annotated[int | None, typer.Option("--rounds", click_type=WholeNumber(), help="Federated rounds.")]
ClientsOpt = Annotated[
    int | None, typer.Option("--clients", click_type=WholeNumber(), help="Number of clients the data is split across.")
]
FractionOpt = Annotated[
    float | None, typer.Option("--fraction", help="Fraction of clients sampled per round, in (0, 1].")
]
StrategyOpt = Annotated[
    str | None,
    typer.Option("--strategy", help="Aggregation strategy: fedavg fedavgm fedadam fedyogi fedadagrad fedprox fedmedian "
                 "fedtrimmedavg krum bulyan qfedavg fedentropy fedfisher scaffold fednova fedbn fedper. fedavgm uses "
                 "server_momentum 0.9 unless set (Flower's default is 0, which is FedAvg).",
                 autocompletion=complete_strategy),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", click_type=WholeNumber(), help="Random seed (sampling, init, data order).")
]
OutDirOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace --out if it holds an earlier fedctl output (never anything else)."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Client worker processes: 0 = auto (one per core), 1 = sequential, N."),
]
TrackOpt = Annotated[
    list[str] | None,
    typer.Option("--track", help="Log to an experiment tracker, offline, inside the run folder: tensorboard, wandb "
                                 "or mlflow (repeatable; needs pip install 'fedctl[tracking]').",
                 autocompletion=complete_tracker),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", help="local: this machine (in-process or worker processes); flower: clients on Flower "
                                   "SuperNodes through --federation."),
]
FederationOpt = Annotated[
    str | None,
    typer.Option("--federation", help="--backend flower: the SuperLink connection [superlink.NAME] in Flower's "
                                      "config.toml ($FLWR_HOME or ~/.flwr)."),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]
SaveDeltasOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--save-deltas",
        help="Save parameter deltas: every=N and entity=server|clients|all (e.g. --save-deltas every=5 "
        "--save-deltas entity=clients, or 'every=5,entity=clients').",
    ),
]


def parse_save_deltas(items: list[str] | None) -> dict[str, object]:
    """--save-deltas every=5 entity=clients → federation keys."""
    from fedctl.errors import FedctlError

    out: dict[str, object] = {}
    for item in items or []:
        for part in item.replace(",", " ").split():
            key, _, value = part.partition("=")
            if key == "every" and value.isdigit():
                out["save_deltas_every"] = int(value)
            elif key == "entity" and value:
                out["save_deltas_entity"] = value
            else:
                raise FedctlError(f"--save-deltas '{part}' is not every=N or entity=server|clients|all",
                                  "e.g. --save-deltas every=5 --save-deltas entity=clients")
    if out and "save_deltas_every" not in out:
        out["save_deltas_every"] = 1
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class MultiValueCommand(TyperCommand):
    """Lets options in `multi_value` take several values after one flag (`--adapters a/ b/ c/`):
    click options take one value per flag, so bare tokens after such a flag are rewritten to
    `--adapters a/ --adapters b/ --adapters c/`. Misspelt options still fail as usual."""

    multi_value: tuple[str, ...] = ()

    def parse_args(self, ctx, args):
        expanded: list[str] = []
        current, awaiting = None, False
        for i, token in enumerate(args):
            if token == "--":
                expanded += args[i:]
                break
            if token.startswith("-") and not _is_number(token):
                name = token.split("=", 1)[0]
                current = name if name in self.multi_value else None
                awaiting = current is not None and "=" not in token
                expanded.append(token)
            elif current and not awaiting:
                expanded += [current, token]
            else:
                expanded.append(token)
                awaiting = False
        return super().parse_args(ctx, expanded)


def multi_value_command(*flags: str) -> type[MultiValueCommand]:
    """A Typer command class whose `flags` accept several values each."""
    return type("MultiValue", (MultiValueCommand,), {"multi_value": tuple(flags)})
