"""`data kmeans` at 1, 4 and 16 audio hours: peak RSS and audio hours per minute, beside in-memory MiniBatchKMeans.

    python bench/bench_kmeans_scale.py [--hours 1,4,16] [--out bench/results/kmeans_scale]
    python bench/run.py --only kmeans_scale [--quick]

What is measured: the k-means path of `learn_kmeans_labels` (audio read, features dumped to per-client shards, a
seeded fit sample of at most --max-fit-frames, labels streamed block by block), each size in a fresh subprocess so
VmHWM (bench/memory.py) is that run's own peak. Audio is cheap noise written once with soundfile (16 distinct 15 s
WAVs, hard-linked to fill the corpus: real files, real headers, page cache warm). Features come from a stub
extractor (a seeded 39-dim Gaussian mixture per utterance, no MFCC) so that the numbers are the k-means path's and
not MFCC's: MFCC extraction is per-batch (flat memory, linear time) and its rate is in bench_speech.py.
The baseline is the plain recipe: every frame in one array, MiniBatchKMeans.fit on all of it, predict all, with the
same hyperparameters (clusters, n_init, max_iter, batch), on the same features (the shards run 1 kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UTT_SECONDS = 15
CLIENTS = 8
SETTINGS = {"clusters": 100, "n_init": 3, "max_iter": 20, "max_fit_frames": 200_000, "label_rate": 50}


class StubExtractor:
    """39-dim frames at 100 Hz from a 50-component Gaussian mixture, seeded by the utterance length and order."""

    rate = 100
    name = "stub gaussian mixture (bench)"

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        self.means = np.random.default_rng(0).normal(0, 3, size=(50, 39)).astype(np.float32)
        self.calls = 0

    def batch(self, audios):
        import torch

        out = []
        for a in audios:
            rng = self.np.random.default_rng(self.calls)
            self.calls += 1
            frames = (len(a) - 400) // 160 + 1
            comp = rng.integers(0, 50, frames)
            out.append(torch.from_numpy(self.means[comp] + rng.normal(size=(frames, 39)).astype(self.np.float32)))
        return out


def make_corpus(tmp: Path, hours: float) -> Path:
    """A partition folder (client manifests + summary.json) of `hours` of 15 s utterances over CLIENTS clients."""
    import numpy as np
    import soundfile as sf

    wavs = tmp / "wav"
    wavs.mkdir(exist_ok=True)
    sources = []
    for i in range(16):
        path = wavs / f"src{i}.wav"
        if not path.exists():
            audio = np.random.default_rng(i).normal(0, 0.05, UTT_SECONDS * 16000).astype(np.float32)
            sf.write(path, audio, 16000, subtype="PCM_16")
        sources.append(path)
    n_utts = int(round(hours * 3600 / UTT_SECONDS))
    parts = tmp / f"parts_{hours:g}h"
    parts.mkdir()
    per_client = []
    for c in range(CLIENTS):
        rows = []
        for j in range(c, n_utts, CLIENTS):
            link = wavs / f"u{j}.wav"
            if not link.exists():
                os.link(sources[j % 16], link)
            rows.append({"id": f"u{j}", "path": str(link), "num_samples": UTT_SECONDS * 16000,
                         "duration": UTT_SECONDS, "sample_rate": 16000, "speaker": f"s{j % 40}",
                         "split": "val" if j % 10 == 0 else "train"})
        name = f"client_{c:03d}"
        (parts / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        per_client.append({"client_id": name, "manifest": f"{name}.jsonl"})
    (parts / "summary.json").write_text(json.dumps({"per_client": per_client}))
    return parts


def run_fedctl(parts: str, out: str) -> dict:
    """One `learn_kmeans_labels` run (in this process); prints a JSON line with its timings and peak RSS."""
    sys.path.insert(0, str(ROOT))
    from bench.memory import peak_mb
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels

    cfg = KmeansConfig(clusters=SETTINGS["clusters"], scope="global", label_rate=SETTINGS["label_rate"],
                       n_init=SETTINGS["n_init"], max_iter=SETTINGS["max_iter"],
                       max_fit_frames=SETTINGS["max_fit_frames"], keep_features=True)
    t0 = time.perf_counter()
    result = learn_kmeans_labels(parts, out, cfg, extractor=StubExtractor())
    wall = time.perf_counter() - t0
    s = result.summary
    return {"wall_s": wall, "peak_rss_mb": peak_mb(), "audio_hours": s["audio_hours"],
            "timing_s": s["timing_seconds"], "fit_frames": s["models"]["global"]["fit_frames"],
            "speaker_nmi": s["speaker_metrics"]["nmi"]}


def run_baseline(out: str) -> dict:
    """Plain in-memory MiniBatchKMeans on the shards that the fedctl run kept."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    from bench.memory import peak_mb

    t0 = time.perf_counter()
    feats = np.concatenate([np.load(p) for p in sorted(Path(out, "features").glob("*.npy"))])
    km = MiniBatchKMeans(n_clusters=SETTINGS["clusters"], init="k-means++", max_iter=SETTINGS["max_iter"],
                         batch_size=10000, compute_labels=False, tol=0.0, max_no_improvement=100,
                         n_init=SETTINGS["n_init"], reassignment_ratio=0.0, random_state=0)
    with threadpool_limits(1):
        km.fit(feats)
        labels = km.predict(feats)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": peak_mb(), "frames": int(len(feats)), "labels": int(len(labels))}


