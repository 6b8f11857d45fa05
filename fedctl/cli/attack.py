"""`fedctl attack ds1|ds2`: reconstruct a client's speech features from the gradient it shares.

Threat model (honest-but-curious server): the attacker holds the victim's weights and BatchNorm buffers,
one client's shared update (FedSGD: its gradient on one batch; `--local-steps N`: N SGD steps on that
batch, which the attacker unrolls), that client's transcripts and input lengths, and reconstructs the
input features. Client dropout masks are unknown to it; BatchNorm runs in the same mode with the same
buffers for client and attacker. With `--no-transcripts` the attacker lacks the transcripts and recovers
them too (features and CTC alignments; `fedctl.attacks.objective.alignment_loss`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedctl.cli.console import err, out, print_json, saved
from fedctl.cli.options import JsonOpt, SetOpt
from fedctl.cli.train import _annotation, _flag_value
from fedctl.core.config import Flag
from fedctl.utils import record

THREAT = ("Threat model: the attacker (server) holds the victim's weights and BatchNorm buffers, one client's "
          "shared update (FedSGD: its gradient on one batch; --local-steps N: N SGD steps on that batch, which the "
          "attacker unrolls; --run: a real run's client, replayed exactly: its optimizer, schedule and micro-batches), "
          "that client's transcripts and input lengths, and reconstructs "
          "the input features (DS1: 26 MFCCs per 20 ms frame; DS2: 257-bin normalized log-STFT). The client's "
          "dropout masks are unknown to it. Defences are applied by the client before sharing. With "
          "--no-transcripts the transcripts are withheld (input lengths stay known): the attacker recovers the "
          "features and the CTC alignments together (gradient method), reads the transcript off the alignments, "
          "and metrics.csv reports its CER.")

app = typer.Typer(help="Gradient-inversion attacks on DeepSpeech 1/2 clients.\n\n" + THREAT, no_args_is_help=True,
                  rich_markup_mode="rich")

_EPILOG = ("Examples:\n\n"
           "  fedctl attack ds1 --config attack_ds1_tiny --set attack.max_iter=50\n\n"
           "  fedctl data synth --out corpus/ --speakers 4 --utterances 6\n\n"
           "  fedctl attack {arch} --corpus corpus/ --min-dur 1000 --max-dur 2000 --batch-end 5 --seeds 4 "
           "--max-iter 500 --out atk/\n\n"
           "  fedctl attack {arch} --corpus corpus/ --method hfgm --max-iter 2000 --out atk_hfgm/\n\n"
           "  fedctl attack {arch} --corpus corpus/ --defense-clip 1 --defense-noise 0.01 --out atk_dp/\n\n"
           "  fedctl attack {arch} --corpus corpus/ --no-transcripts --out atk_notext/\n\n"
           "  fedctl attack {arch} --corpus corpus/ --local-steps 4 --local-lr 0.5 --out atk_local/\n\n"
           "Re-running the same command resumes: utterances already in metrics.csv are skipped (a larger "
           "--batch-end attacks more). Other settings into the same --out are refused, naming them: choose "
           "another --out, or --overwrite to replace that folder's attack results.")

AttackOverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="--out holds attack results of other settings: replace them (fedctl's own files only; "
    "the same settings resume without it).")]


# The attack's flags, declared next to the AttackSpec key each sets (as the training commands declare theirs):
# the command's options are generated from it, and errors name what the user typed (`--seeds`, not attack.restarts).
ATTACK_FLAGS = (
    Flag("corpus", "--corpus", "LibriSpeech tree(s), fairseq/CSV manifest(s) or local HF dataset(s).", list),
    Flag("text_norm", "--text-norm", "Transcripts of the attacked utterances: strict, fold or fold-spell-numbers."),
    Flag("parts", "--parts", "Partition folder (fedctl data partition)."),
    Flag("client", "--client", "Attack this client of --parts (or of --run)."),
    Flag("min_dur", "--min-dur", "Duration bin start, ms (inclusive). [default: 1000]", int),
    Flag("max_dur", "--max-dur", "Duration bin end, ms (exclusive). [default: 2000]", int),
    Flag("batch_start", "--batch-start", "First utterance index in the bin. [default: 0]", int),
    Flag("batch_end", "--batch-end", "End utterance index (exclusive). [default: 100]", int),
    Flag("batch_stride", "--batch-stride", "Take every n-th utterance of the range. [default: 1]", int),
    Flag("batch_size", "--batch-size", "Utterances per client batch. [default: 1]", int),
    Flag("attack.method", "--method", "gradient (2nd-order CTC) or hfgm (zero-order). [default: gradient]"),
    Flag("attack.optimizer", "--optimizer", "Gradient method: lbfgs, or adam (the reference's). [default: lbfgs]"),
    Flag("attack.dtype", "--dtype", "Attacker arithmetic: float64 (L-BFGS needs it) or float32. [default: float64]"),
    Flag("attack.lr", "--lr", "Adam learning rate, or HFGM's initial radius (L-BFGS: unused). [default: 0.5]", float),
    Flag("attack.lr_step", "--lr-step", "Halve the learning rate every N iterations. [default: 250]", int),
    Flag("attack.max_iter", "--max-iter", "Iterations per utterance. [default: 2000]", int),
    Flag("attack.patience", "--patience", "Stop after N iterations without improvement. [default: 300]", int),
    Flag("attack.restarts", "--seeds", "Restarts, run together as one batch. [default: 10]", int),
    Flag("attack.seed", "--seed", "Seed of the random starts. [default: 0]", int),
    Flag("attack.top_grad_fraction", "--top-grad-fraction", "Keep the largest-|g| entries. [default: 1.0]", float),
    Flag("attack.distance", "--distance", "cosine, l2 or cosine+l2. [default: cosine]"),
    Flag("attack.distance_weight", "--distance-weight", "w of w·cos + (1−w)·MSE. [default: 1.0]", float),
    Flag("attack.match", "--match", "last (output layer, as the reference) or all. [default: last]"),
    Flag("attack.transcripts", "--transcripts", "Attacker holds the client's transcripts; --no-transcripts: it "
         "recovers them too (gradient method). [default: on]", bool),
    Flag("preset", "--preset", "Model preset: tiny, small or reference. [default: tiny]"),
    Flag("model.n_hidden", "--hidden", "Override the model's n_hidden.", int),
    Flag("checkpoint", "--checkpoint", "Victim weights: a round .pt, best.pt, a run folder, final/ or final/hf of "
         "fedctl train asr."),
    Flag("run", "--run", "A fedctl train asr run: attack a client's saved update, replaying that client exactly."),
    Flag("run_round", "--round", "With --run: the round of the update.", int),
    Flag("client_lr", "--client-lr", "With --run of a folder without config.yaml: the client's learning rate "
         "(a fedctl run's config sets it).", float),
    Flag("victim_seed", "--victim-seed", "Seed of an untrained victim. [default: 0]", int),
    Flag("attack.hfgm_directions", "--hfgm-directions", "HFGM perturbations per step. [default: 127]", int),
    Flag("attack.hfgm_plateau", "--hfgm-plateau", "HFGM plateau window (iterations). [default: 2500]", int),
    *(Flag(f"defense.{k}", f"--defense-{k}", h, float) for k, h in (
        ("dropout", "Client dropout p."), ("prune", "Fraction of smallest entries zeroed."),
        ("clip", "Global L2 clip C of the update."), ("noise", "Gaussian noise σ (× C when clipping)."))),
    Flag("local_steps", "--local-steps", "Simulated client: local SGD steps on its batch, unrolled by the attacker "
         "(1: FedSGD). [default: 1]", int),
    Flag("local_lr", "--local-lr", "Simulated client: local SGD learning rate. [default: 1.0]", float),
    Flag("max_frames", "--max-frames", "Crop features to N frames.", int),
    Flag("crop_transcript", "--crop-transcript", "With --max-frames: keep the first (output frames)//3 characters "
         "(budget experiments).", bool, const=True),
    Flag("out", "--out", "Output folder (metrics.csv, plots/, recon/). [default: attack_out]"),
)
FLAGS = {f.key: f.flag for f in ATTACK_FLAGS} | {"model": "--preset/--hidden"}


def _command(arch: str):
    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, typer.Option("--config", "-c", help="Attack YAML: a path or a shipped template name "
                                     "(`fedctl train templates`); flags override it.")]),
        inspect.Parameter("sets", inspect.Parameter.KEYWORD_ONLY, annotation=SetOpt, default=None),
        *(inspect.Parameter(f"f_{i}", inspect.Parameter.KEYWORD_ONLY, annotation=_annotation(f),
                            default=False if (f.type is bool and f.const is not None) else None)
          for i, f in enumerate(ATTACK_FLAGS)),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=AttackOverwriteOpt, default=False),
        inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, annotation=JsonOpt, default=False),
        inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=1, annotation=Annotated[int, typer.Option(
            "--threads", help="CPU threads for torch (default 1: more threads slow small victims down on a busy "
            "machine; reference sizes: your cores).")]),
    ]

    def command(**kwargs) -> None:
        from fedctl.attacks.runner import resolve_spec, run_attack

        _threads(kwargs["threads"])
        flags: dict = {}
        for i, f in enumerate(ATTACK_FLAGS):
            value = _flag_value(f, kwargs[f"f_{i}"])
            if value is None:
                continue
            node = flags
            *parents, last = f.key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = [str(v) for v in value] if f.type is list else value
        spec = resolve_spec(arch, kwargs["config"], flags, kwargs["sets"], label=lambda key: FLAGS.get(key, key))
        summary = run_attack(spec, progress=lambda m: err.print(m, highlight=False), overwrite=kwargs["overwrite"])
        record.attach(spec.out)  # the attack folder's run.log + meta.json
        if kwargs["json_"]:
            print_json(summary)
            return
        _render(summary, arch, spec.attack.method)
        saved(Path(spec.out) / "metrics.csv", "metrics")

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = f"Reconstruct a client's {arch.upper()} input features from its shared gradient."
    return command


def _threads(threads: int) -> None:
    """torch's intra-op threads for the attack: several threads on a loaded 2-core machine made a 15 s attack
    take 150-300 s (OpenMP workers spinning against other jobs), so the default is one."""
    import torch

    from fedctl.errors import FedctlError

    if threads < 1:
        raise FedctlError(f"--threads {threads} is not a number of threads", "use 1 (the default) or more")
    torch.set_num_threads(threads)


def _render(summary: dict, arch: str, method: str) -> None:
    table = Table(title=f"{arch} {method}: per duration bin ({summary['skipped']} resumed from metrics.csv)")
    cer = any("transcript_cer" in b for b in summary["bins"].values())  # attacked without transcripts
    for col in ("bin", "utts", "budget", "MAE", "random MAE", "ratio", "cosine", "SNR dB", "s/utt") + (("CER",) * cer):
        table.add_column(col, justify="right")
    for name, b in summary["bins"].items():
        table.add_row(name, str(b["utterances"]), f"{b['budget']:.1f}×", f"{b['feature_mae']:.3g}",
                      f"{b['random_mae']:.3g}", f"{b['mae_ratio']:.3g}", f"{b['cosine']:.3f}", f"{b['snr_db']:.1f}",
                      f"{b['seconds']:.1f}", *([f"{b.get('transcript_cer', float('nan')):.3f}"] * cer))
    out.print(table)


for _arch in ("ds1", "ds2"):
    app.command(name=_arch, epilog=_EPILOG.format(arch=_arch))(_command(_arch))


@app.command(epilog="Examples:\n\n  fedctl attack speakers atk_ds1/ --corpus corpus/\n\n"
                     "  fedctl attack speakers atk_none/ atk_dp/ --corpus corpus/ --frames 10")
def speakers(
    attack_dirs: Annotated[list[Path], typer.Argument(help="Output folder(s) of fedctl attack (with recon/).")],
    corpus: Annotated[list[Path], typer.Option("--corpus", help="The corpus the attack read (LibriSpeech layout).")],
    frames: Annotated[int | None, typer.Option("--frames", help="Score N-frame windows (default: the attack's "
                                                "--max-frames, or whole utterances).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Speaker leakage: top-1/top-5 identification of the reconstructed features, next to the clean features,
    the random starts and chance. The speaker model (logistic regression on per-utterance MFCC mean/std) is
    trained on the clean features of the corpus's other utterances, as windows of the scored length."""
    from fedctl.attacks.runner import speaker_leakage
    from fedctl.errors import FedctlError

    arch = _attack_arch(attack_dirs)
    if frames is not None and frames < 1:
        raise FedctlError(f"--frames {frames} is not a positive number of frames", "e.g. --frames 10, or omit it")
    res = speaker_leakage([str(d) for d in attack_dirs], [str(c) for c in corpus], arch, frames=frames)
    if json_:
        print_json(res)
        return
    table = Table(title=f"speaker identification: {res['utterances']} reconstructions of {res['scored_speakers']} "
                        f"speakers; model of {res['speakers']} speakers trained on {res['train_examples']} clean "
                        "windows (95% Wilson intervals)")
    for col in ("features", "top-1", "95% CI", "top-5", "95% CI"):
        table.add_column(col, justify="right")

    def ci(r: dict, k: str) -> str:
        return f"[{r[k][0]:.2f}, {r[k][1]:.2f}]" if k in r else ""

    for name, label in (("reconstructed", "reconstructed"), ("clean", "clean"), ("random_start", "random start"),
                        ("prior", "frequency prior"), ("chance", "uniform chance")):
        r = res[name]
        table.add_row(label, f"{r['top1']:.2f}", ci(r, "top1_ci"), f"{r['top5']:.2f}", ci(r, "top5_ci"))
    out.print(table)
    err.print("frequency prior: always guessing the k speakers most frequent in the model's training windows; "
              "a rate below it shows no leakage", highlight=False)


