"""`fedctl data`: demo corpora, client partitions, k-means targets. Thin: parse, call one function, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedctl.cli.console import err, out, print_json, saved, warn
from fedctl.cli.options import JsonOpt, OverwriteOpt
from fedctl.utils import record  # run.log + meta.json of the folder each command writes

app = typer.Typer(help="Prepare data: demo corpora, client partitions, k-means targets.", no_args_is_help=True)
partition_app = typer.Typer(help="Split a dataset across simulated clients.", no_args_is_help=True)
app.add_typer(partition_app, name="partition")

# ---------------------------------------------------------------- speech options
# numpy's and scikit-learn's legacy seeding takes 32-bit seeds: refuse others at parse time
def _seed_opt(what: str):
    return Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help=f"Random seed of {what}.")]


SynthSeedOpt = _seed_opt("the voices, pitch, rate and sentences (--keywords: the speaker ids and noise too)")
PartitionSeedOpt = _seed_opt("the assignment to clients and the validation split")
KmeansSeedOpt = _seed_opt("k-means (initialisation, mini-batches, frame sampling)")
SpeechOutOpt = Annotated[Path, typer.Option("--out", help="Output folder (written atomically).")]
RootOpt = Annotated[
    list[Path], typer.Option("--root", help="A LibriSpeech tree, a fairseq .tsv or CSV/TSV manifest, or a local "
                             "HF dataset (save_to_disk folder or .parquet) (repeatable).")
]
CorpusFormatOpt = Annotated[str, typer.Option(
    "--corpus-format", help="auto (detect), librispeech, tsv (fairseq manifest), csv (named columns) or hf.")]
SpeechClientsOpt = Annotated[int, typer.Option("--clients", help="Number of clients.")]
ByOpt = Annotated[str, typer.Option("--by", help="speaker (no speaker on two clients), iid or dirichlet.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Dirichlet concentration for --by dirichlet (smaller: more skew).")]
ValFractionOpt = Annotated[float, typer.Option("--val-fraction", help="Share of each client's utterances held out as val.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on any bad file instead of skipping and listing it.")]
SizesOpt = Annotated[str | None, typer.Option(
    "--sizes", help="Quantity skew as flwr-datasets: linear, square, exponential, or client sizes 300,200,100.")]


def _bad_files_warning(bad: list, where: str) -> None:
    if not bad:
        return
    shown = "; ".join(f"{b.path}: {b.reason}" for b in bad[:3])
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    warn(f"skipped {len(bad)} bad file(s), listed in {where}: {shown}{more}")


@app.command(
    epilog="Examples:\n\n  fedctl data synth --out data/synth\n\n"
    "  fedctl data synth --speakers 6 --utterances 5 --seed 1 --out /tmp/tiny\n\n"
    "  fedctl data synth --keywords --out data/keywords        (Speech Commands layout: 10 keywords, 20 other words)\n\n"
    "  fedctl data synth --keywords --words yes,no,stop --unknown-words cat,dog --speakers 20 --repetitions 1 "
    "--noise-seconds 10 --out /tmp/kw"
)
def synth(
    out_dir: SpeechOutOpt,
    keywords: Annotated[bool, typer.Option("--keywords", help="Write a Speech Commands-layout keyword corpus instead of LibriSpeech.")] = False,
    speakers: Annotated[int | None, typer.Option("--speakers", help="Distinct eSpeak voices (default 24; --keywords: 50).")] = None,
    utterances: Annotated[int | None, typer.Option("--utterances", help="Utterances per speaker (0.5-4 s each; default 40).")] = None,
    words: Annotated[str | None, typer.Option("--words", help="--keywords: comma-separated keywords (default yes,no,up,down,left,right,on,off,stop,go).")] = None,
    unknown_words: Annotated[str | None, typer.Option("--unknown-words", help="--keywords: comma-separated other words for _unknown_ (default the 20 of Speech Commands v0.01; '' for none).")] = None,
    repetitions: Annotated[int | None, typer.Option("--repetitions", help="--keywords: times each speaker says each word (default 2).")] = None,
    noise_seconds: Annotated[float | None, typer.Option("--noise-seconds", help="--keywords: length of each _background_noise_ file (default 60).")] = None,
    seed: SynthSeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Synthesize a corpus with eSpeak NG: LibriSpeech layout (FLAC + transcripts + phone alignments) or, with
    --keywords, Speech Commands layout (1 s words, _background_noise_, validation/testing lists)."""
    from fedctl.errors import FedctlError

    keyword_only = {"--words": words, "--unknown-words": unknown_words, "--repetitions": repetitions,
                    "--noise-seconds": noise_seconds}
    if keywords:
        if utterances is not None:
            raise FedctlError("--utterances is for the LibriSpeech corpus, not --keywords",
                              "with --keywords, set --repetitions (times each speaker says each word)")
        _synth_keywords(out_dir, speakers, words, unknown_words, repetitions, noise_seconds, seed, overwrite)
        return
    given = [flag for flag, value in keyword_only.items() if value is not None]
    if given:
        raise FedctlError(f"{', '.join(given)} only apply to a keyword corpus", "add --keywords")
    from fedctl.data.speech.synth import synth_corpus

    speakers = 24 if speakers is None else speakers
    utterances = 40 if utterances is None else utterances
    err.print(f"Synthesizing {speakers} speakers x {utterances} utterances with eSpeak NG ...")
    result = synth_corpus(out_dir, speakers=speakers, utterances=utterances, seed=seed, overwrite=overwrite)
    record.attach(result.out)
    out.print(
        f"{result.utterances} utterances, {result.speakers} speakers, {result.seconds / 60:.1f} min of audio "
        f"({result.min_duration:.2f}-{result.max_duration:.2f} s each) in {result.elapsed:.1f} s"
    )
    saved(result.out, "corpus")


