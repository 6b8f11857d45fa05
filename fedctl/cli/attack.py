"""`fedctl attack ds1|ds2`: reconstruct a client's speech features from the gradient it shares.

Threat model (honest-but-curious server): the attacker holds the victim's weights and BatchNorm buffers,
one client's shared update (FedSGD: its gradient on one batch; `--local-steps N`: N SGD steps on that
batch, which the attacker unrolls), that client's transcripts and input lengths, and reconstructs the
input features. Client dropout masks are unknown to it; BatchNorm runs in the same mode with the same
buffers for client and attacker. With `--no-transcripts` the attacker lacks the transcripts and recovers
them too (features and CTC alignments; `fedctl.attacks.objective.alignment_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedctl.cli.console import err, out, print_json, saved
from fedctl.cli.options import JsonOpt
from fedctl.utils import record

THREAT = ("Threat model: the attacker (server) holds the victim's weights and BatchNorm buffers, one client's "
          "shared update (FedSGD: its gradient on one batch; --local-steps N: N SGD steps on that batch, which the "
          "attacker unrolls), that client's transcripts and input lengths, and reconstructs "
          "the input features (DS1: 26 MFCCs per 20 ms frame; DS2: 257-bin normalized log-STFT). The client's "
          "dropout masks are unknown to it. Defences are applied by the client before sharing. With "
          "--no-transcripts the transcripts are withheld (input lengths stay known): the attacker recovers the "
          "features and the CTC alignments together (gradient method), reads the transcript off the alignments, "
          "and metrics.csv reports its CER.")

app = typer.Typer(help="Gradient-inversion attacks on DeepSpeech 1/2 clients.\n\n" + THREAT, no_args_is_help=True,
                  rich_markup_mode="rich")

_EPILOG = ("Examples:\n\n"
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


# AttackSpec key → the flag that sets it: errors name what the user typed (`--seeds`, not attack.restarts)
FLAGS = {"min_dur": "--min-dur", "max_dur": "--max-dur", "batch_start": "--batch-start", "batch_end": "--batch-end",
         "text_norm": "--text-norm", "batch_size": "--batch-size", "batch_stride": "--batch-stride", "model": "--preset/--hidden",
         "run_round": "--round", "client_lr": "--client-lr", "victim_seed": "--victim-seed",
         "local_steps": "--local-steps", "local_lr": "--local-lr", "out": "--out", "max_frames": "--max-frames",
         "crop_transcript": "--crop-transcript",
         **{f"defense.{k}": f"--defense-{k}" for k in ("dropout", "prune", "clip", "noise")},
         **{f"attack.{k}": f"--{k.replace('_', '-')}" for k in (
             "method", "optimizer", "dtype", "lr", "lr_step", "max_iter", "patience", "distance", "distance_weight",
             "match", "top_grad_fraction", "seed", "hfgm_directions", "hfgm_plateau")},
         "attack.restarts": "--seeds", "attack.transcripts": "--transcripts"}


def _command(arch: str):
    def command(
        corpus: Annotated[list[Path] | None, typer.Option("--corpus", help="LibriSpeech tree(s), fairseq/CSV manifest(s) or local HF dataset(s).")] = None,
        text_norm: Annotated[str, typer.Option("--text-norm", help="Transcripts of the attacked utterances: strict, fold or fold-spell-numbers.")] = "strict",
        parts: Annotated[Path | None, typer.Option("--parts", help="Partition folder (fedctl data partition).")] = None,
        client: Annotated[str | None, typer.Option("--client", help="Attack this client of --parts.")] = None,
        min_dur: Annotated[int, typer.Option("--min-dur", help="Duration bin start, ms (inclusive).")] = 1000,
        max_dur: Annotated[int, typer.Option("--max-dur", help="Duration bin end, ms (exclusive).")] = 2000,
        batch_start: Annotated[int, typer.Option("--batch-start", help="First utterance index in the bin.")] = 0,
        batch_end: Annotated[int, typer.Option("--batch-end", help="End utterance index (exclusive).")] = 100,
        batch_stride: Annotated[int, typer.Option("--batch-stride", help="Take every n-th utterance of the range.")] = 1,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Utterances per client batch.")] = 1,
        method: Annotated[str, typer.Option("--method", help="gradient (2nd-order CTC) or hfgm (zero-order).")] = "gradient",
        optimizer: Annotated[str, typer.Option("--optimizer", help="Gradient method: lbfgs, or adam (the reference's).")] = "lbfgs",
        dtype: Annotated[str, typer.Option("--dtype", help="Attacker arithmetic: float64 (L-BFGS needs it) or float32.")] = "float64",
        lr: Annotated[float, typer.Option("--lr", help="Adam learning rate, or HFGM's initial radius (L-BFGS: unused).")] = 0.5,
        lr_step: Annotated[int, typer.Option("--lr-step", help="Halve the learning rate every N iterations.")] = 250,
        max_iter: Annotated[int, typer.Option("--max-iter", help="Iterations per utterance.")] = 2000,
        patience: Annotated[int, typer.Option("--patience", help="Stop after N iterations without improvement.")] = 300,
        seeds: Annotated[int, typer.Option("--seeds", help="Restarts, run together as one batch.")] = 10,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random starts.")] = 0,
        top_grad_fraction: Annotated[float, typer.Option("--top-grad-fraction", help="Keep the largest-|g| entries.")] = 1.0,
        distance: Annotated[str, typer.Option("--distance", help="cosine, l2 or cosine+l2.")] = "cosine",
        distance_weight: Annotated[float, typer.Option("--distance-weight", help="w of w·cos + (1−w)·MSE.")] = 1.0,
        match: Annotated[str, typer.Option("--match", help="last (output layer, as the reference) or all.")] = "last",
        transcripts: Annotated[bool, typer.Option("--transcripts/--no-transcripts", help="Attacker holds the client's transcripts; --no-transcripts: it recovers them too (gradient method).")] = True,
        preset: Annotated[str, typer.Option("--preset", help="Model preset: tiny, small or reference.")] = "tiny",
        hidden: Annotated[int | None, typer.Option("--hidden", help="Override the model's n_hidden.")] = None,
        checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Victim weights: a round .pt, best.pt, a run folder, final/ or final/hf of fedctl train asr.")] = None,
        run: Annotated[Path | None, typer.Option("--run", help="A fedctl train asr run: attack a client's saved update.")] = None,
        round_: Annotated[int | None, typer.Option("--round", help="With --run: the round of the update.")] = None,
        client_lr: Annotated[float, typer.Option("--client-lr", help="With --run: the client's learning rate.")] = 1.0,
        victim_seed: Annotated[int, typer.Option("--victim-seed", help="Seed of an untrained victim.")] = 0,
        hfgm_directions: Annotated[int, typer.Option("--hfgm-directions", help="HFGM perturbations per step.")] = 127,
        hfgm_plateau: Annotated[int, typer.Option("--hfgm-plateau", help="HFGM plateau window (iterations).")] = 2500,
        defense_dropout: Annotated[float, typer.Option("--defense-dropout", help="Client dropout p.")] = 0.0,
        defense_prune: Annotated[float, typer.Option("--defense-prune", help="Fraction of smallest entries zeroed.")] = 0.0,
        defense_clip: Annotated[float, typer.Option("--defense-clip", help="Global L2 clip C of the update.")] = 0.0,
        defense_noise: Annotated[float, typer.Option("--defense-noise", help="Gaussian noise σ (× C when clipping).")] = 0.0,
        local_steps: Annotated[int, typer.Option("--local-steps", help="Client local SGD steps on its batch, unrolled by the attacker (1: FedSGD).")] = 1,
        local_lr: Annotated[float, typer.Option("--local-lr", help="Client local SGD learning rate (with --local-steps > 1).")] = 1.0,
        max_frames: Annotated[int | None, typer.Option("--max-frames", help="Crop features to N frames.")] = None,
        crop_transcript: Annotated[bool, typer.Option("--crop-transcript", help="With --max-frames: keep the first (output frames)//3 characters (budget experiments).")] = False,
        out_dir: Annotated[Path, typer.Option("--out", help="Output folder (metrics.csv, plots/, recon/).")] = Path("attack_out"),
        overwrite: AttackOverwriteOpt = False,
        json_: JsonOpt = False,
        threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch (default 1: more threads slow "
                                             "small victims down on a busy machine; reference sizes: your cores).")] = 1,
    ) -> None:
        from fedctl.attacks.runner import attack_spec, run_attack

        _threads(threads)
        spec = attack_spec({
            "arch": arch, "preset": preset, "model": {"n_hidden": hidden} if hidden is not None else {},
            "corpus": [str(c) for c in corpus or []], "text_norm": text_norm, "parts": str(parts) if parts else None, "client": client,
            "min_dur": min_dur, "max_dur": max_dur, "batch_start": batch_start, "batch_end": batch_end,
            "batch_size": batch_size, "batch_stride": batch_stride,
            "checkpoint": str(checkpoint) if checkpoint else None, "run": str(run) if run else None,
            "run_round": round_, "client_lr": client_lr, "victim_seed": victim_seed, "local_steps": local_steps,
            "local_lr": local_lr,
            "defense": {"dropout": defense_dropout, "prune": defense_prune, "clip": defense_clip,
                        "noise": defense_noise},
            "attack": {"method": method, "optimizer": optimizer, "dtype": dtype, "restarts": seeds, "lr": lr,
                       "lr_step": lr_step, "max_iter": max_iter, "patience": patience, "distance": distance,
                       "distance_weight": distance_weight, "match": match, "top_grad_fraction": top_grad_fraction,
                       "seed": seed, "hfgm_directions": hfgm_directions, "hfgm_plateau": hfgm_plateau,
                       "transcripts": transcripts},
            "out": str(out_dir), "max_frames": max_frames, "crop_transcript": crop_transcript,
        }, label=lambda key: FLAGS.get(key, key))
        summary = run_attack(spec, progress=lambda m: err.print(m, highlight=False), overwrite=overwrite)
        record.attach(out_dir)  # the attack folder's run.log + meta.json
        if json_:
            print_json(summary)
            return
        _render(summary, arch, method)
        saved(out_dir / "metrics.csv", "metrics")

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
