"""What unrolling the client's local SGD steps costs and buys (issue #12, `--local-steps N`): the quality case
ds1-h256-10f of `bench/attack_quality.py` (DS1 without activations, untrained, hidden 256, features cropped to 10
frames, 28.7 gradient entries per unknown; L-BFGS float64, 2 restarts, <= 300 evaluations, patience 100) with a
client that takes N SGD steps at `--local-lr` before sharing. Rows: the attacker unrolls the same N steps, and
(for N > 1) an attacker that ignores them (matches the update as if it were one gradient). Also the seconds per
objective evaluation against N = 1 (2 restarts, the same features). Writes `<out>/local_steps.md`.

    nice -n 10 python bench/attack_local_steps.py --out /tmp/ls --local-lr 0.03

Data: `fedctl data synth --speakers 12 --utterances 5 --seed 1` (made under `<out>/corpus` unless `--corpus`),
utterances of 1.0-2.5 s, every 15th of the first 75 (3 utterances, over speakers).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedctl.attacks.analysis import feature_metrics  # noqa: E402
from fedctl.attacks.attack import AttackConfig, _distance_and_grad, reconstruct  # noqa: E402
from fedctl.attacks.case import client_update, load_victim  # noqa: E402
from fedctl.attacks.objective import top_masks  # noqa: E402
from fedctl.attacks.runner import AttackSpec, select_utterances  # noqa: E402
from fedctl.tasks.asr.data import FeatureCache, collate  # noqa: E402

FRAMES = 10
ATTACK = AttackConfig(method="gradient", optimizer="lbfgs", restarts=2, max_iter=300, patience=100)


def _batches(corpus: Path, count: int):
    spec = AttackSpec(corpus=[str(corpus)], min_dur=1000, max_dur=2500, batch_start=0, batch_end=15 * count,
                      batch_stride=15)
    cache = FeatureCache("ds1")
    keep = FRAMES // 3  # --crop-transcript: a third of the output frames
    return [(u.id, collate([cache(u)[:FRAMES]], [u.target[:keep]])) for u in select_utterances(spec)]


def evaluation_seconds(model, batch, steps: int, lr: float, repeats: int = 3) -> float:
    """Seconds of one objective evaluation (distance and its feature gradient, 2 restarts), best of `repeats`."""
    x, lengths, targets, tlens = batch
    target = [t.double() for t in client_update(model, x, lengths, targets, tlens, local_steps=steps, local_lr=lr)]
    model64 = model.double() if next(model.parameters()).dtype != torch.float64 else model
    cfg = dataclasses.replace(ATTACK, local_steps=steps, local_lr=lr)
    R = cfg.restarts
    xs = torch.rand(x.shape[0], R, x.shape[2], dtype=torch.float64) * 2 - 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _distance_and_grad(model64, xs, lengths.repeat(R), targets.repeat(R, 1), tlens.repeat(R), R, target,
                           top_masks(target, 1.0), cfg)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--utterances", type=int, default=3)
    p.add_argument("--local-lr", type=float, default=0.03)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--max-iter", type=int, default=ATTACK.max_iter, help="evaluations per attack (20: a smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus or args.out / "corpus"
    if not corpus.exists():
        from fedctl.data.speech.synth import synth_corpus

        synth_corpus(corpus, speakers=12, utterances=5, seed=1)
    batches = _batches(corpus, args.utterances)
    model = load_victim("ds1", "tiny", overrides={"n_hidden": 256})
    theta = torch.cat([q.detach().flatten() for q in model.parameters()]).norm()
    t_start = time.perf_counter()
    per_eval = {n: evaluation_seconds(load_victim("ds1", "tiny", overrides={"n_hidden": 256}), batches[0][1], n,
                                      args.local_lr) for n in args.steps}
    lines = ["| client steps N | attacker unrolls | utts | weights moved (mean) | MAE ratio median [min, max] | "
             "cosine median | SNR dB median | evaluations (mean) | s/utt | s/evaluation (× N = 1) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for steps in args.steps:
        for unrolled in ([steps] if steps == 1 else [steps, 1]):
            ratios, cosines, snrs, iters, secs, moved = [], [], [], [], [], []
            for utt, (x, lengths, targets, tlens) in batches:
                everything = client_update(model, x, lengths, targets, tlens, match="all", local_steps=steps,
                                           local_lr=args.local_lr)
                scale = args.local_lr if steps > 1 else 0.0
                moved.append(scale * float(torch.cat([u.flatten() for u in everything]).norm() / theta))
                target = everything[-2:]  # out.weight, out.bias: --match last
                cfg = dataclasses.replace(ATTACK, local_steps=unrolled, local_lr=args.local_lr, max_iter=args.max_iter)
                r = reconstruct(model, target, tuple(x.shape), lengths, targets, tlens, cfg)
                m = feature_metrics(r.features[:, 0], x[:, 0], r.init[:, 0])
                ratios.append(m["feature_mae"] / m["random_mae"])
                cosines.append(m["cosine"])
                snrs.append(m["snr_db"])
                iters.append(r.iterations)
                secs.append(r.seconds)
                print(f"N={steps} unrolled={unrolled} {utt}: ratio {ratios[-1]:.3g} cos {cosines[-1]:.4f} "
                      f"{r.iterations} evaluations {r.seconds:.0f} s", file=sys.stderr, flush=True)
            lines.append(f"| {steps} | {unrolled} | {len(ratios)} | "
                         f"{f'{statistics.mean(moved):.3g}' if steps > 1 else '–'} | "
                         f"{statistics.median(ratios):.3g} [{min(ratios):.3g}, {max(ratios):.3g}] | "
                         f"{statistics.median(cosines):.4f} | {statistics.median(snrs):.1f} | "
                         f"{statistics.mean(iters):.0f} | {statistics.mean(secs):.0f} | "
                         f"{per_eval[unrolled]:.3f} ({per_eval[unrolled] / per_eval[args.steps[0]]:.1f}×) |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python bench/attack_local_steps.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        "# Unrolled local SGD steps: cost and quality (ds1-h256-10f)", "",
        f"Command: `{command.strip()}` ({(time.perf_counter() - t_start) / 60:.0f} min wall). Machine: "
        f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (load ~{load:.1f} at the end), "
        f"torch {torch.__version__}, 1 thread; seconds are pessimistic.",
        f"Client: N SGD steps at lr {args.local_lr:g} on its batch (weights moved = ‖θN − θ0‖ / ‖θ0‖). Attacker: "
        "L-BFGS float64, 2 restarts, <= 300 evaluations, patience 100, output layer, cosine; 'attacker unrolls 1' "
        "matches the N-step update as if it were one gradient. MAE ratio = MAE / the random start's MAE.", ""]
    text = "\n".join(header + lines) + "\n"
    (args.out / "local_steps.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
