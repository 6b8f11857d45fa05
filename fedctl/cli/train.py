"""`fedctl train …`: federated training runs and their centralized baselines."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from fedctl.cli.console import out, print_json, saved
from fedctl.cli.options import (
    BackendOpt,
    ClientsOpt,
    ConfigOpt,
    DeviceOpt,
    FederationOpt,
    FractionOpt,
    JsonOpt,
    OutDirOpt,
    ResumeOpt,
    RoundsOpt,
    SaveDeltasOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
    TrackOpt,
    WholeNumber,
    WorkersOpt,
    multi_value_command,
    parse_save_deltas,
)
from fedctl.cli.render import RunRenderer, print_samples
from fedctl.core.config import Flag
from fedctl.errors import FedctlError
from fedctl.run.registry import Workload

app = typer.Typer(help="Train models federatedly (or centrally, as a baseline).", no_args_is_help=True)

def _run(
    task_name: str,
    *,
    config: Path | None,
    sets: list[str] | None,
    run_flags: dict[str, Any],
    fed_flags: dict[str, Any],
    task_flags: dict[str, Any],
    resume: bool,
    as_json: bool,
    central: bool = False,
    save_deltas: list[str] | None = None,
    backend: str = "local",
    federation: str | None = None,
) -> None:
    from fedctl.run import recipe

    if backend not in ("local", "flower"):
        raise FedctlError(f"--backend {backend} is unknown", "use --backend local or --backend flower")
    if backend == "flower" and not federation:
        raise FedctlError("--backend flower needs --federation NAME",
                          "name a SuperLink connection of Flower's config.toml, e.g. --federation my-cluster")
    if federation and backend != "flower":
        raise FedctlError("--federation is only used with --backend flower", "add --backend flower")

    fed_flags = {**fed_flags, **parse_save_deltas(save_deltas)}

    if resume:
        given = [k for k, v in {**run_flags, **fed_flags, **task_flags}.items()
                 if v is not None and k not in ("out", "rounds", "workers", "track")]
        if given or config or sets:
            raise FedctlError(
                "--resume takes the config from the run's config.yaml; only --rounds (and --workers) may change",
                f"drop {', '.join('--' + g.replace('_', '-') for g in given) or '--config/--set'} or start a new run",
            )
        if run_flags.get("out") is None:
            raise FedctlError("--resume needs --out RUN_DIR", "pass the run directory to continue, e.g. --out runs/mamba")
        exp = recipe.load_run_config(Path(run_flags["out"]), fed_flags.get("rounds"))
        if run_flags.get("workers") is not None:  # where clients train never changes the results
            exp.run.workers = run_flags["workers"]
        if run_flags.get("track"):  # nor what watches it: a resumed run may add a tracker
            from fedctl.run import tracking

            exp.run.track = tracking.check([*exp.run.track, *run_flags["track"]], "--track")
    else:
        exp = recipe.resolve(
            task_name, config,
            flags={"run": run_flags, "federation": fed_flags, "task": task_flags},
            sets=sets, central=central,
        )
    if backend == "flower":
        _run_flower(exp, federation, resume=resume, as_json=as_json)
        return
    from fedctl.run.tracking import Tracking, fan_out

    with RunRenderer(quiet=as_json) as render, Tracking() as track:
        outcome = recipe.train(exp, on_event=fan_out(render, track), resume=resume)
    final = recipe.final_metrics(outcome.result)
    if as_json:
        print_json({"run_dir": str(outcome.run_dir), "rounds": outcome.result.rounds_done, "final": final,
                    "task": outcome.summary, "sample": outcome.sample})
        return
    print_samples(final.get("samples"))
    if outcome.sample is not None:
        out.print(f"[bold]Sample:[/] {outcome.sample}", highlight=False)
    saved(outcome.run_dir, "run")


def _run_flower(exp, federation: str, *, resume: bool, as_json: bool) -> None:
    from fedctl.core.events import RoundFinished, RunFinished
    from fedctl.flower import require_flwr

    require_flwr()
    from fedctl.flower.backend import run_on_flower
    from fedctl.run.tracking import Tracking

    rounds: list[dict[str, Any]] = []
    done: list[int] = []
    with RunRenderer(quiet=as_json) as render, Tracking() as track:
        def on_event(event: object) -> None:
            if isinstance(event, RoundFinished):
                rounds.append(event.metrics)
            elif isinstance(event, RunFinished):
                done.append(event.rounds_done)
            render(event)
            track(event)

        run_dir = run_on_flower(exp, federation, resume=resume, on_event=on_event)
    if as_json:
        print_json({"run_dir": str(run_dir), "rounds": done[-1], "final": rounds[-1] if rounds else {},
                    "backend": "flower", "federation": federation})
        return
    print_samples(rounds[-1].get("samples") if rounds else None)
    saved(run_dir, "run")


TrainCommand = multi_value_command("--save-deltas", "--target-modules")

# The flags every workload command shares, as (config key, parameter name, Annotated type).
SHARED = (
    ("federation.rounds", "rounds", RoundsOpt),
    ("federation.clients", "clients", ClientsOpt),
    ("federation.fraction", "fraction", FractionOpt),
    ("federation.strategy", "strategy", StrategyOpt),
    ("run.seed", "seed", SeedOpt),
    ("run.out", "out_dir", OutDirOpt),
    ("run.device", "device", DeviceOpt),
    ("run.workers", "workers", WorkersOpt),
    ("run.track", "track", TrackOpt),
)


def _annotation(flag: Flag) -> Any:
    """The Typer annotation of a workload flag (all default to None: unset flags leave the config alone)."""
    if flag.type is bool and flag.const is not None:
        return Annotated[bool, typer.Option(flag.flag, help=flag.help)]
    if flag.type is bool:
        name = flag.flag.removeprefix("--")
        return Annotated[bool | None, typer.Option(f"{flag.flag}/--no-{name}", help=flag.help, show_default=False)]
    if flag.type is list:
        return Annotated[list[str] | None, typer.Option(flag.flag, help=flag.help)]
    if flag.type is int:  # 1e3 is a whole number too
        return Annotated[int | None, typer.Option(flag.flag, click_type=WholeNumber(), help=flag.help)]
    return Annotated[flag.type | None, typer.Option(flag.flag, help=flag.help)]


def _flag_value(flag: Flag, value: Any) -> Any:
    if flag.type is bool and flag.const is not None:
        return flag.const if value else None
    if flag.type is list:
        return value or None
    return value


def workload_command(workload: Workload) -> None:
    """Register `fedctl train <command>` for a workload: shared flags, its own flags, --set/--config/--resume."""
    flags = workload.flags
    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=ConfigOpt, default=None),
        inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=SetOpt, default=None),
        *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=opt, default=None) for _, name, opt in SHARED),
        *(inspect.Parameter(f"w_{i}", inspect.Parameter.KEYWORD_ONLY, annotation=_annotation(f),
                            default=False if (f.type is bool and f.const is not None) else None)
          for i, f in enumerate(flags)),
        inspect.Parameter("save_deltas", inspect.Parameter.KEYWORD_ONLY, annotation=SaveDeltasOpt, default=None),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=ResumeOpt, default=False),
        inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, annotation=BackendOpt, default="local"),
        inspect.Parameter("federation", inspect.Parameter.KEYWORD_ONLY, annotation=FederationOpt, default=None),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=JsonOpt, default=False),
    ]

    def command(**kwargs: Any) -> None:
        values: dict[str, Any] = {key: kwargs[name] for key, name, _ in SHARED}
        if values["run.out"] is not None:
            values["run.out"] = str(values["run.out"])
        for i, f in enumerate(flags):
            values[f.key] = _flag_value(f, kwargs[f"w_{i}"])
        values = workload.adjust_flags(values, config_given=kwargs["config"] is not None, resume=kwargs["resume"])
        sections: dict[str, dict[str, Any]] = {"run": {}, "federation": {}, "task": {}}
        for key, value in values.items():
            section, name = key.split(".", 1)
            sections[section][name] = value
        _run(workload.name, config=kwargs["config"], sets=kwargs["sets"], run_flags=sections["run"],
             fed_flags=sections["federation"], task_flags=sections["task"], resume=kwargs["resume"],
             as_json=kwargs["as_json"], save_deltas=kwargs["save_deltas"], backend=kwargs["backend"],
             federation=kwargs["federation"])

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = workload.summary
    epilog = "Examples:\n\n" + "\n\n".join(f"  {e}" for e in workload.examples)
    app.command(workload.command, cls=TrainCommand, epilog=epilog)(command)


@app.command("central", cls=TrainCommand, epilog="Examples:\n\n  fedctl train central --task mamba\n\n  fedctl train central --task mamba --config pure_ssm_1_layer --data wikitext-2 --rounds 50")
def central(
    task: Annotated[str, typer.Option("--task", help="Workload: mamba, glue, hubert, distill, asr, downstream.")] = "mamba",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    rounds: RoundsOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    data: Annotated[str | None, typer.Option("--data", help="The workload's data (mamba: text; see its command).")] = None,
    full: Annotated[bool | None, typer.Option("--full/--lora", help="glue: full fine-tuning or LoRA.", show_default=False)] = None,
    save_deltas: SaveDeltasOpt = None,
    track: TrackOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Centralized baseline: the same engine with one client holding all the data."""
    task_flags: dict[str, Any] = {"data": data}
    if full is not None:
        task_flags["finetune"] = "full" if full else "lora"
    _run(
        task, config=config, sets=sets,
        run_flags={"seed": seed, "out": str(out_dir) if out_dir else None, "device": device, "workers": workers,
                   "track": track or None},
        fed_flags={"rounds": rounds},
        task_flags=task_flags,
        resume=resume, as_json=as_json, central=True, save_deltas=save_deltas,
    )


@app.command("templates")
def templates(as_json: JsonOpt = False) -> None:
    """List the shipped config templates and the command each one runs."""
    from rich.table import Table

    from fedctl.utils.templates import list_templates

    rows = []
    for path in list_templates():
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        rows.append({"name": path.stem, "command": first.lstrip("# ").strip(), "path": str(path)})
    if as_json:
        print_json(rows)
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("template")
    table.add_column("runs with")
    for row in rows:
        table.add_row(row["name"], row["command"])
    out.print(table)


def _register_commands() -> None:
    from fedctl.run.registry import WORKLOADS

    for workload in WORKLOADS.values():
        workload_command(workload)
    from fedctl.cli import train_flower

    app.command("flower-app", epilog=train_flower.EPILOG)(train_flower.flower_app)
    app.command("flower-node", epilog=train_flower.NODE_EPILOG)(train_flower.flower_node)
    app.command("flower-certs", epilog=train_flower.CERTS_EPILOG)(train_flower.flower_certs)


_register_commands()