def _synth_keywords(out_dir, speakers, words, unknown_words, repetitions, noise_seconds, seed, overwrite) -> None:
    from fedctl.data.speech.keywords import SPEECH_COMMANDS_KEYWORDS, V1_AUXILIARY_WORDS
    from fedctl.data.speech.synth_keywords import synth_keywords

    keyword_list = SPEECH_COMMANDS_KEYWORDS if words is None else words
    unknown_list = V1_AUXILIARY_WORDS if unknown_words is None else unknown_words
    speakers = 50 if speakers is None else speakers
    repetitions = 2 if repetitions is None else repetitions
    err.print(f"Synthesizing a keyword corpus: {speakers} speakers x {repetitions} repetition(s) with eSpeak NG ...")
    result = synth_keywords(out_dir, keywords=keyword_list, unknown_words=unknown_list, speakers=speakers,
                            repetitions=repetitions, noise_seconds=60.0 if noise_seconds is None else noise_seconds,
                            seed=seed, overwrite=overwrite)
    record.attach(result.out)
    sp, cl = result.split_speakers, result.split_clips
    out.print(
        f"{result.clips} clips of 1 s, {result.speakers} speakers (train/validation/test {sp['train']}/"
        f"{sp['validation']}/{sp['test']} speakers, {cl['train']}/{cl['validation']}/{cl['test']} clips), "
        f"{result.noise_files} noise files of {result.noise_seconds:g} s in {result.elapsed:.1f} s"
    )
    saved(result.out, "keyword corpus")


