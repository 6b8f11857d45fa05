"""`fedctl inspect …`: look inside checkpoints and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedctl.cli.console import out, print_json
from fedctl.cli.options import JsonOpt

app = typer.Typer(help="Inspect checkpoints, parameter deltas and run curves.", no_args_is_help=True)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


@app.command("ckpt", epilog="Examples:\n\n  fedctl inspect ckpt runs/mamba-tiny/checkpoints/round_012.pt\n\n  fedctl inspect ckpt runs/mamba-tiny/final/hf/model.safetensors --json")
def ckpt(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt), a .safetensors file, or a run directory.")],
    limit: Annotated[int, typer.Option("--limit", help="Tensors shown in the table (0 = all).")] = 40,
    as_json: JsonOpt = False,
) -> None:
    """Summary of a checkpoint: round, task, strategy, metrics, parameters, tensor table."""
    from fedctl.core.inspect import summarize_checkpoint

    info = summarize_checkpoint(path)
    if as_json:
        print_json(info)
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", info["path"])
    head.add_row("kind", info["kind"])
    for key in ("task", "strategy", "round"):
        if info.get(key) is not None:
            value = str(info[key])
            if key == "round" and info.get("rounds_planned"):
                value += f" of {info['rounds_planned']}"
            head.add_row(key, value)
    if info.get("strategy_state"):
        head.add_row("server state", ", ".join(info["strategy_state"]))
    for key in ("last_fit", "last_eval"):
        if info.get(key):
            head.add_row(key.replace("_", " "), "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info[key].items()
                if k not in ("failed",)))
    head.add_row("parameters", f"{info['num_parameters']:,} in {info['num_tensors']} tensors ({_human_bytes(info['bytes'])})")
    out.print(head)
    table = Table(show_edge=False, header_style="bold")
    for col, justify in (("tensor", "left"), ("shape", "right"), ("dtype", "left"), ("norm", "right")):
        table.add_column(col, justify=justify)
    rows = info["tensors"] if limit == 0 else info["tensors"][:limit]
    for r in rows:
        table.add_row(r["name"], "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                      "–" if r["norm"] is None else f"{r['norm']:.4g}")
    out.print(table)
    if len(rows) < len(info["tensors"]):
        out.print(f"[dim]… {len(info['tensors']) - len(rows)} more tensors (--limit 0 shows all)[/]")
