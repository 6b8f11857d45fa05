"""The research table: is a federated (by-speaker) HuBERT as good as a central one downstream, and what does
distillation cost? On the synth corpus at CPU size: pretrain tiny HuBERT centrally, federated IID and federated by
speaker (same total optimizer steps), distil one student from the central teacher, then probe each plus the
random-init and MFCC/fbank baselines on PR, SID, KS and ASR (frozen, SUPERB heads), seeds, mean ± std.

    python bench/downstream.py                                  # the full CPU table (long: schedule it)
    python bench/downstream.py --rounds 4 --probe-steps 40 --seeds 0 --probes pr,sid   # a small version
    python bench/downstream.py --report-only                    # tabulate the finished cells

Resumable: every upstream run and every probe cell is a folder / JSON under --out; finished ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRIC = {"pr": ("val_per", "PER ↓"), "sid": ("val_acc", "SID acc ↑"), "ks": ("test_acc", "KS test acc ↑"),
          "asr": ("val_cer", "ASR CER ↓")}  # KS: the keyword corpus's test split (SUPERB reports test; val is also kept)


def train(task: str, out: Path, config: str | None, flags: dict, sets: list[str], central: bool = False) -> Path:
    from fedctl.run import recipe

    if (out / "final" / "hf").is_dir():
        return out / "final" / "hf"
    exp = recipe.resolve(task, config, flags={"run": {"out": str(out)}, **flags}, sets=sets, central=central)
    recipe.train(exp)
    return out / "final" / "hf"


def upstreams(args, out: Path) -> dict[str, tuple[str, bool]]:
    """(name -> (upstream, random_init), the 1-client partition the central probes read); pretrains what is missing."""
    from fedctl.data.speech.demo import demo_partition
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels
    from fedctl.data.speech.partition import partition_librispeech

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    parts = demo_partition(data, args.clients, args.speakers, args.utterances, print)
    corpus = parts.parent / parts.name.split("-parts")[0]
    iid = data / "iid"
    if not (iid / "summary.json").is_file():
        partition_librispeech([corpus], iid, clients=args.clients, by="iid", seed=0)
    one = data / "central"
    if not (one / "summary.json").is_file():
        partition_librispeech([corpus], one, clients=1, by="speaker", seed=0)
    km = {}
    for name, p in (("speaker", parts), ("iid", iid), ("central", one)):
        km[name] = data / f"{name}-km"
        if not (km[name] / "summary.json").is_file():
            learn_kmeans_labels(p, km[name], KmeansConfig(clusters=20, scope="global", label_rate=50, seed=0))
    base = ["task.unmasked_weight=1.0", "task.mask_prob=0.5", "task.mask_length=2", "run.workers=1",
            f"task.local_updates={args.local_updates}", "federation.eval_every=1000000"]
    total = args.rounds * args.clients * args.local_updates  # same total optimizer steps everywhere
    central = train("hubert", out / "up_central", "hubert_tiny", {"task": {"parts": str(one), "labels": str(km["central"])}},
                    [*base, f"federation.rounds={total // args.local_updates}"], central=True)
    fed = {name: train("hubert", out / f"up_fed_{name}", "hubert_tiny",
                       {"task": {"parts": str(p), "labels": str(km[name])}},
                       [*base, f"federation.rounds={args.rounds}", f"federation.clients={args.clients}"])
           for name, p in (("iid", iid), ("speaker", parts))}
    student = train("distill", out / "up_distil", None,
                    {"task": {"teacher": str(central), "parts": str(one), "labels": str(km["central"])}},
                    ["task.student_layers=1", "run.workers=1", f"task.local_updates={args.local_updates}",
                     f"federation.rounds={total // args.local_updates // 2}", "federation.eval_every=1000000"],
                    central=True)
    return {"hubert central": (str(central), False), "hubert fed IID": (str(fed["iid"]), False),
            "hubert fed by speaker": (str(fed["speaker"]), False), "distilled (1 layer)": (str(student), False),
            "random init": (str(central), True), "mfcc": ("mfcc", False), "fbank": ("fbank", False)}, one


def probe_cell(args, out: Path, name: str, upstream: str, random_init: bool, probe: str, seed: int, parts: Path) -> dict:
    from fedctl.run import recipe

    cell = out / "cells" / f"{name.replace(' ', '_')}-{probe}-{seed}.json"
    if cell.is_file():
        return json.loads(cell.read_text())
    run = out / "probes" / cell.stem
    task = {"upstream": upstream, "random_init": random_init, "probe": probe, "cache_dir": str(out / "cache")}
    if probe != "ks":
        task["parts"] = str(parts)
    else:  # one keyword corpus for every cell (not one per run directory)
        from fedctl.tasks.downstream.data import demo_keywords

        task["keywords"] = str(demo_keywords(out / "data", args.speakers, print))
    sets = ["run.workers=1", f"federation.rounds={args.probe_rounds}", f"task.local_updates={args.probe_steps}",
            "task.proj_dim=64", "task.lstm_hidden=64", "task.lstm_layers=1", "task.layer_norm=true",
            f"task.lr={1e-2 if probe != 'asr' else 3e-3}", f"run.seed={seed}", "federation.eval_every=1000000",
            f"task.demo_speakers={args.speakers}"]
    t0 = time.perf_counter()
    exp = recipe.resolve("downstream", None, flags={"run": {"out": str(run)}, "task": task}, sets=sets, central=True)
    final = recipe.final_metrics(recipe.train(exp).result)
    metric = METRIC[probe][0] if METRIC[probe][0] in final else "val_acc"
    row = {"upstream": name, "probe": probe, "seed": seed, "value": final[metric], "metric": metric,
           "val": {k: v for k, v in final.items() if k.startswith(("val_", "test_"))},
           "seconds": time.perf_counter() - t0, "layer_weights": [v for k, v in final.items() if k.startswith("layer_w")]}
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(row))
    return row


def report(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    probes = [p for p in METRIC if any(r["probe"] == p for r in rows)]
    names = list(dict.fromkeys(r["upstream"] for r in rows))
    lines = ["| upstream | " + " | ".join(METRIC[p][1] for p in probes) + " |", "|---" * (len(probes) + 1) + "|"]
    for name in names:
        cells = []
        for p in probes:
            vals = [r["value"] for r in rows if r["upstream"] == name and r["probe"] == p]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f} (n={len(vals)})" if vals else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/downstream")
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--utterances", type=int, default=12)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=25, help="federated pretraining rounds (central: same total steps)")
    ap.add_argument("--local-updates", type=int, default=4)
    ap.add_argument("--probe-rounds", type=int, default=1)
    ap.add_argument("--probe-steps", type=int, default=150)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--probes", default="pr,sid,ks,asr")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.report_only:
        import torch

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        ups, parts = upstreams(args, out)
        print(f"upstreams ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        probes, seeds = args.probes.split(","), [int(s) for s in args.seeds.split(",")]
        order = [(n, p, s) for n in ups for p in probes if p != "asr" for s in seeds]
        order += [(n, "asr", s) for s in seeds for n in ups] if "asr" in probes else []  # BiLSTM cells: ~20x, last
        for name, probe, seed in order:
            up, ri = ups[name]
            row = probe_cell(args, out, name, up, ri, probe, seed, parts)
            print(f"{name:>22} {probe:>4} seed {seed}: {row['value']:.3f} ({row['seconds']:.0f} s)", flush=True)
        print(f"wall time {time.perf_counter() - t0:.0f} s (loaded: shared 2-core machine)")
    print(report(out))


if __name__ == "__main__":
    main()
