"""Peer benchmark (issue #13): the same fedctl workload on fedctl's engine and on Flower, side by side.

Workload: `templates/mamba_tiny.yaml` (2-layer 64-wide Mamba2, 4 clients × 8 local steps, FedAvg, global
evaluation every round), ROUNDS rounds, each variant in a fresh process tree, all reaching the same weights:

  in-process    fedctl, run.workers=1: clients one after another in the server process
  workers       fedctl, run.workers=0: one worker process per core
  flower-sim    `fedctl train mamba --backend flower --federation sim`, a Flower connection with
                options.num-supernodes = 4 (Flower's simulation engine, Ray, 1 CPU per client)
  deploy-warm   a loopback deployment: flower-superlink + 4 × `fedctl train flower-node` (SuperNode with
                fedctl's warm ClientApp executor), submitted with --backend flower
  deploy-cold   the same with flwr's stock SuperNodes (a fresh ClientApp process per message), i.e. what
                Flower's own deployment costs for this app

Reported (bench_parallel's measurement: best of FEDCTL_BENCH_REPEATS interleaved repeats, default 1 here):
start-up s (launch → end of round 1, minus one steady round; for the deployments this includes starting the
SuperLink and SuperNodes), steady s/round (median over rounds ≥ 2), CPU s per steady round and peak PSS of
the whole process tree (Ray's and every Flower process included), each as a ratio to in-process.
The ClientApp compute per round is printed for the deployments (from the warm executor's log), to check the
latency goal: a round costs at most the clients' compute + 3 s.

    python bench/run.py --only flower      # ~6 min on 2 cores
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
CLIENTS = 4
VARIANTS = ["in-process", "workers", "flower-sim", "deploy-warm", "deploy-cold"]


def _child(variant: str, rounds: int, events: str, out: str) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from bench.bench_parallel import _recorder
    from fedctl.run import recipe

    sets = [f"federation.rounds={rounds}", f"federation.clients={CLIENTS}", f"run.out={out}"]
    if variant in ("in-process", "workers"):
        exp = recipe.resolve("mamba", "mamba_tiny", sets=sets + [f"run.workers={1 if variant == 'in-process' else 0}"])
        recipe.train(exp, on_event=_recorder(events))
        return
    from fedctl.flower.backend import run_on_flower

    home = Path(out).parent / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["FLWR_HOME"] = str(home)
    exp = recipe.resolve("mamba", "mamba_tiny", sets=sets)
    from fedctl.flower.loopback import free_port as _free_port
    from fedctl.flower.node import Node, NodeSpec

    port = _free_port()
    sim = variant == "flower-sim"
    # the SuperLink is this process's child, so its Ray simulation is measured with the rest of the tree
    # (`flwr run` on a connection without an address would start a detached one that outlives the run)
    (home / "config.toml").write_text(
        f'[superlink.loop]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        + (f"options.num-supernodes = {CLIENTS}\noptions.backend.client-resources.num-cpus = 1\n" if sim else ""))
    bindir = Path(sys.executable).parent
    logs = Path(out).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    link = subprocess.Popen([str(bindir / "flower-superlink"), "--insecure", "--port", str(port),
                             "--disable-runtime-dependency-installation", *(["--simulation"] if sim else [])],
                            stdout=open(logs / "superlink.log", "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                                 "FLWR_DISABLE_UPDATE_CHECK": "1"})
    nodes = []
    try:
        from fedctl.flower.node import wait_for_port

        wait_for_port(port, 60)
        if sim:
            run_on_flower(exp, "loop", resume=False, on_event=_recorder(events))
            return
        for k in range(CLIENTS):
            spec = NodeSpec(superlink=f"127.0.0.1:{port}", partition_id=k, num_partitions=CLIENTS, insecure=True,
                            port=_free_port(), cold=variant == "deploy-cold")
            nodes.append(Node(spec, logs / f"node{k}").start())
        run_on_flower(exp, "loop", resume=False, on_event=_recorder(events))
        compute = []
        for k in range(CLIENTS):
            log = logs / f"node{k}" / "executor.log"
            if log.exists():
                compute += [(int(r), float(s)) for r, s in
                            re.findall(r"\(train, round (\d+)\): pulled in [\d.]+ s, ClientApp ([\d.]+) s",
                                       log.read_text())]
        by_round: dict[int, float] = {}
        for r, s in compute:  # the round's compute: its slowest client (they train at the same time)
            by_round[r] = max(by_round.get(r, 0.0), s)
        with open(events, "a") as f:
            f.write('{"compute": %s}\n' % [by_round[r] for r in sorted(by_round)])
    finally:
        for node in nodes:
            node.stop()
        link.terminate()
        link.wait(timeout=30)


def main(quick: bool = False) -> dict:
    from bench.bench_parallel import measure

    try:
        import ray  # noqa: F401

        variants = list(VARIANTS)
        skipped = None
    except ImportError:
        variants = [v for v in VARIANTS if v != "flower-sim"]
        skipped = "flower-sim skipped: Ray is not installed (pip install 'flwr[simulation]==1.41.0')"
        print(skipped)
    repeats = 1 if quick else int(os.environ.get("FEDCTL_BENCH_REPEATS", "1"))
    rounds = 3 if quick else ROUNDS
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            r = measure(v, rounds if v != "deploy-cold" else min(rounds, 3), module="bench.bench_flower")
            runs[v].append(r)
            print(f"   {v:<12} start-up {r['startup_s']:5.1f} s | steady {r['steady_s']:5.2f} s/round "
                  f"({r['steady_cpu_s']:5.2f} CPU s) | peak PSS {r['peak_pss_mb']:6.0f} MB | rounds "
                  + " ".join(f"{x:.1f}" for x in r["round_s"]) + (f" | compute {r['compute']}" if r.get("compute") else ""),
                  flush=True)
    best = {v: {"startup_s": min(r["startup_s"] for r in rs), "steady_s": min(r["steady_s"] for r in rs),
                "steady_cpu_s": min(r["steady_cpu_s"] for r in rs), "peak_pss_mb": max(r["peak_pss_mb"] for r in rs),
                "processes": max(r["processes"] for r in rs),
                "steady_compute_s": min((statistics.median(r["compute"][1:]) for r in rs if r.get("compute")),
                                        default=None)}
            for v, rs in runs.items()}
    return {"rounds": rounds, "repeats": repeats, "runs": runs, "best": best, "skipped": skipped}


def report(results: dict) -> None:
    best = results["best"]
    base = best["in-process"]
    print(f"mamba_tiny, {CLIENTS} clients × 8 local steps, {results['rounds']} rounds (deploy-cold: ≤ 3); "
          f"best of {results['repeats']}")
    print(f"   {'':<12} {'start-up s':>10} {'steady s/round':>15} {'CPU s/round':>12} {'peak PSS MB':>12} {'procs':>6}"
          f"   ratios to in-process (start-up / steady / peak)")
    for v, b in best.items():
        print(f"   {v:<12} {b['startup_s']:10.1f} {b['steady_s']:15.2f} {b['steady_cpu_s']:12.2f} {b['peak_pss_mb']:12.0f}"
              f" {b['processes']:6d}   {b['startup_s'] / base['startup_s']:5.2f}× / {b['steady_s'] / base['steady_s']:5.2f}×"
              f" / {b['peak_pss_mb'] / base['peak_pss_mb']:5.2f}×")
    for v in ("deploy-warm", "deploy-cold"):
        b = best.get(v)
        if b and b["steady_compute_s"] is not None:
            print(f"   {v}: steady round {b['steady_s']:.2f} s = clients' compute {b['steady_compute_s']:.2f} s "
                  f"+ {b['steady_s'] - b['steady_compute_s']:.2f} s (goal: + ≤ 3 s)")
    if results.get("skipped"):
        print("   " + results["skipped"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    report(main(quick="--quick" in sys.argv))
