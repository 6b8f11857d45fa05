"""Frozen-upstream probing cost (tiny HuBERT preset, synth corpus, one run, ratios; the CPU is shared: "loaded").

- extraction: utterances/s of the workload's frozen feature extraction (`Upstream.hidden_states`: every hidden
  state, float32, stacked) vs a plain `HubertModel(x, output_hidden_states=True)` loop over the same audio;
  target >= 0.9x.
- probe epoch: one pass over the training utterances from the cache vs the same pass recomputing the upstream
  forward for each batch (what an uncached probe does: a plain frozen forward of each utterance, its frames
  packed float32 straight into the same head, batch size and optimizer); target >= 10x.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch


def main(quick: bool = False) -> dict:
    from transformers import HubertModel

    from fedctl.core.local import LocalTraining, make_optimizer
    from fedctl.core.task import TaskContext
    from fedctl.data.speech.demo import demo_partition
    from fedctl.tasks.downstream.config import DownstreamConfig
    from fedctl.tasks.downstream.data import read_audio
    from fedctl.tasks.downstream.task import DownstreamTask
    from fedctl.tasks.hubert.model import hubert_config
    from fedctl.tasks.hubert.presets import ARCH_KEYS, PRESETS

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-downstream-"))
    parts = demo_partition(root, 1, 4, 4 if quick else 10, lambda _: None)
    torch.manual_seed(0)
    HubertModel(hubert_config({k: PRESETS["tiny"][k] for k in ARCH_KEYS})).save_pretrained(root / "hf")
    cfg = DownstreamConfig(upstream=str(root / "hf"), probe="pr", parts=str(parts), cache_dir=str(root / "cache"),
                           batch_size=8, proj_dim=256)
    task = DownstreamTask(cfg, TaskContext(num_clients=1, seed=0, device=torch.device("cpu"), log=lambda _: None))
    audio = [read_audio(u.path) for u in task.utterances]
    plain = HubertModel.from_pretrained(str(root / "hf")).eval()

    def plain_loop():
        with torch.no_grad():
            for a in audio:
                plain(torch.from_numpy(a)[None], output_hidden_states=True)

    def ours():
        for a in audio:
            task.upstream.hidden_states(a)

    timings = {}
    for name, fn in (("plain", plain_loop), ("ours", ours), ("plain2", plain_loop), ("ours2", ours)):
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
    t_plain, t_ours = min(timings["plain"], timings["plain2"]), min(timings["ours"], timings["ours2"])

    utts = task.train["client_000"]
    model = task.build_model()
    opt = make_optimizer(LocalTraining(lr=1e-3), model)

    def epoch(recompute: bool) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process: one thread, so the work itself, whatever the load)."""
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(utts), cfg.batch_size):
            chunk = utts[i : i + cfg.batch_size]
            if recompute:
                hidden = [task.upstream.hidden_states(read_audio(u.path)) for u in chunk]
                batch = task.batch_of(chunk, torch.cat(hidden, dim=1), torch.tensor([h.shape[1] for h in hidden]))
            else:
                batch = task._batch(chunk, None)
            loss, _ = task.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0, time.process_time() - c0

    epoch(False)  # warm-up (allocator, first optimizer step)
    cached = [epoch(False) for _ in range(3)]
    recomputed = [epoch(True) for _ in range(2)]
    wall_c, wall_r = min(w for w, _ in cached), min(w for w, _ in recomputed)
    cpu_c, cpu_r = min(c for _, c in cached), min(c for _, c in recomputed)
    return {"utterances": len(audio), "extract_ratio": t_plain / t_ours, "plain_utt_per_s": len(audio) / t_plain,
            "ours_utt_per_s": len(audio) / t_ours, "cached_epoch_s": wall_c, "recompute_epoch_s": wall_r,
            "epoch_speedup": wall_r / wall_c, "cached_epoch_cpu_s": cpu_c, "recompute_epoch_cpu_s": cpu_r,
            "epoch_speedup_cpu": cpu_r / cpu_c, "note": "loaded machine (shared 2 cores), one run"}


def report(r: dict) -> None:
    print(f"extraction: ours {r['ours_utt_per_s']:.1f} utt/s vs plain HF loop {r['plain_utt_per_s']:.1f} utt/s "
          f"= {r['extract_ratio']:.2f}x (target >= 0.9)")
    print(f"probe epoch: cached {r['cached_epoch_s']:.3f} s vs recomputing {r['recompute_epoch_s']:.3f} s "
          f"= {r['epoch_speedup']:.1f}x wall; CPU time {r['cached_epoch_cpu_s']:.3f} s vs {r['recompute_epoch_cpu_s']:.3f} s "
          f"= {r['epoch_speedup_cpu']:.1f}x (target >= 10) [{r['note']}]")
