"""Parallel clients (issue: beat Flower's simulation engine on one machine), measured side by side.

The workload is `templates/mamba_tiny.yaml` (2-layer 64-wide Mamba2, 4 clients, 8 local steps, FedAvg,
global evaluation every round) for a few rounds, run three ways, each in a fresh process:

  sequential   fedctl, run.workers=1: clients train one after another in the server process
  workers      fedctl, run.workers=0 (auto: one worker process per core, one torch thread each)
  flower-sim   the same fedctl task and strategy as a Flower ServerApp + ClientApp on flwr's
               simulation engine (Ray; one CPU per client, so two clients at once on two cores)

Reported per variant (best of the interleaved repeats — FEDCTL_BENCH_REPEATS, default 2 — because other jobs
share these cores):
  start-up s   launch → end of round 1, minus one steady round: imports, task build, worker start
  steady s     median seconds per round over rounds ≥ 2 (end-to-end: training, aggregation, evaluation)
  CPU s        CPU seconds (user + system) of the whole process tree per steady round: what the work costs,
               independent of how much of the machine other jobs leave us
  peak MB      peak of the summed PSS (proportional set size: shared pages split between the processes
               that map them, so forked workers are not double-counted) over the whole process tree,
               sampled every 0.2 s; RSS summed the same way is shown for reference.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5


# ---- the measured child processes ------------------------------------------------------------------

def _recorder(path: str):
    from fedctl.core.events import RoundFinished

    def on_event(event):
        if isinstance(event, RoundFinished):
            with open(path, "a") as f:
                f.write(json.dumps({"round": event.server_round, "t": time.time()}) + "\n")

    return on_event


def _child(variant: str, rounds: int, events: str, out: str) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sets = [f"federation.rounds={rounds}", f"run.out={out}"]
    if variant in ("sequential", "workers"):
        from fedctl.run import recipe

        exp = recipe.resolve("mamba", "mamba_tiny", sets=sets + [f"run.workers={1 if variant == 'sequential' else 0}"])
        recipe.train(exp, on_event=_recorder(events))
        return
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedctl.flower.client_app import app as client_app
    from fedctl.flower.server_app import run_server

    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        run_server(grid, {"fedctl-config": "mamba_tiny", "fedctl-out": out, "fedctl-set": " ".join(sets[:1])},
                   on_event=_recorder(events))

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


# ---- the measuring parent ------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


def _cpu_seconds(pid: int, last: float) -> float:
    """user + system CPU seconds of one process from /proc/PID/stat (`last` if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return last


def measure(variant: str, rounds: int = ROUNDS, module: str = "bench.bench_parallel") -> dict:
    """Run `module._child(variant, ...)` in a fresh process and measure its whole process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        code = (f"from {module} import _child; _child({variant!r}, {rounds}, {str(events)!r}, "
                f"{str(Path(tmp) / 'run')!r})")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
        log = open(Path(tmp) / "log.txt", "w")
        t_launch = time.time()
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: Ray's helpers included
        peak = {"pss": 0, "rss": 0, "procs": 0}
        cpu_by_pid: dict[int, float] = {}  # last seen user+system seconds (kept after a process exits)
        cpu_trace: list[tuple[float, float]] = []  # (wall time, CPU seconds of the whole tree so far)
        done = threading.Event()

        def sample():
            while not done.is_set():
                pids = _tree(proc.pid)
                for p in pids:
                    cpu_by_pid[p] = _cpu_seconds(p, cpu_by_pid.get(p, 0.0))
                cpu_trace.append((time.time(), sum(cpu_by_pid.values())))
                mem = [_memory_kb(p) for p in pids]
                pss, rss = sum(m[0] for m in mem), sum(m[1] for m in mem)
                if pss > peak["pss"]:
                    peak.update(pss=pss, procs=len(pids))
                peak["rss"] = max(peak["rss"], rss)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = proc.wait(timeout=900)
        finally:
            done.set()
            sampler.join()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything of this run still alive (e.g. Ray daemons)
            except ProcessLookupError:
                pass
            log.close()
        if rc != 0:
            tail = (Path(tmp) / "log.txt").read_text()[-3000:]
            raise RuntimeError(f"{variant} exited with {rc}:\n{tail}")
        records = [json.loads(line) for line in events.read_text().splitlines()]
        ends = [r["t"] for r in records if "t" in r]
        compute = next((r["compute"] for r in records if "compute" in r), None)  # bench_flower's deployments
    per_round = [b - a for a, b in zip(ends, ends[1:])]
    steady = statistics.median(per_round)

    def cpu_at(t):
        return next((c for ts, c in cpu_trace if ts >= t), cpu_trace[-1][1])

    cpu_round = [cpu_at(b) - cpu_at(a) for a, b in zip(ends, ends[1:])]
    return {"variant": variant, "startup_s": ends[0] - t_launch - steady, "steady_s": steady,
            "steady_cpu_s": statistics.median(cpu_round),
            "round_s": [ends[0] - t_launch] + per_round, "peak_pss_mb": peak["pss"] / 1024,
            "peak_rss_mb": peak["rss"] / 1024, "processes": peak["procs"], "compute": compute}


def main(quick: bool = False) -> dict:
    variants = ["sequential", "workers"]
    try:
        import flwr.simulation  # noqa: F401
        import ray  # noqa: F401

        variants.append("flower-sim")
        skipped = None
    except ImportError as exc:
        skipped = f"flower-sim skipped: {exc.name} is not installed (pip install 'flwr[simulation]==1.41.0')"
        print(skipped)
    repeats = 1 if quick else int(os.environ.get("FEDCTL_BENCH_REPEATS", "2"))
    rounds = 3 if quick else ROUNDS
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(repeats):  # interleaved, so load from other jobs hits every variant alike
        for v in variants:
            runs[v].append(measure(v, rounds))
            print(f"   {v:<11} start-up {runs[v][-1]['startup_s']:5.1f} s | steady {runs[v][-1]['steady_s']:5.2f} s/round"
                  f" ({runs[v][-1]['steady_cpu_s']:5.2f} CPU s) | peak PSS {runs[v][-1]['peak_pss_mb']:6.0f} MB", flush=True)
    best = {v: {"startup_s": min(r["startup_s"] for r in rs), "steady_s": min(r["steady_s"] for r in rs),
                "steady_cpu_s": min(r["steady_cpu_s"] for r in rs),
                "peak_pss_mb": max(r["peak_pss_mb"] for r in rs), "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "processes": max(r["processes"] for r in rs)} for v, rs in runs.items()}
    return {"rounds": rounds, "repeats": repeats, "runs": runs, "best": best, "skipped": skipped}


def report(results: dict) -> None:
    best = results["best"]
    w = best["workers"]
    print(f"mamba_tiny, 4 clients × 8 local steps, {results['rounds']} rounds; best of {results['repeats']} interleaved runs")
    print(f"   {'':<11} {'start-up s':>10} {'steady s/round':>15} {'CPU s/round':>12} {'peak PSS MB':>12} {'(RSS MB)':>9} {'procs':>6}")
    for v, b in best.items():
        print(f"   {v:<11} {b['startup_s']:10.2f} {b['steady_s']:15.2f} {b['steady_cpu_s']:12.2f} {b['peak_pss_mb']:12.0f} "
              f"{b['peak_rss_mb']:9.0f} {b['processes']:6d}")
    runs = results["runs"]
    if len(runs.get("workers", [])) > 1:  # each repeat's variants ran back to back: their ratios share the load
        for other in [v for v in runs if v != "workers"]:
            paired = [w["steady_s"] / o["steady_s"] for w, o in zip(runs["workers"], runs[other])]
            print(f"   paired steady ratios workers / {other}, per repeat: "
                  + ", ".join(f"{r:.2f}" for r in paired) + f" (median {statistics.median(paired):.2f})")
    s = best["sequential"]
    print(f"   workers / sequential: steady {w['steady_s'] / s['steady_s']:.2f}× (target ≤ 0.6), "
          f"peak {w['peak_pss_mb'] / s['peak_pss_mb']:.2f}×")
    if "flower-sim" in best:
        f = best["flower-sim"]
        print(f"   workers / flower-sim: steady {w['steady_s'] / f['steady_s']:.2f}× (target ≤ 0.75), "
              f"start-up {w['startup_s'] / f['startup_s']:.2f}× (target ≤ 0.5), "
              f"peak {w['peak_pss_mb'] / f['peak_pss_mb']:.2f}× (target ≤ 0.5)")
    elif results.get("skipped"):
        print("   " + results["skipped"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    report(main(quick="--quick" in sys.argv))
