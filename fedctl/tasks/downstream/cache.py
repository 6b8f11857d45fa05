"""Hidden states of a frozen upstream, computed once per (upstream, corpus) and kept on disk.

A cache folder is named by the sha256 of (the upstream's fingerprint: weights, class, config, waveform
normalisation; the storage dtype; the utterance list: id, sample count and file size of each). Another upstream,
a retrained checkpoint, a random init with another seed or a changed corpus therefore gets another folder:
nothing is ever reused across upstreams, and `meta.json` repeats the fingerprint, checked on every load.

Layout: `<cache_dir>/<key[:24]>/` with `meta.json` and `shard_NNN.safetensors` (float16 [L, T, D] per utterance,
at most SHARD_UTTERANCES per file), written whole or not at all (`atomic_dir`). Whole utterances are cached, so
random crops (if any) are drawn after the cache. Size: L x D x frames x 2 bytes (HuBERT Base: ~1 MB per second).
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
    The path enters only through its file size (a synth corpus re-made elsewhere hits the same cache)."""
    h = hashlib.sha256()
    h.update(json.dumps({"fingerprint": fingerprint, "dtype": str(DTYPE), "version": 1}).encode())
    for utt_id, num_samples, path in utterances:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        h.update(f"{utt_id}\t{num_samples}\t{size}\n".encode())
    return h.hexdigest()


def load_or_build(root: Path, key: str, fingerprint: str, ids: Sequence[str],
                  encode: Callable[[int], torch.Tensor], log: Callable[[str], None],
                  describe: str = "") -> dict[str, torch.Tensor]:
    """utterance id → float16 [L, T, D]: read from `root/<key>` when there, else `encode(i)` for every utterance
    (written atomically for the next run)."""
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
        return states
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
    return states
