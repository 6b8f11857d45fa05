"""Analyses behind `fedctl inspect deltas` and `fedctl inspect run`.

Each analysis computes its numbers once, draws every figure from those same arrays, and writes
them beside the PNG as JSON: what is plotted is what is saved (and what tests read back).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_path, write_json

_ROUND = re.compile(r"round_(\d+)")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


# ------------------------------------------------------------------------------------------ deltas


def delta_files(run_dir: Path, entity: str, client: str | None = None) -> tuple[list[tuple[int, Path]], str | None]:
    """(round, file) pairs of saved deltas for an entity, oldest first; and the client used."""
    base = RunDir(run_dir).deltas_dir
    if entity == "server":
        files = [(int(m.group(1)), p) for p in sorted((base / "server").glob("round_*.safetensors"))
                 if (m := _ROUND.match(p.name))]
    elif entity == "client":
        rounds = [r for r in sorted((base / "clients").glob("round_*")) if _ROUND.match(r.name) and r.is_dir()] \
            if (base / "clients").is_dir() else []
        clients = sorted({p.stem for r in rounds for p in r.glob("*.safetensors")})
        if client is None and clients:
            client = clients[0]
        elif client is not None and client not in clients:
            raise FedctlError(
                f"no deltas of client '{client}' in {base / 'clients'}",
                f"clients with deltas: {', '.join(clients) or '(none)'}",
            )
        files = [(int(_ROUND.match(r.name).group(1)), r / f"{client}.safetensors") for r in rounds
                 if (r / f"{client}.safetensors").is_file()]
    else:
        raise FedctlError(f"unknown entity '{entity}'", "use --entity server or --entity client")
    if not files:
        have = [e for e, d in (("server", base / "server"), ("client", base / "clients")) if d.is_dir() and any(d.iterdir())]
        raise FedctlError(
            f"{run_dir} has no saved {entity} deltas" + (f" (it has: {', '.join(have)})" if have else " (no deltas/ at all)"),
            f"use --entity {have[0]}" if have else "train with --save-deltas every=N entity=server|clients|all",
        )
    return files, client


@dataclass
class MatrixSeries:
    name: str
    shape: list[int]
    rounds: list[int]
    top_singular_values: list[list[float]]  # per round, the top-k σ (descending)
    final_spectrum: list[float]  # every σ of the last round's delta
    final_energy: list[float]  # cumulative σ² share of the last round
    rank95: int  # smallest rank reaching 95% of the last round's energy
    rank95_per_round: list[int]
    norms: list[float]  # Frobenius norm per round
    heatmaps: dict[int, list[list[float]]]  # round -> downsampled delta (at most 64 × 64)


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).double()


def _downsample(m: torch.Tensor, size: int = 64) -> torch.Tensor:
    h, w = m.shape
    if h <= size and w <= size:
        return m
    pooled = torch.nn.functional.adaptive_avg_pool2d(m[None, None], (min(h, size), min(w, size)))
    return pooled[0, 0]


def _load_delta(path: Path) -> dict[str, torch.Tensor]:
    """One saved delta; a truncated or foreign file is a FedctlError naming it."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError, OSError or ValueError on damaged files
        raise FedctlError(
            f"delta file {path} is unreadable or truncated ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})",
            "delete it (the other rounds are still analysed) or re-train with --save-deltas",
        ) from None
    bad = [k for k, t in tensors.items() if not t.is_floating_point()]
    if bad:
        raise FedctlError(f"delta file {path}: tensor '{bad[0]}' is not floating point",
                          "delta files hold float tensors written by `fedctl train --save-deltas`")
    return tensors


def rank_for_energy(singular_values: torch.Tensor, share: float = 0.95) -> int:
    energy = singular_values.double().pow(2)
    total = float(energy.sum())
    if total == 0:
        return 0
    cum = torch.cumsum(energy, 0) / total
    return int((cum < share - 1e-12).sum()) + 1


