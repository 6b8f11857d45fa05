"""`fedctl data`: demo corpora, client partitions, k-means targets. Thin: parse, call one function, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedctl.cli.console import err, out, print_json, saved, warn
from fedctl.cli.options import JsonOpt, OverwriteOpt

app = typer.Typer(help="Prepare data: demo corpora, client partitions, k-means targets.", no_args_is_help=True)
partition_app = typer.Typer(help="Split a dataset across simulated clients.", no_args_is_help=True)
app.add_typer(partition_app, name="partition")

# ---------------------------------------------------------------- speech options
# numpy's and scikit-learn's legacy seeding takes 32-bit seeds: refuse others at parse time
def _seed_opt(what: str):
    return Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help=f"Random seed of {what}.")]


SynthSeedOpt = _seed_opt("the voices, pitch, rate and sentences")
PartitionSeedOpt = _seed_opt("the assignment to clients and the validation split")
KmeansSeedOpt = _seed_opt("k-means (initialisation, mini-batches, frame sampling)")
SpeechOutOpt = Annotated[Path, typer.Option("--out", help="Output folder (written atomically).")]
RootOpt = Annotated[
    list[Path], typer.Option("--root", help="A LibriSpeech tree or subset folder (repeatable).")
]
SpeechClientsOpt = Annotated[int, typer.Option("--clients", help="Number of clients.")]
ByOpt = Annotated[str, typer.Option("--by", help="speaker (no speaker on two clients), iid or dirichlet.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Dirichlet concentration for --by dirichlet (smaller: more skew).")]
ValFractionOpt = Annotated[float, typer.Option("--val-fraction", help="Share of each client's utterances held out as val.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on any bad file instead of skipping and listing it.")]


def _bad_files_warning(bad: list, where: str) -> None:
    if not bad:
        return
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:3])
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    warn(f"skipped {len(bad)} bad file(s), listed in {where}: {shown}{more}")


@app.command(
    epilog="Examples:\n\n  fedctl data synth --out data/synth\n\n"
    "  fedctl data synth --speakers 6 --utterances 5 --seed 1 --out /tmp/tiny"
)
def synth(
    out_dir: SpeechOutOpt,
    speakers: Annotated[int, typer.Option("--speakers", help="Distinct eSpeak voices.")] = 24,
    utterances: Annotated[int, typer.Option("--utterances", help="Utterances per speaker (0.5-4 s each).")] = 40,
    seed: SynthSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Synthesize a LibriSpeech-layout corpus (16 kHz FLAC + transcripts + phone alignments) with eSpeak NG."""
    from fedctl.data.speech.synth import synth_corpus

    err.print(f"Synthesizing {speakers} speakers x {utterances} utterances with eSpeak NG ...")
    result = synth_corpus(out_dir, speakers=speakers, utterances=utterances, seed=seed, overwrite=overwrite)
    out.print(
        f"{result.utterances} utterances, {result.speakers} speakers, {result.seconds / 60:.1f} min of audio "
        f"({result.min_duration:.2f}-{result.max_duration:.2f} s each) in {result.elapsed:.1f} s"
    )
    saved(result.out, "corpus")


