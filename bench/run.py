"""Runs every benchmark in one process and prints their side-by-side ratios.

    python bench/run.py [--quick] [--only engine,merge,speech,parallel,flower] [--json out.json]
    python bench/run.py --gpu [--dry] [--out DIR]    # the bounded GPU check (bench/gpu_check.py)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SUITES = {"engine": "bench.bench_engine", "fisher": "bench.bench_fisher", "merge": "bench.bench_merge",
          "speech": "bench.bench_speech", "hubert": "bench.bench_hubert", "parallel": "bench.bench_parallel",
          "flower": "bench.bench_flower", "attack": "bench.bench_attack", "kmeans_scale": "bench.bench_kmeans_scale",
          "downstream": "bench.bench_downstream", "drift": "bench.bench_drift", "tracking": "bench.bench_tracking"}


def main() -> None:
    if "--gpu" in sys.argv[1:]:
        from bench.gpu_check import main as gpu_check

        gpu_check([a for a in sys.argv[1:] if a != "--gpu"])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(SUITES))
    parser.add_argument("--gpu", action="store_true", help="run the bounded GPU check instead (bench/gpu_check.py)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write all numbers to this file")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SUITES)
    results = {}
    for name in chosen:
        try:
            module = importlib.import_module(SUITES[name])
        except ModuleNotFoundError as exc:
            print(f"== {name}: skipped ({exc.name} not available)")
            continue
        print(f"== {name}", flush=True)
        results[name] = module.main(quick=args.quick)
        if hasattr(module, "report"):  # suites whose main() returns numbers without printing them
            module.report(results[name])
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
