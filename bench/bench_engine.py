"""Engine benchmarks, each comparison measured side by side in one run:

(a) FedAvg aggregation of K=8 updates of ~70M float32 parameters: GB/s of fedctl's streaming mean vs
    a plain memory copy of the same bytes vs flwr.server.strategy.aggregate.aggregate;
(b) peak resident memory of two engine rounds at K=2 vs K=16 clients (separate processes, /proc VmHWM);
(c) engine overhead: federated Mamba (K clients × E local steps) vs a plain loop of the same steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedctl.core.strategies import ClientUpdate, build_strategy

MODEL_SHAPES = [(4096, 4096)] * 4 + [(1024, 1024)] * 3 + [(2048,)] * 4  # 70.25M parameters


def make_state(seed: int, shapes=MODEL_SHAPES) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(*s, generator=gen) for i, s in enumerate(shapes)}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_aggregation(k: int = 8, repeat: int = 3, shapes=MODEL_SHAPES) -> dict:
    updates = [make_state(i, shapes) for i in range(k)]
    global_state = {n: torch.zeros_like(t) for n, t in updates[0].items()}
    nbytes = sum(t.numel() * t.element_size() for t in updates[0].values()) * k
    examples = [100 + 10 * i for i in range(k)]

    workspace = {n: torch.empty_like(t) for n, t in global_state.items()}

    def fedctl_mean():
        # as in the engine from round 2 on: the previous global's buffers are recycled as the accumulator
        build_strategy("fedavg").aggregate_fit(
            1, global_state, (ClientUpdate(str(i), u, n) for i, (u, n) in enumerate(zip(updates, examples))),
            workspace=workspace)

    dst = {n: torch.empty_like(t) for n, t in global_state.items()}

    def memcpy():
        for u in updates:
            for n, t in u.items():
                dst[n].copy_(t)

    t_fedctl = best_of(fedctl_mean, repeat)
    t_copy = best_of(memcpy, repeat)
    row = {"k": k, "parameters": sum(t.numel() for t in global_state.values()), "gigabytes": nbytes / 1e9,
           "fedctl_gbps": nbytes / t_fedctl / 1e9, "memcpy_gbps": nbytes / t_copy / 1e9}
    try:
        from flwr.server.strategy.aggregate import aggregate

        results = [([t.numpy() for t in u.values()], n) for u, n in zip(updates, examples)]
        t_flwr = best_of(lambda: aggregate(results), max(1, repeat - 1))
        row["flwr_gbps"] = nbytes / t_flwr / 1e9
        row["fedctl_vs_flwr"] = row["fedctl_gbps"] / row["flwr_gbps"]
    except ImportError:
        row["flwr_gbps"] = None  # install the flower extra to compare
    row["fedctl_vs_memcpy"] = row["fedctl_gbps"] / row["memcpy_gbps"]
    return row


# ---- (b) peak memory: one engine run per process, RSS high-water mark -----------------------------

def _peak_memory_child(k: int, shapes) -> dict:
    from torch import nn

    from fedctl.core.config import FederationConfig
    from fedctl.core.engine import run_federated
    from fedctl.core.task import FitResult

    class Synthetic:
        """A 70M-parameter model whose local training is a cheap seeded perturbation."""

        name = "synthetic"

        def build_model(self):
            m = nn.ParameterDict({f"t{i}": nn.Parameter(torch.zeros(*s)) for i, s in enumerate(shapes)})
            m.requires_grad_(False)
            return m

        def shared_keys(self, model):
            return list(model.state_dict())

        def client_ids(self):
            return [f"c{i}" for i in range(k)]

        def fit(self, model, client_id, cfg):
            for p in model.parameters():
                p.add_(float(cfg.client_index + 1))
            return FitResult(num_examples=10 + cfg.client_index)

        def evaluate(self, model, client_id=None):
            return {}

    from bench.memory import peak_mb, reset_peak, rss_mb

    base = rss_mb()  # after imports, before any model exists
    reset_peak()
    t0 = time.perf_counter()
    run_federated(Synthetic(), build_strategy("fedavg"), FederationConfig(rounds=2, clients=k), seed=0)
    seconds = time.perf_counter() - t0
    return {"k": k, "peak_mb": peak_mb() - base, "seconds": seconds}


def bench_peak_memory(ks=(2, 16), shapes=MODEL_SHAPES) -> dict:
    model_mb = sum(torch.Size(s).numel() for s in shapes) * 4 / 2**20
    rows = []
    for k in ks:
        code = ("import json,sys; from bench.bench_engine import _peak_memory_child, MODEL_SHAPES;"
                f"print(json.dumps(_peak_memory_child({k}, {list(shapes)!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"model_mb": model_mb, "rows": rows,
            "growth_k_mb": rows[-1]["peak_mb"] - rows[0]["peak_mb"],
            "growth_in_models": (rows[-1]["peak_mb"] - rows[0]["peak_mb"]) / model_mb}


# ---- (c) engine overhead on the real Mamba workload ------------------------------------------------

def bench_overhead(clients: int = 4, local_updates: int = 8, rounds: int = 3, repeat: int = 2) -> dict:
    import tempfile

    from fedctl.core.config import FederationConfig
    from fedctl.core.engine import run_federated
    from fedctl.core.task import TaskContext, client_seed
    from fedctl.tasks.mamba import MambaConfig, MambaTask

    cfg = MambaConfig(local_updates=local_updates, eval_batches=1, demo_sentences=3000)
    with tempfile.TemporaryDirectory() as tmp:
        task = MambaTask(cfg, TaskContext(num_clients=clients, seed=0, device=torch.device("cpu"), run_dir=Path(tmp)))
        fed = FederationConfig(rounds=rounds, clients=clients, eval_every=10_000, checkpoint_every=10_000)

        def engine():
            run_federated(task, build_strategy("fedavg"), fed, seed=0)

        def plain():
            # the same K × E steps on the same batches (the trainer's documented schedule), written out:
            # no broadcast, aggregation or evaluation
            from fedctl.core.local import schedule

            model, t = task.build_model(), task.training
            for r in range(1, rounds + 1):
                for k, cid in enumerate(task.client_ids()):
                    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
                    gen = torch.Generator().manual_seed(client_seed(0, r, k))
                    for group in schedule(t, task.train_items(cid), gen):
                        for items in group:
                            task.loss(model, task.make_batch(cid, items, gen))[0].backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                        opt.step()
                        opt.zero_grad(set_to_none=True)

        engine()  # warm-up (allocator, kernels)
        t_plain, t_engine = float("inf"), float("inf")
        for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
            t_plain = min(t_plain, best_of(plain, 1))
            t_engine = min(t_engine, best_of(engine, 1))
    steps = clients * local_updates * rounds
    return {"clients": clients, "local_updates": local_updates, "rounds": rounds, "steps": steps,
            "plain_s": t_plain, "engine_s": t_engine, "overhead": t_engine / t_plain}


def main(quick: bool = False) -> dict:
    shapes = [(1024, 1024)] * 8 if quick else MODEL_SHAPES
    results = {
        "aggregation": bench_aggregation(k=8, repeat=2 if quick else 3, shapes=shapes),
        "peak_memory": bench_peak_memory(shapes=shapes),
        "overhead": bench_overhead(rounds=2 if quick else 3, repeat=1 if quick else 2),
    }
    a, m, o = results["aggregation"], results["peak_memory"], results["overhead"]
    print(f"(a) FedAvg of K={a['k']} × {a['parameters'] / 1e6:.1f}M float32 ({a['gigabytes']:.2f} GB read)")
    print(f"    fedctl {a['fedctl_gbps']:.2f} GB/s | memcpy {a['memcpy_gbps']:.2f} GB/s | "
          f"flwr aggregate {a['flwr_gbps'] or float('nan'):.2f} GB/s")
    print(f"    fedctl / memcpy = {a['fedctl_vs_memcpy']:.2f}× (target ≥ 0.5)   "
          f"fedctl / flwr = {a.get('fedctl_vs_flwr', float('nan')):.1f}× (target ≥ 20)")
    print(f"(b) peak RSS growth over two engine rounds, model = {m['model_mb']:.0f} MB: "
          + ", ".join(f"K={r['k']}: {r['peak_mb']:.0f} MB ({r['peak_mb'] / m['model_mb']:.2f} models)" for r in m["rows"]))
    print(f"    growth K=2 → K=16 = {m['growth_k_mb']:.0f} MB = {m['growth_in_models']:.2f} models (target ≤ 1)")
    print(f"(c) {o['steps']} Mamba steps ({o['clients']} clients × {o['local_updates']} steps × {o['rounds']} rounds): "
          f"plain loop {o['plain_s']:.2f} s | engine {o['engine_s']:.2f} s | overhead {o['overhead']:.3f}× (target ≤ 1.10)")
    return results


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(quick="--quick" in sys.argv)
