"""`fedctl inspect …`: look inside checkpoints and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
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
    limit: Annotated[int, typer.Option("--limit", min=0, help="Tensors shown in the table (0 = all).")] = 40,
    as_json: JsonOpt = False,
) -> None:
    """Summary of a checkpoint: round, task, strategy, metrics, parameters, tensor table."""
    from fedctl.analysis.checkpoints import summarize_checkpoint

    info = summarize_checkpoint(path)
    if as_json:
        print_json(info)
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", escape(info["path"]))
    head.add_row("kind", info["kind"])
    for key in ("task", "strategy", "round"):
        if info.get(key) is not None:
            value = str(info[key])
            if key == "round" and info.get("rounds_planned"):
                value += f" of {info['rounds_planned']}"
            head.add_row(key, escape(value))
    if info.get("strategy_state"):
        head.add_row("server state", escape(", ".join(info["strategy_state"])))
    for key in ("last_fit", "last_eval"):
        if info.get(key):
            head.add_row(key.replace("_", " "), escape("  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info[key].items()
                if k not in ("failed",))))
    head.add_row("parameters", f"{info['num_parameters']:,} in {info['num_tensors']} tensors ({_human_bytes(info['bytes'])})")
    out.print(head)
    table = Table(show_edge=False, header_style="bold")
    for col, justify in (("tensor", "left"), ("shape", "right"), ("dtype", "left"), ("norm", "right")):
        table.add_column(col, justify=justify)
    rows = info["tensors"] if limit == 0 else info["tensors"][:limit]
    for r in rows:
        table.add_row(escape(r["name"]), "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                      "–" if r["norm"] is None else f"{r['norm']:.4g}")
    out.print(table)
    if len(rows) < len(info["tensors"]):
        out.print(f"[dim]… {len(info['tensors']) - len(rows)} more tensors (--limit 0 shows all)[/]")


@app.command("deltas", epilog="Examples:\n\n  fedctl inspect deltas runs/mamba-tiny\n\n  fedctl inspect deltas runs/mamba-tiny --entity client --client client_0 --json")
def deltas(
    run_dir: Annotated[Path, typer.Argument(help="Run directory trained with --save-deltas.")],
    entity: Annotated[str, typer.Option("--entity", help="server or client.")] = "server",
    client: Annotated[str | None, typer.Option("--client", help="Which client (entity client); default the first.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Singular values traced across rounds.")] = 5,
    max_matrices: Annotated[int, typer.Option("--max-matrices", min=0, help="Analyse at most N matrices (0 = all).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Heatmaps, singular-value evolution and effective ranks of saved parameter deltas."""
    from fedctl.analysis.runs import analyse_deltas

    result = analyse_deltas(run_dir, entity=entity, client=client, top_k=top_k, max_matrices=max_matrices)
    if as_json:
        print_json({k: v for k, v in result.items()} | {"matrices": [
            {k: v for k, v in m.items() if k != "heatmaps"} for m in result["matrices"]]})
        return
    table = Table(show_edge=False, header_style="bold",
                  title=f"{entity} deltas · rounds {result['rounds'][0]}–{result['rounds'][-1]}"
                  + (f" · {result['client']}" if result["client"] else ""))
    for col in ("matrix", "shape", "‖Δ‖ last", "σ1 last", "rank95 first", "rank95 last", "full rank"):
        table.add_column(col, justify="left" if col == "matrix" else "right", overflow="fold")
    for m in result["matrices"]:
        table.add_row(escape(m["name"]), "×".join(map(str, m["shape"])), f"{m['norms'][-1]:.4g}",
                      f"{m['top_singular_values'][-1][0]:.4g}" if m["top_singular_values"][-1] else "–",
                      str(m["rank95_per_round"][0]), str(m["rank95"]), str(len(m["final_spectrum"])))
    out.print(table)
    out.print(f"[green]✓[/] Saved {len(result['plots'])} plots to {escape(str(Path(result['plots'][0]).parent))}")


@app.command("run", epilog="Examples:\n\n  fedctl inspect run runs/central runs/fedavg runs/fedavgm\n\n  fedctl inspect run runs/a runs/b --metric val_loss --out cmp.png")
def run(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    metric: Annotated[str | None, typer.Option("--metric", help="Metric to plot (default val_ppl, else val_loss).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="PNG path (default FIRST_RUN/plots/runs_<metric>.png).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Curves of a metric against round and total local steps for several runs, and their final values."""
    from fedctl.analysis.runs import analyse_runs
    from fedctl.run.tracking import SWEEP_OWN

    # `runs/study/*` also matches the sweep folder's own record and tracker store: they are not runs
    run_dirs = [d for d in run_dirs if d.name not in SWEEP_OWN] or run_dirs
    result = analyse_runs(run_dirs, metric=metric, out=out_path)
    if as_json:
        print_json(result)
        return
    table = Table(show_edge=False, header_style="bold", title=escape(result["metric"]))
    for col in ("run", "rounds", "local steps", "final", "best"):
        table.add_column(col, justify="left" if col == "run" else "right", overflow="fold")
    for s in result["runs"]:
        table.add_row(escape(s["label"]), str(s["rounds"][-1]), str(s["total_steps"]), f"{s['final']:.4g}", f"{s['best']:.4g}")
    out.print(table)
    if result.get("groups"):
        groups = Table(show_edge=False, header_style="bold", title=f"{escape(result['metric'])}: mean ± std over seeds")
        for col in ("config", "runs", "rounds", "final mean ± std"):
            groups.add_column(col, justify="left" if col == "config" else "right", overflow="fold")
        for g in result["groups"]:
            groups.add_row(escape(g["label"]), str(g["n"]), str(g["rounds"][-1]),
                           f"{g['final_mean']:.4g} ± {g['final_std']:.2g}")
        out.print(groups)
    out.print(f"[green]✓[/] Saved {escape(result['plot'])}")
