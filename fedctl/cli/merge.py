"""`fedctl merge svd|naive`: combine trained LoRA adapters into one adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fedctl.cli.console import out, print_json, saved
from fedctl.cli.options import JsonOpt, OverwriteOpt, multi_value_command

app = typer.Typer(
    help="Combine LoRA adapters into one: exact weighted mean of the ΔW refactored by SVD, or naive A/B averaging.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_MultiValueCommand = multi_value_command("--adapters", "--weights", "--shard-manifests")


AdaptersOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--adapters", help="Adapter directories in peft format (adapter_config.json + safetensors): a/ b/ c/"
    ),
]
WeightsOpt = Annotated[
    list[float] | None,
    typer.Option(
        "--weights", help="One weight per adapter (normalised to sum 1), e.g. --weights 100 250 80."
    ),
]
ShardsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--shard-manifests",
        help="Per-client shard JSON files (client_<k>.json, a list of indices or {'indices': [...]}): "
        "weight = number of indices. Default without --weights: equal weights.",
    ),
]
AlphaOpt = Annotated[
    float | None,
    typer.Option("--alpha", help="lora_alpha of the merged adapter (svd default: = --svd-rank, scale 1)."),
]
MergeOutOpt = Annotated[Path, typer.Option("--out", help="Output adapter directory (written atomically).")]

_EPILOG_SVD = (
    "Examples:\n\n"
    "  fedctl merge svd --adapters a/ b/ c/ --svd-rank 8 --out fused/\n\n"
    "  fedctl merge svd --adapters a/ b/ c/ --shard-manifests shards/client_0.json shards/client_1.json "
    "shards/client_2.json --svd-rank 24 --out exact/\n\n"
    "  fedctl merge svd --adapters a/ b/ --weights 3 1 --svd-rank 8 --alpha 16 --out fused/ --json"
)
_EPILOG_NAIVE = (
    "Examples:\n\n"
    "  fedctl merge naive --adapters a/ b/ c/ --out avg/\n\n"
    "  fedctl merge naive --adapters a/ b/ --weights 0.7 0.3 --out avg/ --json"
)


@app.command(cls=_MultiValueCommand, epilog=_EPILOG_SVD)
def svd(
    adapters: AdaptersOpt = None,
    out_dir: MergeOutOpt = ...,
    svd_rank: Annotated[
        int | None,
        typer.Option(
            "--svd-rank", help="Rank of the merged adapter (default: the largest client rank).", min=1
        ),
    ] = None,
    weights: WeightsOpt = None,
    shard_manifests: ShardsOpt = None,
    alpha: AlphaOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Exact weighted mean of the clients' ΔW, truncated to --svd-rank (exact when it is ≥ the sum of ranks)."""
    _run("svd", adapters, weights, shard_manifests, svd_rank, alpha, out_dir, json_, overwrite)


@app.command(cls=_MultiValueCommand, epilog=_EPILOG_NAIVE)
def naive(
    adapters: AdaptersOpt = None,
    out_dir: MergeOutOpt = ...,
    weights: WeightsOpt = None,
    shard_manifests: ShardsOpt = None,
    alpha: AlphaOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Average the A's and the B's separately (FedAvg on LoRA factors; needs equal ranks, biased)."""
    _run("naive", adapters, weights, shard_manifests, None, alpha, out_dir, json_, overwrite)


def _run(method, adapters, weights, shard_manifests, svd_rank, alpha, out_dir, json_, overwrite=False) -> None:
    from fedctl.errors import FedctlError
    from fedctl.lora.merge import merge_adapter_dirs

    if not adapters:
        raise FedctlError("no adapters given", "pass --adapters a/ b/ c/")
    manifest = merge_adapter_dirs(
        adapters,
        method,
        weights=weights,
        shard_manifests=shard_manifests,
        svd_rank=svd_rank,
        alpha=alpha,
        out=out_dir,
        overwrite=overwrite,
    )
    if json_:
        print_json(manifest)
        return
    _render(manifest)
    saved(escape(str(out_dir)))


def _render(manifest: dict[str, Any]) -> None:
    weights = ", ".join(f"{w:.3g}" for w in manifest["weights"])
    title = f"{manifest['method']} merge of {len(manifest['inputs'])} adapters (weights {weights})"
    table = Table(title=title, title_justify="left")
    table.add_column("module", overflow="fold")
    table.add_column("shape", justify="right")
    table.add_column("ranks in", justify="right")
    table.add_column("rank out", justify="right")
    table.add_column("retained energy", justify="right")
    table.add_column("rel. error", justify="right")
    for m in manifest["modules"]:
        energy = m["retained_energy"]
        table.add_row(
            escape(m["module"].removeprefix("base_model.model.")),
            "×".join(map(str, m["shape"])),
            ",".join(map(str, m["ranks_in"])),
            str(m["rank_out"]),
            "—" if energy is None else f"{energy:.6f}",
            f"{m['rel_error']:.2e}",
        )
    out.print(table)
    t = manifest["timings_s"]
    out.print(
        f"max rel. error {manifest['max_rel_error']:.2e} · merge {t['merge']:.3f} s · total {t['total']:.3f} s",
        highlight=False,
    )