@partition_app.command(
    "librispeech",
    epilog="Examples:\n\n  fedctl data partition librispeech --root data/synth --clients 10 --out parts/\n\n"
    "  fedctl data partition librispeech --root LibriSpeech/train-clean-100 --root LibriSpeech/train-clean-360 "
    "--clients 100 --by dirichlet --alpha 0.5 --out parts/\n\n"
    "  fedctl data partition speech --root manifests/train.tsv --clients 10 --out parts/\n\n"
    "  fedctl data partition speech --root clips.csv --clients 10 --out parts/\n\n"
    "  fedctl data partition speech --root my_hf_dataset/ --corpus-format hf --clients 10 --out parts/\n\n"
    "  fedctl data partition speech --root data/synth --clients 6 --sizes exponential --val-by speaker --out parts/\n\n"
    "  fedctl data partition speech --root data/synth --sizes 400,200,100 --out parts/",
)
def partition_librispeech(
    roots: RootOpt,
    out_dir: SpeechOutOpt,
    clients: Annotated[int | None, typer.Option("--clients", help="Number of clients [default: 10, or as many as --sizes lists].")] = None,
    by: ByOpt = "speaker",
    alpha: AlphaOpt = 0.5,
    val_fraction: ValFractionOpt = 0.2,
    sizes: SizesOpt = None,
    size_unit: Annotated[str, typer.Option("--size-unit", help="--by speaker --sizes: count utterances (targets met to within a speaker) or speakers (exact).")] = "utterances",
    val_by: Annotated[str, typer.Option("--val-by", help="utterance (share of each client's utterances) or speaker (hold out whole speakers).")] = "utterance",
    seed: PartitionSeedOpt = 0,
    strict: StrictOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    corpus_format: CorpusFormatOpt = "auto",
) -> None:
    """Split a speech corpus (LibriSpeech tree, fairseq TSV, CSV manifest, local HF dataset) across clients."""
    from fedctl.data.quantity import parse_sizes
    from fedctl.data.speech.partition import partition_librispeech as run

    parsed = parse_sizes(sizes) if sizes is not None else None
    if clients is None:
        clients = len(parsed) if isinstance(parsed, list) else 10
    result = run(roots, out_dir, clients=clients, by=by, alpha=alpha, val_fraction=val_fraction, seed=seed,
                 strict=strict, overwrite=overwrite, corpus_format=corpus_format, sizes=parsed,
                 size_unit=size_unit, val_by=val_by)
    record.attach(result.out)
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
    audio = summary["audio"]
    if audio["resampled"] or audio["downmixed"]:
        out.print(f"audio read at 16 kHz mono: {audio['resampled']} resampled ({audio['resampler']}) from "
                  f"{', '.join(r + ' Hz' for r in audio['input_rates_hz'])}, {audio['downmixed']} down-mixed")
    if summary.get("target_sizes") is not None:
        out.print(f"target sizes ({summary['size_unit']}) {summary['target_sizes']}; largest deviation "
                  f"{summary['size_deviation']}; left out {summary['left_out_utterances']} utterances")
    saved(result.out, "partition")


# the same command under the name that says it reads any supported corpus
partition_app.command("speech", help="Split a speech corpus (LibriSpeech tree, fairseq TSV, CSV manifest, local HF "
                      "dataset) across clients: per-client manifests + summary.json.")(partition_librispeech)


