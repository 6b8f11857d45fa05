"""Gradient-inversion attack cost: restarts batched vs a sequential loop, and seconds per iteration at the
reference model sizes on CPU.

1. Restarts: 8 restarts of `fedctl attack ds1` (tiny preset, one 1 s synthetic utterance = 50 frames, cosine
   output-layer matching) run as one batch vs a Python loop of 8 single-restart attacks, same iterations.
2. Per iteration at reference sizes (DS1 122.7 M parameters, DS2 41.7 M), one restart, 1 s of features:
   output-layer matching (the reference) and all-layer matching. On CUDA, all-layer matching needs cuDNN
   off (`double_backward_safe`): cuDNN RNNs have no double backward (pytorch#5261); output-layer matching
   needs only a first-order backward through the RNN. No GPU was available to measure that here.

    python bench/bench_attack.py            # both parts
    python bench/bench_attack.py --quick    # part 1 only, fewer iterations
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedctl.attacks.attack import AttackConfig, reconstruct  # noqa: E402
from fedctl.attacks.case import client_update, load_victim  # noqa: E402
from fedctl.tasks.asr.data import collate  # noqa: E402

TARGET = [20, 8, 15, 15, 1, 23, 15, 18, 12, 4]  # "hello world" class ids
# the optimiser and arithmetic these figures were measured with (README); the default is now L-BFGS in
# float64, whose evaluation costs the same batched forward/double backward, in float64
OPTIM = dict(optimizer="adam", dtype="float32")


def _case(arch: str, frames: int, preset: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    nfeat = 26 if arch == "ds1" else 257
    x = torch.randn(frames, nfeat, generator=gen) * (10 if arch == "ds1" else 1)
    x, lengths, targets, tlens = collate([x], [TARGET])
    model = load_victim(arch, preset, seed=0)
    return model, x, lengths, targets, tlens


DEFAULT = dict(optimizer="lbfgs", dtype="float64")  # the attack's default since L-BFGS replaced Adam


def restarts_batched_vs_loop(iterations: int, restarts: int = 8, optim: dict | None = None) -> dict:
    model, x, lengths, targets, tlens = _case("ds1", 50, "tiny")
    shared = client_update(model, x, lengths, targets, tlens)
    optim = optim or OPTIM
    cfg = dict(max_iter=iterations, patience=10**6, **optim)
    t0 = time.perf_counter()
    batched = reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, AttackConfig(restarts=restarts, **cfg))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = [reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, AttackConfig(restarts=1, seed=s, **cfg))
            for s in range(restarts)]
    t_loop = time.perf_counter() - t0
    return {"optimizer": f"{optim['optimizer']} {optim['dtype']}", "restarts": restarts, "iterations": iterations,
            "batched_s": t_batched, "loop_s": t_loop,
            "speedup": t_loop / t_batched, "batched_best": batched.distance, "loop_best": min(r.distance for r in loop)}


def per_iteration(arch: str, match: str, iterations: int = 2) -> dict:
    model, x, lengths, targets, tlens = _case(arch, 50, "reference")
    shared = client_update(model, x, lengths, targets, tlens, match=match)
    cfg = AttackConfig(restarts=1, max_iter=1, match=match, patience=10**6, **OPTIM)
    reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, cfg)  # warm-up
    cfg.max_iter = iterations
    t0 = time.perf_counter()
    reconstruct(model, shared, tuple(x.shape), lengths, targets, tlens, cfg)
    params = sum(p.numel() for p in model.parameters())
    return {"arch": arch, "match": match, "params_M": params / 1e6, "s_per_iter": (time.perf_counter() - t0) / iterations}


def main(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    out = {"restarts": [restarts_batched_vs_loop(10 if quick else 30, optim=o) for o in (DEFAULT, OPTIM)]}
    if not quick:
        out["reference"] = [per_iteration(a, m) for a in ("ds1", "ds2") for m in ("last", "all")]
    return out


def report(result: dict) -> None:
    for r in result["restarts"]:
        print(f"restarts ({r['optimizer']}): {r['restarts']} batched {r['batched_s']:.1f} s vs loop {r['loop_s']:.1f} s "
              f"over {r['iterations']} iterations -> {r['speedup']:.1f}x (target >= 2x)")
    for row in result.get("reference", []):
        print(f"{row['arch']} reference ({row['params_M']:.1f} M params), match {row['match']}: "
              f"{row['s_per_iter']:.2f} s/iteration (CPU, 1 thread, 1 s = 50 frames)")


if __name__ == "__main__":
    res = main(quick="--quick" in sys.argv)
    report(res)