def analyse_deltas(run_dir: str | Path, entity: str = "server", client: str | None = None, top_k: int = 5,
                   heatmap_rounds: int = 4, max_matrices: int = 0) -> dict[str, Any]:
    """Per weight matrix: singular values of its delta per round, the rank reaching 95% energy,
    downsampled heatmaps; writes one PNG per matrix, a summary PNG and deltas_<entity>.json into plots/."""
    if top_k < 1 or max_matrices < 0 or heatmap_rounds < 1:
        raise FedctlError(f"--top-k must be >= 1 and --max-matrices >= 0 (got {top_k}, {max_matrices})",
                          "e.g. --top-k 5 --max-matrices 0 (all)")
    run_dir = Path(run_dir)
    files, client = delta_files(run_dir, entity, client)
    loaded = [(r, _load_delta(p)) for r, p in files]
    names = [n for n, t in loaded[-1][1].items() if t.ndim == 2 and min(t.shape) > 1]  # weight matrices
    if max_matrices > 0:
        names = names[:max_matrices]
    shown = min(heatmap_rounds, len(loaded))  # evenly spaced rounds, first and last included
    pick = sorted({loaded[round(i * (len(loaded) - 1) / max(1, shown - 1))][0] for i in range(shown)})
    series: list[MatrixSeries] = []
    for name in names:
        rounds, tops, norms, r95, heat = [], [], [], [], {}
        spectrum = torch.zeros(0)
        for r, tensors in loaded:
            if name not in tensors:
                continue
            if tensors[name].shape != loaded[-1][1][name].shape or not bool(torch.isfinite(tensors[name]).all()):
                raise FedctlError(
                    f"delta '{name}' of round {r} in {run_dir / 'deltas'} is non-finite or changes shape across rounds",
                    "the delta files are damaged or from different runs; re-train with --save-deltas",
                )
            m = _as_matrix(tensors[name])
            spectrum = torch.linalg.svdvals(m)
            rounds.append(r)
            tops.append(spectrum[:top_k].tolist())
            norms.append(float(m.norm()))
            r95.append(rank_for_energy(spectrum))
            if r in pick:
                heat[r] = _downsample(m).tolist()
        energy = spectrum.pow(2)
        cum = (torch.cumsum(energy, 0) / energy.sum()).tolist() if float(energy.sum()) > 0 else [0.0] * len(energy)
        series.append(MatrixSeries(name, list(loaded[-1][1][name].shape), rounds, tops, spectrum.tolist(), cum,
                                   rank_for_energy(spectrum), r95, norms, heat))
    plots = RunDir(run_dir).plots_dir
    tag = entity if entity == "server" else f"client_{client}"
    pngs = [_save(matrix_figure(s, entity), plots / f"deltas_{tag}_{_slug(s.name)}.png") for s in series]
    pngs.append(_save(rank_figure(series, entity), plots / f"deltas_{tag}_ranks.png"))
    result = {
        "run_dir": str(run_dir), "entity": entity, "client": client, "rounds": [r for r, _ in loaded],
        "matrices": [s.__dict__ for s in series], "plots": [str(p) for p in pngs],
    }
    write_json(plots / f"deltas_{tag}.json", result, indent=None)
    return result