def _attack_arch(dirs: list[Path]) -> str:
    """The architecture the attack folders were made with (settings.json), one for all."""
    from fedctl.attacks.runner import read_settings
    from fedctl.errors import FedctlError

    archs = set()
    for d in dirs:
        if not (d / "recon").is_dir():
            raise FedctlError(f"{d} holds no reconstructions (recon/)", "pass the --out folder of fedctl attack ds1|ds2")
        settings = read_settings(d)
        if settings is None or not isinstance(settings.get("arch"), str):
            raise FedctlError(f"{d / 'settings.json'} is missing or not a fedctl attack settings file",
                              "re-run the attack (it resumes) to write it")
        archs.add(settings["arch"])
    if len(archs) != 1:
        raise FedctlError(f"the attack folders mix architectures ({', '.join(sorted(archs))})",
                          "score ds1 and ds2 attacks separately")
    return archs.pop()


@app.command(epilog="Examples:\n\n  fedctl attack sweep --config attack_sweep_tiny --corpus corpus/ --out sweep_tiny/")
def sweep(
    config: Annotated[str, typer.Option("--config", "-c", help="Sweep YAML (see templates/attack_sweep_tiny.yaml).")],
    corpus: Annotated[list[Path], typer.Option("--corpus", help="LibriSpeech-layout tree(s).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder, one subfolder per cell.")] = Path("attack_sweep"),
    overwrite: AttackOverwriteOpt = False,
    json_: JsonOpt = False,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch (default 1: more threads slow "
                                         "small victims down on a busy machine; reference sizes: your cores).")] = 1,
) -> None:
    """Method × defence × duration bin: MAE ratio to the random start and speaker top-1/top-5."""
    from fedctl.attacks.sweep import run_sweep

    _threads(threads)
    from fedctl.utils.templates import resolve_template

    rows = run_sweep(resolve_template(config), [str(c) for c in corpus], out_dir,
                     progress=lambda m: err.print(m, highlight=False), overwrite=overwrite)
    record.attach(out_dir)
    if json_:
        print_json(rows)
        return
    table = Table(title="attack sweep (speaker ID: reconstructed / clean / frequency prior / uniform chance)")
    for col in ("method", "defence", "bin", "utts", "budget", "MAE ratio", "SNR dB", "s/utt", "top-1", "top-5"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["method"], r["defense"], r["bin"], str(r["utterances"]), f"{r['budget']:.1f}×",
                      f"{r['mae_ratio']:.3g}", f"{r['snr_db']:.1f}", f"{r['seconds']:.1f}",
                      f"{r['speaker_top1']:.2f} / {r['clean_top1']:.2f} / {r['prior_top1']:.2f} / {r['chance_top1']:.2f}",
                      f"{r['speaker_top5']:.2f} / {r['clean_top5']:.2f} / {r['prior_top5']:.2f} / {r['chance_top5']:.2f}")
    out.print(table)
    saved(out_dir / "sweep.csv", "sweep table")
