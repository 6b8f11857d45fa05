"""Hidden states of a frozen upstream, computed once per (upstream, corpus) and kept on disk.

A cache folder is named by the sha256 of (the upstream's fingerprint: weights, class, config, waveform
normalisation; the storage dtype; the utterance list: id, sample count, and the audio file's size and
modification time in ns). Another upstream, a retrained checkpoint, a random init with another seed, a changed
corpus or an audio file edited in place (even to the same size) therefore gets another folder: nothing is ever
reused across upstreams or stale audio, and `meta.json` repeats the fingerprint, checked on every load.
(size, mtime_ns) rather than a content hash: the key is computed on every run, and a cache hit must not read the
corpus (hashing it costs a read of every file; see README "downstream" for the measurement).

Layout: `<cache_dir>/<key[:24]>/` with `meta.json` and `shard_NNN.safetensors` (float16 [L, T, D] per utterance,
at most SHARD_UTTERANCES per file), written whole or not at all (`atomic_dir`). Whole utterances are cached, so
random crops (if any) are drawn after the cache. Size: L x D x frames x 2 bytes (HuBERT Base: ~1 MB per second).

In memory the cache is one `FrameStore`: every utterance's frames concatenated into a single float16 tensor
[L, N_total, D] with each id's (start, frames), so a batch is one gather into packed [L, N, D] float32.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fedctl.errors import FedctlError

SHARD_UTTERANCES = 512
DTYPE = torch.float16


def default_cache_dir() -> Path:
    """$FEDCTL_CACHE_DIR, else ~/.cache/fedctl/downstream (shared by runs, so a probe sweep encodes once)."""
    env = os.environ.get("FEDCTL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "fedctl" / "downstream"


def cache_key(fingerprint: str, utterances: Sequence[tuple[str, int, str]]) -> str:
    """sha256 over the upstream fingerprint, the dtype and (id, num_samples, path) of every utterance, in order.
    The path enters through its file's size and mtime_ns (one stat, no read): an edit, even one that keeps the
    size, changes the key; the path's name does not (a corpus moved with its timestamps hits the same cache)."""
    h = hashlib.sha256()
    h.update(json.dumps({"fingerprint": fingerprint, "dtype": str(DTYPE), "version": 2}).encode())
    for utt_id, num_samples, path in utterances:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{utt_id}\t{num_samples}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


class FrameStore:
    """Cached hidden states in memory: one float16 tensor [L, N_total, D] (all utterances' frames, concatenated)
    and each utterance's (start, frames). Kept float16 (half the memory of float32; the per-batch conversion of
    the gathered frames is a small part of a step) and gathered per batch into packed float32 [L, N, D]."""

    def __init__(self, states: dict[str, torch.Tensor]):
        ids = list(states)
        frames = [int(states[u].shape[1]) for u in ids]
        starts = [0]
        for n in frames[:-1]:
            starts.append(starts[-1] + n)
        self.span = {u: (s, n) for u, s, n in zip(ids, starts, frames)}
        self.data = torch.cat([states[u] for u in ids], dim=1) if ids else torch.zeros(0, 0, 0, dtype=DTYPE)

    def __len__(self) -> int:
        return len(self.span)

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.span

    def __getitem__(self, utt_id: str) -> torch.Tensor:
        """[L, T, D] float16 of one utterance (a view)."""
        start, frames = self.span[utt_id]
        return self.data[:, start : start + frames]

    def ids(self) -> list[str]:
        return list(self.span)

    def gather(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(packed float32 [L, Σ frames, D] of `ids` in order, frames per utterance [B] long)."""
        spans = [self.span[u] for u in ids]
        x = torch.cat([self.data[:, s : s + n] for s, n in spans], dim=1).float()
        return x, torch.tensor([n for _, n in spans], dtype=torch.long)


def load_or_build(root: Path, key: str, fingerprint: str, ids: Sequence[str],
                  encode: Callable[[int], torch.Tensor], log: Callable[[str], None],
                  describe: str = "") -> FrameStore:
    """Every utterance's float16 [L, T, D], as one FrameStore: read from `root/<key>` when there, else
    `encode(i)` for every utterance (written atomically for the next run)."""
    from safetensors.torch import load_file, save_file

    from fedctl.utils.io import atomic_dir

    folder = Path(root) / key[:24]
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
        if meta.get("key") != key or meta.get("fingerprint") != fingerprint or meta.get("count") != len(ids):
            raise FedctlError(f"hidden-state cache {folder} does not belong to this upstream and corpus",
                              f"delete {folder} (it is rebuilt on the next run)")
        states: dict[str, torch.Tensor] = {}
        try:
            for shard in meta["shards"]:
                states.update(load_file(str(folder / shard)))
        except Exception as exc:  # a damaged shard
            raise FedctlError(f"hidden-state cache {folder} is damaged ({type(exc).__name__})",
                              f"delete {folder} (it is rebuilt on the next run)") from None
        if set(states) != set(ids):
            raise FedctlError(f"hidden-state cache {folder} lists other utterances", f"delete {folder}")
        return FrameStore({u: states.pop(u) for u in ids})
    log(f"downstream: encoding {len(ids)} utterances with {describe or 'the upstream'} once, into {folder}")
    states = {}
    for i, utt_id in enumerate(ids):
        states[utt_id] = encode(i).to(DTYPE).contiguous()
    Path(root).mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        shards = []
        for s in range(0, len(ids), SHARD_UTTERANCES):
            name = f"shard_{s // SHARD_UTTERANCES:03d}.safetensors"
            save_file({u: states[u] for u in ids[s : s + SHARD_UTTERANCES]}, str(tmp / name))
            shards.append(name)
        (tmp / "meta.json").write_text(json.dumps({"key": key, "fingerprint": fingerprint, "count": len(ids),
                                                   "upstream": describe, "dtype": str(DTYPE), "shards": shards},
                                                  indent=2) + "\n", encoding="utf-8")
    return FrameStore({u: states.pop(u) for u in ids})