def matrix_figure(s: MatrixSeries, entity: str):
    plt = _plt()
    heat_rounds = sorted(s.heatmaps)
    cols = max(2, len(heat_rounds))
    fig = plt.figure(figsize=(3.2 * cols, 6.4))
    grid = fig.add_gridspec(2, cols)
    vmax = max((abs(v) for r in heat_rounds for row in s.heatmaps[r] for v in row), default=1.0) or 1.0
    for i, r in enumerate(heat_rounds):
        ax = fig.add_subplot(grid[0, i])
        im = ax.imshow(s.heatmaps[r], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_title(f"round {r}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes[: len(heat_rounds)], shrink=0.8)
    ax = fig.add_subplot(grid[1, : cols // 2])
    k = max((len(t) for t in s.top_singular_values), default=0)
    for j in range(k):
        ax.plot(s.rounds, [t[j] if j < len(t) else math.nan for t in s.top_singular_values], marker="o", ms=3, label=f"σ{j + 1}")
    ax.set_xlabel("round")
    ax.set_ylabel("singular value")
    ax.set_title("top singular values of the delta", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, cols // 2 :])
    ranks = list(range(1, len(s.final_spectrum) + 1))
    ax.semilogy(ranks, [max(v, 1e-30) for v in s.final_spectrum], label="σ")
    ax2 = ax.twinx()
    ax2.plot(ranks, s.final_energy, color="tab:orange", label="energy")
    ax2.axhline(0.95, color="gray", lw=0.8, ls="--")
    ax2.axvline(s.rank95, color="tab:red", lw=0.8, ls="--")
    ax2.set_ylim(0, 1.02)
    ax.set_xlabel("rank")
    ax.set_title(f"final spectrum (round {s.rounds[-1]}): 95% energy at rank {s.rank95}", fontsize=9)
    fig.suptitle(f"{entity} delta · {s.name} {'×'.join(map(str, s.shape))}", fontsize=10)
    fig.subplots_adjust(wspace=0.45, hspace=0.35)
    return fig


def rank_figure(series: list[MatrixSeries], entity: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(series) + 2), 3.6))
    ax.bar(range(len(series)), [s.rank95 for s in series])
    ax.set_xticks(range(len(series)), [s.name for s in series], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("rank at 95% energy")
    ax.set_title(f"effective rank of the final {entity} delta per matrix", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------- runs


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (see RunDir.read_metrics)."""
    return RunDir(run_dir).read_metrics()


def run_label(run_dir: Path) -> str:
    import yaml

    cfg_path = RunDir(run_dir).config_path
    if not cfg_path.is_file():
        return Path(run_dir).name
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        cfg = {}  # only a label: a damaged config.yaml falls back to the folder name
    if not isinstance(cfg, dict):
        cfg = {}
    sections = {k: (cfg.get(k) if isinstance(cfg.get(k), dict) else {}) for k in ("run", "federation", "task")}
    fed, task = sections["federation"], sections["task"]
    parts = [str(sections["run"].get("name") or Path(run_dir).name)]
    if fed.get("clients") == 1:
        parts.append("central")
    else:
        parts.append(f"{fed.get('strategy', '?')} K={fed.get('clients', '?')}")
    if "local_updates" in task:
        parts.append(f"LU={task['local_updates']}")
    return " · ".join(parts)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_metrics(records: list[dict[str, Any]]) -> list[str]:
    keys = []
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round",) and k not in keys:
                keys.append(k)
    return keys


def analyse_runs(run_dirs: list[str | Path], metric: str | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """One figure, two panels: `metric` against round and against total local steps, a line per run."""
    runs = []
    for d in run_dirs:
        records = read_metrics(Path(d))
        runs.append((Path(d), records))
    if metric is None:
        for candidate in ("val_ppl", "val_loss", "val_accuracy"):
            if all(any(candidate in r for r in recs) for _, recs in runs):
                metric = candidate
                break
        else:
            metric = "train_loss"
    series = []
    for d, records in runs:
        points = [r for r in records if _number(r.get(metric)) and "round" in r
                  and (r.get("type") != "eval" or r.get("scope", "global") == "global")]
        if not points:
            raise FedctlError(
                f"metric '{metric}' is not logged in {d / 'metrics.jsonl'}",
                f"available metrics: {', '.join(numeric_metrics(records))}",
            )
        steps_by_round, total = {}, 0
        for r in records:
            if r.get("type") == "fit":
                total += int(r.get("local_steps") or 0) if _number(r.get("local_steps")) else 0
                steps_by_round[r.get("round")] = total
        rounds = [p["round"] for p in points]
        series.append({
            "run_dir": str(d), "label": run_label(d), "rounds": rounds,
            "steps": [steps_by_round.get(r, 0) for r in rounds], "values": [p[metric] for p in points],
        })
    for s in series:
        s["final"] = s["values"][-1]
        lower_is_better = not metric.endswith(("accuracy", "acc", "f1", "matthews", "pearson", "spearman"))
        s["best"] = (min if lower_is_better else max)(s["values"])
        s["total_steps"] = s["steps"][-1]
    groups = group_series(series)
    grouped = any(len(g["runs"]) > 1 for g in groups)  # seeds of one config: draw mean ± std bands
    out_path = Path(out) if out else RunDir(run_dirs[0]).plots_dir / f"runs_{_slug(metric)}.png"
    _save(groups_figure(groups, metric) if grouped else runs_figure(series, metric), out_path)
    result = {"metric": metric, "runs": series, "plot": str(out_path)}
    if grouped:
        result["groups"] = groups
    write_json(out_path.with_suffix(".json"), result, indent=None)
    return result


def group_series(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs grouped by config (every key but run.seed/name/out): per group the rounds all its runs logged, the
    mean and std (sample, ddof = 1; 0 for one run) of the metric and of total local steps at each, and the final
    mean ± std. These are exactly the numbers the band figure draws."""
    from fedctl.run.sweep import group_runs

    by_dir = {s["run_dir"]: s for s in series}
    out = []
    for dirs in group_runs([Path(s["run_dir"]) for s in series]):
        members = [by_dir[str(d)] for d in dirs]
        rounds = sorted(set.intersection(*[set(m["rounds"]) for m in members]))
        if not rounds:
            raise FedctlError(f"runs {', '.join(str(d) for d in dirs)} share a config but no logged round",
                              "compare runs that logged the metric in the same rounds")
        at = [{r: (v, st) for r, v, st in zip(m["rounds"], m["values"], m["steps"])} for m in members]
        values = torch.tensor([[a[r][0] for r in rounds] for a in at], dtype=torch.float64)
        steps = torch.tensor([[a[r][1] for r in rounds] for a in at], dtype=torch.float64)
        n = len(members)
        std = values.std(dim=0, correction=1) if n > 1 else torch.zeros(len(rounds), dtype=torch.float64)
        name = re.sub(r"-seed\d+$", "", members[0]["label"].split(" · ")[0])
        label = " · ".join([name, *members[0]["label"].split(" · ")[1:]]) + f" (n={n})"
        out.append({
            "label": label, "runs": [m["run_dir"] for m in members], "n": n, "rounds": rounds,
            "steps": steps.mean(dim=0).tolist(), "mean": values.mean(dim=0).tolist(), "std": std.tolist(),
            "final_mean": float(values[:, -1].mean()), "final_std": float(std[-1]),
        })
    return out


def groups_figure(groups: list[dict[str, Any]], metric: str):
    """Mean ± std bands, one per group, against round and against mean total local steps."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for g in groups:
        lo = [m - s for m, s in zip(g["mean"], g["std"])]
        hi = [m + s for m, s in zip(g["mean"], g["std"])]
        for ax, x in ((a, g["rounds"]), (b, g["steps"])):
            line, = ax.plot(x, g["mean"], marker="o", ms=3, label=g["label"])
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
    for ax, xlabel in ((a, "round"), (b, "total local steps (all clients), mean")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        if metric.endswith("ppl"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(f"{metric} by round and by local steps, mean ± std over seeds", fontsize=10)
    return fig


def runs_figure(series: list[dict[str, Any]], metric: str):
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    log = metric.endswith("ppl")
    for s in series:
        a.plot(s["rounds"], s["values"], marker="o", ms=3, label=s["label"])
        b.plot(s["steps"], s["values"], marker="o", ms=3, label=s["label"])
    for ax, xlabel in ((a, "round"), (b, "total local steps (all clients)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(f"{metric} by round and by local steps", fontsize=10)
    return fig
