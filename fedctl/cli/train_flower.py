"""`fedctl train flower-app`: write a Flower App that runs a fedctl experiment on SuperNodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedctl.cli.console import out, print_json, saved
from fedctl.cli.options import (
    ClientsOpt,
    ConfigOpt,
    JsonOpt,
    OutDirOpt,
    RoundsOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
)

AppDirOpt = Annotated[Path | None, typer.Option("--app", help="Flower App directory to write (default: RUN_DIR/flower-app).")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Workload when --config does not name one (default mamba).")]
PortOpt = Annotated[int, typer.Option("--superlink-port", help="Port of the SuperLink's HTTP APIs on 127.0.0.1.")]
NodePortOpt = Annotated[int, typer.Option("--supernode-port", help="Runtime API port of SuperNode 0 (node k: +k).")]


EPILOG = (
    "Examples:\n\n  fedctl train flower-app --config mamba_tiny --out runs/mamba-flower\n\n"
    "  fedctl train flower-app --config mamba_tiny --clients 2 --rounds 3 --app flower-app/\n\n"
    "  fedctl train flower-app --config ssm_study_fedfisher --set federation.clients=2")


def flower_app(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    task: TaskOpt = None,
    rounds: RoundsOpt = None,
    clients: ClientsOpt = None,
    strategy: StrategyOpt = None,
    seed: SeedOpt = None,
    out_dir: OutDirOpt = None,
    app_dir: AppDirOpt = None,
    superlink_port: PortOpt = 9092,
    supernode_port: NodePortOpt = 9094,
    as_json: JsonOpt = False,
) -> None:
    """Write a Flower App (ServerApp + ClientApp) for a fedctl config, and print how to run it."""
    from fedctl.flower import require_flwr

    require_flwr()
    from fedctl.core.config import load_yaml
    from fedctl.flower.project import write_flower_app
    from fedctl.run import recipe
    from fedctl.utils.templates import resolve_template

    if task is None:
        task = (load_yaml(resolve_template(config)).get("run") or {}).get("task") if config else None
    exp = recipe.resolve(
        task or "mamba", config,
        flags={"run": {"seed": seed, "out": str(out_dir) if out_dir else None},
               "federation": {"rounds": rounds, "clients": clients, "strategy": strategy}},
        sets=sets,
    )
    target = app_dir if app_dir is not None else recipe.run_dir_of(exp) / "flower-app"
    written = write_flower_app(exp, target, superlink_port=superlink_port, supernode_port=supernode_port)
    if as_json:
        print_json({"app_dir": str(written.app_dir), "config": str(written.config_path),
                    "run_dir": str(written.run_dir), "commands": written.commands})
        return
    out.print("Run each in its own terminal (SuperLink first, `flwr run` last):\n", highlight=False)
    for line in written.commands:
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    out.print()
    saved(written.app_dir, "Flower App")
