"""`fedctl attack ds1|ds2`: the utterance loop. Selects the duration bin and batch range, builds the case
(victim + client update + defences), runs the attack, and writes under `out/`:

- `metrics.csv`: one row per attacked utterance (columns `COLUMNS`), rewritten atomically after each batch,
  so an interrupted attack resumes without redoing the utterances already in it;
- `attack.log`: the resolved settings and per-iteration progress; `settings.json`: the folder's settings (a
  re-run with other settings is refused, naming them, unless `overwrite` replaces the results: `RunDir.claim`);
- `recon/<utterance>.pt`: {x_hat, x_true, x_init, speaker, curve} for later analysis (speaker ID);
- `plots/<utterance>.png`: true / reconstructed / |difference| features and the distance curve, for the
  first `plots` utterances.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fedctl.attacks.analysis import SpeakerID, feature_metrics, prior_topk, windows
from fedctl.attacks.attack import AttackConfig, reconstruct
from fedctl.attacks.case import Defense, client_update, load_victim
from fedctl.attacks.objective import output_layer
from fedctl.attacks.transcript import recovered_transcripts
from fedctl.core.config import (
    apply_mapping,
    check_choice,
    check_fields,
    check_out_path,
    check_range,
    check_seed,
)
from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.tasks.asr.ctc import check_feasible
from fedctl.tasks.asr.data import FeatureCache, collate, load_corpus, load_partition, normalise
from fedctl.tasks.asr.models import build_asr_model, output_lengths
from fedctl.tasks.asr.text import check_text_norm, error_rates
from fedctl.utils.io import torch_load, torch_save, write_text

COLUMNS = ["utterance", "duration_ms", "speaker", "method", "defense", "restart", "grad_distance", "feature_mae",
           "random_mae", "mae_ratio", "cosine", "snr_db", "iterations", "seconds", "frames", "budget",
           "transcript_cer"]  # transcript_cer: of the transcript recovered with --no-transcripts; empty otherwise


def _checked(default, check):
    return field(default=default, metadata={"check": check})


@dataclass
class AttackSpec:
    """Everything one `fedctl attack` run reads: a typed declaration whose field checks (the training config's
    machinery, `fedctl.core.config`) serve the command-line flags and a sweep file alike; `check_spec` adds the
    checks across fields. Build one from flags or YAML with `attack_spec`."""

    arch: str = _checked("ds1", check_choice("ds1", "ds2"))
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # model overrides, e.g. {"n_hidden": 256}
    corpus: list[str] = field(default_factory=list)  # any format fedctl.data.speech.readers reads (detected)
    text_norm: str = "strict"  # transcripts of the attacked utterances (only those): strict, fold, fold-spell-numbers
    parts: str | None = None
    client: str | None = None
    min_dur: int = _checked(1000, check_range(low=0, hint="milliseconds, e.g. 1000"))
    max_dur: int = _checked(2000, check_range(low=1, hint="milliseconds, above the bin start, e.g. 2000"))
    batch_start: int = _checked(0, check_range(low=0, hint="an utterance index >= 0, e.g. 0"))
    batch_end: int = _checked(100, check_range(low=1, hint="an utterance index above the batch start, e.g. 100"))
    batch_size: int = _checked(1, check_range(low=1, hint="e.g. 1 (the reference)"))
    batch_stride: int = _checked(1, check_range(low=1, hint="take every n-th utterance, n >= 1, e.g. 1 (all)"))  # take every n-th utterance of the range (spreads a small sample over speakers)
    checkpoint: str | None = None
    run: str | None = None  # with run_round and client: victim and shared update from a fedctl run
    run_round: int | None = _checked(None, check_range(low=1, hint="a round of the run, >= 1, e.g. 3"))
    client_lr: float | None = _checked(None, check_range(low=0, low_open=True, hint="the client's learning rate in the run, > 0"))  # only for a run without config.yaml (gradient = −delta / lr, default 1); a fedctl run's config sets it
    victim_seed: int = _checked(0, check_seed)
    local_steps: int = _checked(1, check_range(low=1, hint="use 1 (FedSGD, the default) or more (local SGD, which the attacker unrolls)"))
    local_lr: float = _checked(1.0, check_range(low=0, low_open=True, hint="a finite learning rate > 0, e.g. 0.5"))
    defense: Defense = field(default_factory=Defense)
    attack: AttackConfig = field(default_factory=AttackConfig)
    out: str = _checked("attack_out", check_out_path)
    plots: int = _checked(3, check_range(low=0, hint="how many utterances to plot, e.g. 3"))
    max_frames: int | None = _checked(None, check_range(low=1, hint="a number of frames >= 1, e.g. 20, or leave it off"))  # crop features to this many frames (well-posed experiments); None keeps all
    crop_transcript: bool = False  # with max_frames: keep the first (output frames) // 3 characters (a budget
    # experiment on a synthetic client batch, not a real utterance: the features and labels no longer align)


def attack_spec(values: dict, label: Callable[[str], str] | None = None) -> AttackSpec:
    """An AttackSpec from nested `values` (flags or a sweep cell), strictly: unknown keys, wrong types and
    out-of-range values are errors naming the key, or `label(key)` (the flag that set it)."""
    spec = AttackSpec()
    apply_mapping(spec, values, "", label)
    check_spec(spec, label)
    return spec


def resolve_spec(arch: str, config: str | Path | None = None, flags: dict | None = None, sets: list[str] | None = None,
                 label: Callable[[str], str] | None = None) -> AttackSpec:
    """The settings of `fedctl attack ARCH`, as training resolves its config: defaults ← the YAML file (a path or
    a shipped template name) ← command-line flags (nested `flags`, named by `label` in errors) ← `--set key=value`,
    each strictly (unknown keys and wrong types are errors naming the valid keys), then `check_spec`."""
    from fedctl.core.config import load_yaml, parse_set
    from fedctl.utils.templates import resolve_template

    spec = AttackSpec(arch=arch)
    if config is not None:
        data = load_yaml(resolve_template(config))
        apply_mapping(spec, data, "")
        if spec.arch != arch:
            raise FedctlError(f"config {config} attacks arch '{spec.arch}', not '{arch}'",
                              f"run it with `fedctl attack {spec.arch} --config {config}`")
    apply_mapping(spec, flags or {}, "", label)
    apply_mapping(spec, parse_set(sets), "")
    if spec.arch != arch:
        raise FedctlError(f"--set arch={spec.arch} contradicts the command `fedctl attack {arch}`",
                          f"run `fedctl attack {spec.arch}` instead")
    check_spec(spec, label)
    return spec


def check_spec(spec: AttackSpec, label: Callable[[str], str] | None = None) -> None:
    """Every check of `spec` that needs no data: each field's declared check, then the checks across fields
    (and the model settings, built on the meta device). Runs before anything is read or written."""
    name = label or (lambda k: k)
    check_fields(spec, "", label)
    cfg = spec.attack
    if spec.max_dur <= spec.min_dur:
        keys = dict.fromkeys((name("min_dur"), name("max_dur")))  # a sweep names both ends by one bins[i]
        raise FedctlError(f"the duration bin [{spec.min_dur}, {spec.max_dur}) ms ({', '.join(keys)}) is empty",
                          "its end must lie above its start (milliseconds), e.g. 1000 to 2000")
    if spec.batch_end <= spec.batch_start:
        raise FedctlError(f"batch range [{name('batch_start')} {spec.batch_start}, {name('batch_end')} "
                          f"{spec.batch_end}) is empty", "use 0 <= --batch-start < --batch-end")
    if spec.crop_transcript and spec.max_frames is None:
        raise FedctlError(f"{name('crop_transcript')} without {name('max_frames')} would crop nothing",
                          "give --max-frames N with it, or leave it off")
    if not cfg.transcripts and cfg.method == "hfgm":
        raise FedctlError("--method hfgm needs the transcripts (it perturbs the features only; without transcripts "
                          "the alignments are unknowns too)", "use --method gradient with --no-transcripts")
    if spec.run and (spec.local_steps > 1 or spec.local_lr != 1.0):
        raise FedctlError(f"{name('local_steps')} / {name('local_lr')} describe a simulated client; with --run the run's "
                          "config sets its client (optimizer, lr, local steps, micro-batches), which the attack replays",
                          "leave --local-steps and --local-lr off with --run")
    if spec.local_steps > 1 and not cfg.transcripts:
        raise FedctlError("--no-transcripts with --local-steps > 1 is not implemented (the unroll needs the CTC "
                          "targets)", "attack a FedSGD update (--local-steps 1) without transcripts, or give them")
    if spec.run and (spec.run_round is None or spec.client is None):
        raise FedctlError("--run needs --round and --client", "e.g. --run runs/asr --round 3 --client client_000")
    if spec.run_round is not None and not spec.run:
        raise FedctlError(f"{name('run_round')} {spec.run_round} without --run selects nothing",
                          "give --run RUN with it, or leave it off")
    try:
        with torch.device("meta"):  # unknown preset, bad model settings: refused before any data is read
            build_asr_model(spec.arch, spec.preset, **spec.model)
    except FedctlError as exc:
        raise FedctlError(f"{name('model')}: {exc.message}", exc.hint) from None


def select_utterances(spec: AttackSpec):
    """The duration bin's utterances (sorted by id), then [batch_start, batch_end) of them, and only those
    normalised (`spec.text_norm`): a transcript outside the attacked range never stops the attack."""
    check_text_norm(spec.text_norm)
    if spec.parts:
        clients = load_partition(spec.parts, min_dur=spec.min_dur, max_dur=spec.max_dur, text_norm=None)
        if spec.client is not None:
            if spec.client not in clients:
                raise FedctlError(f"client {spec.client!r} is not in {spec.parts}",
                                  f"clients: {', '.join(sorted(clients)[:8])}")
            utts = clients[spec.client]
        else:
            utts = [u for us in clients.values() for u in us]
        utts = sorted(utts, key=lambda u: u.id)
    elif spec.corpus:
        utts = load_corpus(spec.corpus, min_dur=spec.min_dur, max_dur=spec.max_dur, text_norm=None)
    else:
        raise FedctlError("no data to attack", "pass --corpus CORPUS (LibriSpeech tree, manifest or HF dataset) "
                          "or --parts PARTS")
    if not utts:
        raise FedctlError(f"no utterance lies in the duration bin [{spec.min_dur}, {spec.max_dur}) ms",
                          "widen --min-dur/--max-dur (milliseconds), e.g. --min-dur 1000 --max-dur 2000")
    if spec.batch_start >= len(utts):
        raise FedctlError(f"--batch-start {spec.batch_start} is past the {len(utts)} utterance(s) in the bin "
                          f"[{spec.min_dur}, {spec.max_dur}) ms",
                          f"use --batch-start below {len(utts)} or widen the duration bin")
    chosen = normalise(utts[spec.batch_start: min(spec.batch_end, len(utts)): spec.batch_stride], spec.text_norm)
    empty = [u.id for u in chosen if not u.transcript]
    if empty:
        raise FedctlError(f"attacked utterance(s) {', '.join(empty[:8])} have no transcript left after "
                          f"--text-norm {spec.text_norm}",
                          "attack other utterances (--batch-start/--batch-end, --min-dur/--max-dur), or attack "
                          "without them (--no-transcripts)")
    return chosen


NUMERIC = {"duration_ms": int, "restart": int, "iterations": int, "frames": int, "grad_distance": float,
           "feature_mae": float, "random_mae": float, "mae_ratio": float, "cosine": float, "snr_db": float,
           "seconds": float, "budget": float}  # transcript_cer: a float or empty


def read_metrics(path: Path) -> list[dict]:
    """The rows of an attack folder's metrics.csv (none when it does not exist), checked: the resume and the
    summaries read them as numbers, so a damaged file (not text, other columns, a truncated or garbled row)
    is one error naming the file and the line, never a traceback nor a wrong resume."""
    if not path.exists():
        return []
    hint = (f"the attack folder is damaged: move {path.name} (and recon/) out of it to redo those utterances, "
            "or attack into a new --out folder")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FedctlError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded)", hint) from None
    except OSError as exc:
        raise FedctlError(f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames
        if header != COLUMNS:
            raise FedctlError(f"{path} does not have fedctl attack's columns (header: {','.join(header or [])[:80]!r})",
                              hint)
        rows = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise FedctlError(f"{where} has {len(row) - (None in row) + len(row.get(None) or [])} fields, "
                                  f"not {len(COLUMNS)} (truncated?)", hint)
            for key, kind in (*NUMERIC.items(), *((("transcript_cer", float),) if row["transcript_cer"] else ())):
                try:
                    kind(row[key])
                except ValueError:
                    raise FedctlError(f"{where}: {key} = {row[key]!r} is not a number", hint) from None
            if not row["utterance"]:
                raise FedctlError(f"{where} names no utterance", hint)
            rows.append(row)
    except csv.Error as exc:
        raise FedctlError(f"{path} is not a readable CSV file ({exc})", hint) from None
    return rows


def write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    write_text(path, buf.getvalue())


def _plot(path: Path, x_true: torch.Tensor, x_hat: torch.Tensor, curve: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    lo, hi = float(x_true.min()), float(x_true.max())
    for ax, img, name in ((axes[0, 0], x_true, "true"), (axes[0, 1], x_hat, "reconstructed"),
                          (axes[1, 0], (x_hat - x_true).abs(), "|difference|")):
        kw = {"vmin": lo, "vmax": hi} if name != "|difference|" else {}
        im = ax.imshow(img.T.numpy(), aspect="auto", origin="lower", **kw)
        ax.set_title(name)
        ax.set_xlabel("frame")
        fig.colorbar(im, ax=ax)
    axes[1, 1].semilogy([max(c, 1e-12) for c in curve])
    axes[1, 1].set_title("best gradient distance")
    axes[1, 1].set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# settings that may change between runs into one attack folder: where it is, how many plots, and how far
# down the utterance range it goes (a larger --batch-end attacks more utterances of the same experiment)
RESUMABLE = ("out", "plots", "batch_end")
# what `run_attack` writes into an attack folder: all that --overwrite removes (never the user's files)
OUTPUTS = ("metrics.csv", "attack.log", "settings.json", "recon/*.pt", "plots/*.png")


def replayable(run: str | Path) -> bool:
    """A `fedctl train asr` run folder (its config.yaml says how its clients trained): `--run` replays its client."""
    return RunDir(run).config_path.is_file()


def name_of(key: str) -> str:
    """The flag that sets an AttackSpec key, as errors name it."""
    return {"client_lr": "--client-lr"}.get(key, key)


def attack_dir(out: str | Path) -> RunDir:
    return RunDir(out, label="attack folder")


def legacy_attack_folder(path: Path) -> bool:
    """An attack folder written by a fedctl from before the ownership marker (its settings.json)."""
    try:
        settings = read_settings(path)
    except FedctlError:
        return False
    return settings is not None and {"arch", "attack", "defense"} <= set(settings)


def run_attack(spec: AttackSpec, progress: Callable[[str], None] | None = None, overwrite: bool = False) -> dict:
    """Attack every batch of the selected utterances not already in out/metrics.csv; returns the summary.

    `out` is an attack folder (`RunDir` ownership: marker, lock, settings check): a folder fedctl did not write
    is refused untouched; one written with other settings is refused naming them, or with `overwrite` its
    attack outputs are replaced; with the same settings the attack resumes. A second process is refused."""
    check_spec(spec)
    attack_dir(spec.out).check_owner("attack", legacy=legacy_attack_folder)  # before any work: touch nothing
    cfg = spec.attack
    # the attacker knows the client's local training (the server configures it) and unrolls it
    cfg = dataclasses.replace(cfg, local_steps=spec.local_steps, local_lr=spec.local_lr)
    spec = dataclasses.replace(spec, attack=cfg)  # so that the logged settings say what the attacker ran
    case = None
    if spec.run and replayable(spec.run):  # a fedctl run: its client, exactly as it trained, on its own data
        from fedctl.attacks.case import run_client

        if spec.max_frames is not None or not cfg.transcripts:
            raise FedctlError("--run replays the run's client on its whole utterances with their transcripts",
                              "leave --max-frames and --no-transcripts off with --run")
        case = run_client(spec.run, spec.run_round, spec.client, spec.arch, match=cfg.match, overrides=spec.model)
        if spec.client_lr is not None and spec.client_lr != case.plan.peak_lr:
            raise FedctlError(f"{name_of('client_lr')} {spec.client_lr:g} differs from the learning rate of "
                              f"{spec.run}'s clients ({case.plan.peak_lr:g}, its config.yaml)",
                              f"leave {name_of('client_lr')} off: the run's config sets it")
        spec = dataclasses.replace(spec, batch_size=len(case.utterances))  # the client's whole round: one batch
        utts = case.utterances
    else:
        utts = select_utterances(spec)
    if spec.max_frames is not None and spec.crop_transcript:
        out_frames = int(output_lengths(spec.arch, torch.tensor([spec.max_frames]))[0])
        keep = max(1, out_frames // 3)  # a third of the output frames: always alignable
        utts = [dataclasses.replace(u, target=u.target[:keep], transcript=u.transcript[:keep]) for u in utts]
    cache = FeatureCache(spec.arch)
    # refuse, by name, utterances whose (possibly cropped) features are too short for their transcript
    for u in utts:
        frames = cache(u).shape[0] if spec.max_frames is None else min(cache(u).shape[0], spec.max_frames)
        check_feasible(u.id, u.target, int(output_lengths(spec.arch, torch.tensor([frames]))[0]))
    if case is not None:
        model, shared = case.model, case.shared
    elif spec.run:  # a folder in fedctl's run layout without config.yaml: its delta read as one SGD step
        from fedctl.attacks.case import run_update

        model, shared = run_update(spec.run, spec.run_round, spec.client, spec.arch, spec.preset, match=cfg.match,
                                   client_lr=spec.client_lr or 1.0, overrides=spec.model)
        utts = utts[: spec.batch_size]  # the one batch whose update the run saved
    else:
        shared = None
        model = load_victim(spec.arch, spec.preset, checkpoint=spec.checkpoint, seed=spec.victim_seed,
                            overrides=spec.model)
    settings = json.loads(json.dumps(asdict(spec), default=str))  # as settings.json holds them
    folder = attack_dir(spec.out)
    with folder.locked():
        if not overwrite:
            read_metrics(folder.path / "metrics.csv")  # a damaged table is refused before anything is rewritten
        folder.claim("attack", settings, settings_name="settings.json", volatile=RESUMABLE, overwrite=overwrite,
                     outputs=OUTPUTS, legacy=legacy_attack_folder)
        with (folder.path / "attack.log").open("a") as log_fh:
            return _attack_batches(spec, utts, model, shared, cache, settings, log_fh, progress,
                                   None if case is None else case.plan)


def _attack_batches(spec: AttackSpec, utts: list, model, shared: list[torch.Tensor] | None, cache: FeatureCache,
                    settings: dict, log_fh, progress: Callable[[str], None] | None, plan=None) -> dict:
    cfg = spec.attack
    out = Path(spec.out)
    metrics_path = out / "metrics.csv"
    rows = read_metrics(metrics_path)
    done = {r["utterance"] for r in rows}

    def log(msg: str) -> None:
        log_fh.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log_fh.flush()

    log("settings " + json.dumps(settings))
    skipped = 0
    batches = [utts[i: i + spec.batch_size] for i in range(0, len(utts), spec.batch_size)]
    for n_batch, batch in enumerate(batches):
        if all(u.id in done for u in batch):
            skipped += len(batch)
            continue
        ids = {u.id for u in batch}  # a batch partly done before (a larger --batch-end regrouped it): redone whole
        rows = [r for r in rows if r["utterance"] not in ids]
        feats = [cache(u) if spec.max_frames is None else cache(u)[: spec.max_frames] for u in batch]
        x, lengths, targets, target_lengths = collate(feats, [u.target for u in batch])
        if shared is not None:
            target = shared
        else:
            target = client_update(model, x, lengths, targets, target_lengths, match=cfg.match,
                                   defense=spec.defense, local_steps=spec.local_steps, local_lr=spec.local_lr)
        out_frames = output_lengths(spec.arch, lengths)
        unknowns = x.shape[2] * int(lengths.sum())
        if not cfg.transcripts:  # the alignment posteriors too: C − 1 free numbers per output frame
            unknowns += (output_layer(model).out_features - 1) * int(out_frames.sum())
        budget = sum(t.numel() for t in target) / float(unknowns)
        log(f"batch {n_batch}: {[u.id for u in batch]} ({x.shape[0]} frames, budget {budget:.1f} entries/unknown)")
        if progress:
            progress(f"[{n_batch + 1}/{len(batches)}] {', '.join(u.id for u in batch)}: {x.shape[0]} frames, "
                     f"{budget:.1f} gradient entries per unknown")
        known = (targets, target_lengths) if cfg.transcripts else (None, None)  # withheld: never reach the attack
        result = reconstruct(model, target, tuple(x.shape), lengths, *known, cfg, log=log, client=plan)
        hyps = None if cfg.transcripts else recovered_transcripts(model, result.features, lengths, result.alignment)
        for j, u in enumerate(batch):
            T = int(lengths[j])
            x_hat, x_true, x_init = result.features[:T, j], x[:T, j], result.init[:T, j]
            m = feature_metrics(x_hat, x_true, x_init)
            row = {"utterance": u.id, "duration_ms": u.duration_ms, "speaker": u.speaker, "method": cfg.method,
                   "defense": spec.defense.name, "restart": result.restart,
                   "grad_distance": f"{result.distance:.6g}", "feature_mae": f"{m['feature_mae']:.6g}",
                   "random_mae": f"{m['random_mae']:.6g}", "mae_ratio": f"{m['feature_mae'] / m['random_mae']:.6g}",
                   "cosine": f"{m['cosine']:.6g}", "snr_db": f"{m['snr_db']:.4g}", "iterations": result.iterations,
                   "seconds": f"{result.seconds / len(batch):.4g}", "frames": T, "budget": f"{budget:.4g}"}
            if hyps is not None:
                hyp, greedy = hyps[j]
                cer = error_rates([u.transcript], [hyp])["cer"] if u.transcript.strip() else float("nan")
                row["transcript_cer"] = f"{cer:.4g}"
                log(f"{u.id}: recovered transcript {hyp!r} (best path {greedy!r}; true {u.transcript!r}, CER {cer:.3g})")
            rows.append(row)
            torch_save({"x_hat": x_hat.clone(), "x_true": x_true.clone(), "x_init": x_init.clone(),
                        "speaker": u.speaker, "curve": result.curve,
                        **({} if hyps is None else {"transcript_hat": hyps[j][0],
                                                    "alignment": result.alignment[: int(out_frames[j]), j].clone()})},
                        out / "recon" / f"{u.id}.pt")
            if len(rows) <= spec.plots:
                _plot(out / "plots" / f"{u.id}.png", x_true, x_hat, result.curve,
                      f"{u.id} ({spec.arch}, {cfg.method}): MAE {m['feature_mae']:.3g} vs random "
                      f"{m['random_mae']:.3g}, cos {m['cosine']:.3f}")
            log(f"{u.id}: " + json.dumps(row))
        write_metrics(metrics_path, rows)  # atomic: a crash leaves the previous complete file
    summary = summarize(rows)
    summary.update({"out": str(out), "skipped": skipped, "attacked": len(rows) - skipped})
    return summary


def _mean(vals: list[float]) -> float:
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def duration_bin(ms: int) -> str:
    lo = (int(ms) // 1000) * 1000
    return f"{lo // 1000}-{lo // 1000 + 1}s"


def summarize(rows: list[dict]) -> dict:
    """Per duration bin (whole seconds): utterances and mean MAE, random MAE, ratio, cosine, SNR, seconds."""
    bins: dict[str, list[dict]] = {}
    for r in rows:
        bins.setdefault(duration_bin(int(r["duration_ms"])), []).append(r)
    out = {}
    for name, rs in sorted(bins.items()):
        out[name] = {"utterances": len(rs)}
        for key in ("feature_mae", "random_mae", "mae_ratio", "cosine", "snr_db", "seconds", "budget", "iterations"):
            out[name][key] = _mean([float(r[key]) for r in rs])
        cers = [float(r["transcript_cer"]) for r in rs if r.get("transcript_cer")]
        if cers:  # attacked without transcripts
            out[name]["transcript_cer"] = _mean(cers)
    return {"bins": out}


def read_settings(out_dir: str | Path) -> dict | None:
    """The `settings.json` that `run_attack` wrote into `out_dir`; None when there is none."""
    path = Path(out_dir) / "settings.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        settings = exc
    if not isinstance(settings, dict):
        raise FedctlError(f"{path} is not a fedctl attack settings file",
                          "re-run the attack (it resumes) to write it")
    return settings


def speaker_leakage(out_dirs: list[str | Path], corpus: list[str] | None, arch: str, min_dur: int = 0,
                    max_dur: int | None = None, frames: int | None = None) -> dict:
    """Top-1/top-5 speaker identification of the reconstructions in `out_dirs` (recon/*.pt), of their clean
    features and by chance, with a `SpeakerID` trained on the clean features of the corpus's other utterances:
    whole utterances, or, when the attack cropped to `frames` frames, every `frames`-frame window of them."""
    recs = {}
    crops = set()
    for d in out_dirs:
        for p in sorted((Path(d) / "recon").glob("*.pt")):
            recs[p.stem] = read_recon(p)
        settings = read_settings(d)
        if settings is not None:
            crops.add(settings.get("max_frames"))
    if frames is None and len(crops) > 1:
        raise FedctlError(f"the attack folders cropped features to different lengths ({sorted(crops, key=str)})",
                          "score each folder on its own, or pass --frames N")
    if frames is None and crops:
        frames = crops.pop()  # score at the length the attack reconstructed
    if not recs:
        raise FedctlError(f"no reconstructions under {', '.join(map(str, out_dirs))}/recon", "run the attack first")
    utts = load_corpus(corpus or [], min_dur=min_dur, max_dur=max_dur, text_norm=None)  # speakers only
    cache = FeatureCache(arch)
    train = [u for u in utts if u.id not in recs]
    if len({u.speaker for u in train}) < 2:
        raise FedctlError("too few other utterances to train the speaker model", "attack a subset of a larger corpus")
    feats, labels = [], []
    for u in train:
        w = windows(cache(u), frames)
        feats += w
        labels += [u.speaker] * len(w)
    ids = sorted(recs)
    spk = [recs[i]["speaker"] for i in ids]
    if len(set(spk)) < 2:
        # one speaker: a model that names that speaker for any input (noise included) scores 1.00
        raise FedctlError(f"the {len(ids)} scored reconstruction(s) all come from one speaker ({spk[0]}): "
                          "identification rates would not measure leakage",
                          "attack utterances of at least two speakers (e.g. --batch-stride N spreads the range)")
    sid = SpeakerID(feats, labels)
    return {"reconstructed": sid.topk([recs[i]["x_hat"] for i in ids], spk),
            "clean": sid.topk([recs[i]["x_true"] for i in ids], spk),
            "random_start": sid.topk([recs[i]["x_init"] for i in ids], spk),
            "prior": prior_topk(labels, spk), "chance": sid.chance(), "utterances": len(ids),
            "scored_speakers": len(set(spk)), "speakers": len(sid.classes), "train_examples": len(feats)}


def read_recon(path: Path) -> dict:
    """One `recon/<utterance>.pt`, checked: the speaker and the three [T, F] feature tensors that scoring reads."""
    rec = torch_load(path, what="reconstruction")
    hint = "the attack folder is damaged: move this file (and its metrics.csv row) away and re-run the attack"
    if not isinstance(rec, dict) or not isinstance(rec.get("speaker"), str):
        raise FedctlError(f"{path} is not a fedctl attack reconstruction (no speaker)", hint)
    for key in ("x_hat", "x_true", "x_init"):
        t = rec.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point() or t.shape[0] < 1:
            raise FedctlError(f"{path}: '{key}' is not a [frames, features] tensor", hint)
    return rec