def _child(kind: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, f"--{kind}", *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(quick: bool = False, hours: tuple[float, ...] = (1, 4, 16), out_dir: str | None = None) -> dict:
    if quick:
        hours = (0.05, 0.2)
    results = {"settings": {**SETTINGS, "clients": CLIENTS, "utterance_seconds": UTT_SECONDS,
                            "machine": f"{os.cpu_count()} cores, shared (loaded)", "load_before": os.getloadavg()},
               "runs": []}
    with tempfile.TemporaryDirectory(prefix="fedctl-bench-kmeans-", dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        for h in hours:
            parts = make_corpus(tmp, h)
            out = tmp / f"labels_{h:g}h"
            ours = _child("fedctl", str(parts), str(out))
            base = _child("baseline", str(out))
            row = {"hours": h, "fedctl": ours, "in_memory": base,
                   "fedctl_hours_per_min": ours["audio_hours"] / (ours["wall_s"] / 60),
                   "fedctl_kmeans_hours_per_min": ours["audio_hours"] / (ours["timing_s"]["fit_and_label"] / 60),
                   "in_memory_hours_per_min": ours["audio_hours"] / (base["wall_s"] / 60),
                   "load": os.getloadavg()}
            results["runs"].append(row)
            print(f"{h:>5g} h  fedctl peak {ours['peak_rss_mb']:7.0f} MB  {row['fedctl_hours_per_min']:6.2f} h/min "
                  f"(k-means part {row['fedctl_kmeans_hours_per_min']:6.2f})  |  in-memory peak "
                  f"{base['peak_rss_mb']:7.0f} MB  {row['in_memory_hours_per_min']:6.2f} h/min  load {row['load'][0]:.1f}",
                  flush=True)
            for p in (out / "features").glob("*.npy"):
                p.unlink()
    runs = results["runs"]
    results["fedctl_peak_ratio_last_vs_first"] = runs[-1]["fedctl"]["peak_rss_mb"] / runs[0]["fedctl"]["peak_rss_mb"]
    results["in_memory_peak_ratio_last_vs_first"] = (runs[-1]["in_memory"]["peak_rss_mb"]
                                                     / runs[0]["in_memory"]["peak_rss_mb"])
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--fedctl":
        print(json.dumps(run_fedctl(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--baseline":
        print(json.dumps(run_baseline(sys.argv[2])))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--hours", default="1,4,16")
        parser.add_argument("--quick", action="store_true")
        parser.add_argument("--out", default=None, help="write results.json here")
        args = parser.parse_args()
        r = main(quick=args.quick, hours=tuple(float(h) for h in args.hours.split(",")), out_dir=args.out)
        print(f"peak RSS ratio, largest/smallest: fedctl {r['fedctl_peak_ratio_last_vs_first']:.2f}, "
              f"in-memory {r['in_memory_peak_ratio_last_vs_first']:.2f}")
