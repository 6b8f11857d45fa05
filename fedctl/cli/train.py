"""`fedctl train …`: federated training runs and their centralized baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedctl.cli.console import out, print_json, saved
from fedctl.cli.options import (
    ClientsOpt,
    ConfigOpt,
    DeviceOpt,
    FractionOpt,
    JsonOpt,
    OutDirOpt,
    ResumeOpt,
    RoundsOpt,
    SaveDeltasOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
    WorkersOpt,
    multi_value_command,
    parse_save_deltas,
)
from fedctl.cli.render import RunRenderer
from fedctl.errors import FedctlError

app = typer.Typer(help="Train models federatedly (or centrally, as a baseline).", no_args_is_help=True)

DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Text file, directory (wiki.train.raw / train.txt …) or 'wikitext-2'. Default: demo corpus."),
]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="tiny, pure_ssm_1_layer, pure_ssm_2_layer, pure_ssm_4_layer.")]
LocalUpdatesOpt = Annotated[int | None, typer.Option("--local-updates", help="Optimizer steps per client per round.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Client learning rate.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Sequences per step.")]
SeqLenOpt = Annotated[int | None, typer.Option("--seq-len", help="Tokens per sequence.")]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help="tokenizer.json or a HF tokenizer dir.")]


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
) -> None:
    from fedctl.tasks import recipe

    fed_flags = {**fed_flags, **parse_save_deltas(save_deltas)}

    if resume:
        given = [k for k, v in {**run_flags, **fed_flags, **task_flags}.items()
                 if v is not None and k not in ("out", "rounds", "workers")]
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
    else:
        exp = recipe.resolve(
            task_name, config,
            flags={"run": run_flags, "federation": fed_flags, "task": task_flags},
            sets=sets, central=central,
        )
    with RunRenderer(quiet=as_json) as render:
        outcome = recipe.train(exp, on_event=render, resume=resume)
    final = recipe.final_metrics(outcome.result)
    if as_json:
        print_json({"run_dir": str(outcome.run_dir), "rounds": outcome.result.rounds_done, "final": final,
                    "task": outcome.summary, "sample": outcome.sample})
        return
    if outcome.sample is not None:
        out.print(f"[bold]Sample:[/] {outcome.sample}", highlight=False)
    saved(outcome.run_dir, "run")


TrainCommand = multi_value_command("--save-deltas", "--target-modules")


@app.command("mamba", cls=TrainCommand, epilog="Examples:\n\n  fedctl train mamba\n\n  fedctl train mamba --config pure_ssm_2_layer --data wikitext-2 --rounds 50\n\n  fedctl train mamba --strategy fedavgm --set federation.strategy_args.server_momentum=0.9\n\n  fedctl train mamba --out runs/mamba --resume --rounds 20")
def mamba(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    fraction: FractionOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    data: DataOpt = None,
    preset: PresetOpt = None,
    local_updates: LocalUpdatesOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    seq_len: SeqLenOpt = None,
    tokenizer: TokenizerOpt = None,
    save_deltas: SaveDeltasOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Federated Mamba2 language model (transformers Mamba2ForCausalLM)."""
    _run(
        "mamba", config=config, sets=sets,
        run_flags={"seed": seed, "out": str(out_dir) if out_dir else None, "device": device, "workers": workers},
        fed_flags={"rounds": rounds, "clients": clients, "fraction": fraction, "strategy": strategy},
        task_flags={"data": data, "preset": preset, "local_updates": local_updates, "lr": lr,
                    "batch_size": batch_size, "seq_len": seq_len, "tokenizer": tokenizer},
        resume=resume, as_json=as_json, save_deltas=save_deltas,
    )


@app.command("central", cls=TrainCommand, epilog="Examples:\n\n  fedctl train central --task mamba\n\n  fedctl train central --task mamba --config pure_ssm_1_layer --data wikitext-2 --rounds 50")
def central(
    task: Annotated[str, typer.Option("--task", help="Workload: mamba, glue, hubert, distill.")] = "mamba",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    rounds: RoundsOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    data: DataOpt = None,
    full: Annotated[bool | None, typer.Option("--full/--lora", help="glue: full fine-tuning or LoRA.", show_default=False)] = None,
    save_deltas: SaveDeltasOpt = None,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Centralized baseline: the same engine with one client holding all the data."""
    task_flags: dict[str, Any] = {"data": data}
    if full is not None:
        task_flags["finetune"] = "full" if full else "lora"
    _run(
        task, config=config, sets=sets,
        run_flags={"seed": seed, "out": str(out_dir) if out_dir else None, "device": device, "workers": workers},
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


def _register_workload_commands() -> None:
    # Each workload's `train` command lives in its own module (fedctl/cli/train_<workload>.py) and
    # registers itself on `app`; a module appears only once its workload works.
    import importlib

    for name in ("lora", "hubert", "flower"):
        try:
            importlib.import_module(f"fedctl.cli.train_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fedctl.cli.train_{name}":
                raise


_register_workload_commands()