@app.command(
    epilog="Examples:\n\n  fedctl data kmeans --parts parts/ --clusters 100 --scope client --out labels/\n\n"
    "  fedctl data kmeans --parts parts/ --scope global --label-rate 100 --fit-fraction 0.1 --out labels/ --json\n\n"
    "  fedctl data kmeans --parts parts/ --features hubert --model runs/hubert/final/hf --layer 6 --clusters 500 --out labels2/\n\n"
    "  fedctl data kmeans --parts parts/ --alignments mfa_out/ --tier phones --max-fit-frames 2000000 --out labels/",
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
    max_fit_frames: Annotated[int, typer.Option("--max-fit-frames", help="Most frames k-means is fitted on (a seeded sample); memory ~ this x dim x 4 bytes.")] = 1_000_000,
    keep_features: Annotated[bool, typer.Option("--keep-features", help="Keep the per-client feature shards under OUT/features/.")] = False,
    alignments: Annotated[Path | None, typer.Option("--alignments", help="Phone alignments: a folder of TextGrids (MFA) or a '<utt-id> <label> ...' frame-label file.")] = None,
    tier: Annotated[str, typer.Option("--tier", help="TextGrid tier holding the phones.")] = "phones",
    alignment_rate: Annotated[int, typer.Option("--alignment-rate", help="Frame-label file: labels per second.")] = 100,
    seed: KmeansSeedOpt = 0,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit k-means on MFCCs (HuBERT iteration 1) or a HuBERT layer (iteration 2), per client or globally."""
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels
    from fedctl.errors import FedctlError

    cfg = KmeansConfig(clusters=clusters, scope=scope, label_rate=label_rate, fit_fraction=fit_fraction,
                       seed=seed, threads=threads, max_fit_frames=max_fit_frames, keep_features=keep_features,
                       alignments=str(alignments) if alignments is not None else None, tier=tier,
                       alignment_rate=alignment_rate)
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
    record.attach(result.out)
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
            f"PNMI {km['pnmi']:.3f} (random {rnd['pnmi']:.3f}) over {pm['frames']} frames "
            f"({pm['aligned_utterances']}/{pm['utterances']} utterances aligned)"
        )
    else:
        out.print("phone metrics: n/a (no .phn alignments in this corpus; bring MFA TextGrids with --alignments)")
    sm = summary["speaker_metrics"]
    if sm["nmi"] is None:
        out.print(f"speaker information: n/a (every model's frames hold one speaker; {sm['models']} models)")
    else:
        out.print(f"speaker information I(cluster; speaker)/H(speaker) {sm['nmi']:.3f} (random {sm['random_nmi']:.3f}), "
                  f"{sm['models_scored']}/{sm['models']} models with two or more speakers")
    saved(result.out, "labels")


# ---------------------------------------------------------------- text classification (GLUE) shards
shard_app = typer.Typer(help="Split a text-classification training set across simulated clients.", no_args_is_help=True)
app.add_typer(shard_app, name="shard")


@shard_app.command(
    "glue",
    epilog="Examples:\n\n  fedctl data shard glue --task sst2 --clients 5 --mode iid --seed 123 --out shards/\n\n"
    "  fedctl data shard glue --task mnli --data-dir glue_data/ --clients 5 --mode category --category-key genre --out shards/\n\n"
    "  fedctl data shard glue --task demo --clients 3 --mode dirichlet --alpha 0.3 --out shards/ --json\n\n"
    "  fedctl data shard glue --task demo --clients 4 --mode exponential --out shards/\n\n"
    "  fedctl data shard glue --task demo --mode inner-dirichlet --sizes 60,30,10 --alpha 0.5 --out shards/",
)
def shard_glue(
    task: Annotated[str, typer.Option("--task", help="GLUE task (cola sst2 mrpc qqp stsb mnli qnli rte wnli) or demo.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: client_<k>.json + summary.json (atomic).")],
    clients: Annotated[int | None, typer.Option("--clients", help="Number of clients [default: 5, or as many as --sizes lists].")] = None,
    mode: Annotated[str, typer.Option("--mode", help="iid (stratified by label), overlap, category, dirichlet; "
                                      "flwr-datasets' linear, square, exponential, size, inner-dirichlet.")] = "iid",
    sizes: Annotated[str | None, typer.Option("--sizes", help="size / inner-dirichlet: client sizes 300,200,100 "
                                              "(inner-dirichlet also linear, square, exponential; default equal).")] = None,
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
    from fedctl.data.quantity import parse_sizes

    parsed = parse_sizes(sizes) if sizes is not None else None
    if clients is None:
        clients = len(parsed) if isinstance(parsed, list) else 5
    summary = run(task, clients, mode, out_dir, seed=seed, overlap_ratio=overlap_ratio, category_key=category_key,
                  alpha=alpha, data_dir=data_dir, log=lambda msg: err.print(msg, highlight=False), overwrite=overwrite,
                  sizes=parsed)
    record.attach(out_dir)
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
