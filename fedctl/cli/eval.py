"""`fedctl eval TARGET`: a saved model's validation metrics, the same ones training logged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedctl.cli.console import out, print_json
from fedctl.cli.options import JsonOpt
from fedctl.cli.render import print_samples

EPILOG = """Examples:

  fedctl eval runs/mamba-tiny

  fedctl eval runs/mamba-tiny/checkpoints/best.pt --clients

  fedctl eval runs/lora-demo/final/hf --json

  fedctl eval fused/ --config runs/lora-demo --base path/to/base-model
"""


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def command(
    target: Annotated[Path, typer.Argument(help="A run directory, a checkpoint (round_NNN.pt, best.pt), a final/ "
                                                "export, or a peft adapter folder.")],
    config: Annotated[Path | None, typer.Option("--config", help="The run (directory or config.yaml) whose config "
                                                "rebuilds the task, for a folder outside its run (e.g. a merged adapter).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model folder for an adapter whose config names "
                                             "no usable one.")] = None,
    clients: Annotated[bool, typer.Option("--clients", help="Also evaluate on each client's held-out split.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: the run's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a saved model on the validation split (and each client's held-out split)."""
    from fedctl.run.evaluate import evaluate_target

    res = evaluate_target(target, config=config, base=base, clients=clients, device=device)
    if as_json:
        print_json({"target": res.target, "kind": res.kind, "task": res.task, "round": res.round,
                    "metrics": res.metrics, "clients": res.clients, "clients_aggregate": res.clients_aggregate,
                    "samples": res.samples})
        return
    where = f" (round {res.round})" if res.round is not None else ""
    table = Table(title=None, show_edge=False, header_style="bold")
    names = list(res.metrics)
    table.add_column("split")
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row("validation", *[_fmt(res.metrics.get(k)) for k in names])
    for cid, m in res.clients.items():
        table.add_row(escape(cid), *[_fmt(m.get(k, "–")) for k in names])
    if res.clients_aggregate:
        agg = res.clients_aggregate
        table.add_row(f"clients ({agg['aggregation']})", *[_fmt(agg.get(k, "–")) for k in names])
    out.print(f"[bold]{res.task}[/] · {res.kind} {escape(res.target)}{where}", highlight=False)
    out.print(table)
    print_samples(res.samples)