@partition_app.command(
    "librispeech",
    epilog="Examples:\n\n  fedctl data partition librispeech --root data/synth --clients 10 --out parts/\n\n"
    "  fedctl data partition librispeech --root LibriSpeech/train-clean-100 --root LibriSpeech/train-clean-360 "
    "--clients 100 --by dirichlet --alpha 0.5 --out parts/",
)
def partition_librispeech(
    roots: RootOpt,
    out_dir: SpeechOutOpt,
    clients: SpeechClientsOpt = 10,
    by: ByOpt = "speaker",
    alpha: AlphaOpt = 0.5,
    val_fraction: ValFractionOpt = 0.2,
    seed: PartitionSeedOpt = 0,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Split LibriSpeech-layout trees across clients: per-client manifests + summary.json."""
    from fedctl.data.speech.partition import partition_librispeech as run

    result = run(roots, out_dir, clients=clients, by=by, alpha=alpha, val_fraction=val_fraction, seed=seed,
                 strict=strict, overwrite=overwrite)
    _bad_files_warning(result.bad_files, str(Path(out_dir) / "summary.json"))
    summary = result.summary
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{summary['clients']} clients, by {summary['by']}")
    for col in ("client", "utterances", "train", "val", "hours", "speakers"):
        table.add_column(col, justify="left" if col == "client" else "right")
    for c in summary["per_client"]:
        table.add_row(c["client_id"], str(c["utterances"]), str(c["train"]), str(c["val"]),
                      f"{c['hours']:.3f}", str(c["speakers"]))
    t = summary["totals"]
    table.add_row("total", str(t["utterances"]), "", "", f"{t['hours']:.3f}", str(t["speakers"]), style="bold")
    out.print(table)
    out.print(f"hour spread (max-min) {summary['hours_spread']:.4f} h; bad files {summary['num_bad_files']}")
    saved(result.out, "partition")


@app.command(
    epilog="Examples:\n\n  fedctl data kmeans --parts parts/ --clusters 100 --scope client --out labels/\n\n"
    "  fedctl data kmeans --parts parts/ --scope global --label-rate 100 --fit-fraction 0.1 --out labels/ --json\n\n"
    "  fedctl data kmeans --parts parts/ --features hubert --model runs/hubert/final/hf --layer 6 --clusters 500 --out labels2/",
)
def kmeans(
    parts: Annotated[Path, typer.Option("--parts", help="Folder from `fedctl data partition librispeech`.")],
    out_dir: SpeechOutOpt,
    clusters: Annotated[int, typer.Option("--clusters", help="k-means clusters (HuBERT: 100 on MFCCs).")] = 100,
    scope: Annotated[str, typer.Option("--scope", help="client (one model per client, data stays local) or global.")] = "client",
    label_rate: Annotated[int, typer.Option("--label-rate", help="Labels per second: 50 (HuBERT frames) or 100.")] = 50,
    fit_fraction: Annotated[float, typer.Option("--fit-fraction", help="Share of train frames k-means is fitted on.")] = 1.0,
    threads: Annotated[int, typer.Option("--threads", help="Threads for k-means; raise on big data with free cores.")] = 1,
    features: Annotated[str, typer.Option("--features", help="mfcc (iteration 1) or hubert (iteration 2: --model, --layer).")] = "mfcc",
    model: Annotated[Path | None, typer.Option("--model", help="--features hubert: RUN/final/hf of `fedctl train hubert`.")] = None,
    layer: Annotated[int, typer.Option("--layer", help="--features hubert: transformer layer whose output is clustered.")] = 6,
    seed: KmeansSeedOpt = 0,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit k-means on MFCCs (HuBERT iteration 1) or a HuBERT layer (iteration 2), per client or globally."""
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels
    from fedctl.errors import FedctlError

    cfg = KmeansConfig(clusters=clusters, scope=scope, label_rate=label_rate, fit_fraction=fit_fraction,
                       seed=seed, threads=threads)
    extractor = None
    if features == "hubert":
        if model is None:
            raise FedctlError("--features hubert needs --model", "pass --model RUN/final/hf of `fedctl train hubert`")
        from fedctl.data.speech.hubert_features import HubertLayerExtractor

        extractor = HubertLayerExtractor(model, layer)
    elif features != "mfcc":
        raise FedctlError(f"--features {features!r} is not valid", "use mfcc or hubert")
    result = learn_kmeans_labels(parts, out_dir, cfg, progress=lambda msg: err.print(msg, highlight=False),
                                 extractor=extractor, overwrite=overwrite)
    for message in result.warnings:
        warn(message)
    summary = result.summary
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{'MFCC' if features == 'mfcc' else f'HuBERT layer {layer}'} k-means, scope {scope}, {label_rate} Hz labels")
    for col in ("model", "clusters", "fit frames", "inertia", "used", "perplexity"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, m in summary["models"].items():
        table.add_row(name, str(m["clusters"]), str(m["fit_frames"]), f"{m['inertia']:.1f}",
                      f"{m['clusters_used']}/{m['clusters']}", f"{m['usage_perplexity']:.1f}")
    out.print(table)
    pm = summary["phone_metrics"]
    if pm.get("available"):
        km, rnd = pm["mean"]["kmeans"], pm["mean"]["random"]
        out.print(
            f"phone purity {km['phone_purity']:.3f} (random {rnd['phone_purity']:.3f}), "
            f"cluster purity {km['cluster_purity']:.3f} (random {rnd['cluster_purity']:.3f}), "
            f"PNMI {km['pnmi']:.3f} (random {rnd['pnmi']:.3f}) over {pm['frames']} frames"
        )
    else:
        out.print("phone metrics: n/a (no .phn alignments in this corpus)")
    saved(result.out, "labels")


# ---------------------------------------------------------------- text classification (GLUE) shards
shard_app = typer.Typer(help="Split a text-classification training set across simulated clients.", no_args_is_help=True)
app.add_typer(shard_app, name="shard")


@shard_app.command(
    "glue",
    epilog="Examples:\n\n  fedctl data shard glue --task sst2 --clients 5 --mode iid --seed 123 --out shards/\n\n"
    "  fedctl data shard glue --task mnli --data-dir glue_data/ --clients 5 --mode category --category-key genre --out shards/\n\n"
    "  fedctl data shard glue --task demo --clients 3 --mode dirichlet --alpha 0.3 --out shards/ --json",
)
def shard_glue(
    task: Annotated[str, typer.Option("--task", help="GLUE task (cola sst2 mrpc qqp stsb mnli qnli rte wnli) or demo.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: client_<k>.json + summary.json (atomic).")],
    clients: Annotated[int, typer.Option("--clients", help="Number of clients.")] = 5,
    mode: Annotated[str, typer.Option("--mode", help="iid (stratified by label), overlap, category or dirichlet.")] = "iid",
    overlap_ratio: Annotated[float, typer.Option("--overlap-ratio", help="overlap: share of examples every client holds.")] = 0.2,
    category_key: Annotated[str, typer.Option("--category-key", help="category: label, or genre (MNLI files that have it).")] = "label",
    alpha: Annotated[float, typer.Option("--alpha", help="dirichlet: concentration (smaller: more label skew).")] = 0.5,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Local GLUE files; default: the datasets cache.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Random seed of the split.")] = 0,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Shard a GLUE task's training split: per-client index files + label histograms."""
    from fedctl.data.glue.shard import shard_glue as run

    summary = run(task, clients, mode, out_dir, seed=seed, overlap_ratio=overlap_ratio, category_key=category_key,
                  alpha=alpha, data_dir=data_dir, log=lambda msg: err.print(msg, highlight=False), overwrite=overwrite)
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{summary['task']}: {summary['clients']} clients, mode {summary['mode']}")
    table.add_column("client")
    table.add_column("examples", justify="right")
    table.add_column("labels", justify="left")
    for c in summary["per_client"]:
        table.add_row(c["client_id"], str(c["num_examples"]), " ".join(f"{k}:{v}" for k, v in c["labels"].items()))
    out.print(table)
    out.print(f"{summary['assigned_examples']} of {summary['train_examples']} training examples assigned, "
              f"{summary['shared_examples']} on more than one client")
    saved(out_dir, "shards")
