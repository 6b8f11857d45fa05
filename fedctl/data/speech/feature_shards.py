"""Per-client feature shards on disk: fairseq simple_kmeans' dump step, in bounded memory.

One `.npy` file per client holds every utterance's label-rate feature frames, concatenated in manifest order
(float32, shape (frames, dim); `np.load(path, mmap_mode="r")` reads it). The frame count of each utterance is known
before extraction (`label_num_frames`), so the header is written first and the frames are appended one batch at a
time; reading goes through plain file reads of row ranges, never a memory map, so pages read for one block do not
stay resident (a map would count every page ever touched in the process' RSS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f4")


class ShardWriter:
    """Write a (frames, dim) float32 .npy of a known shape by appending blocks of rows."""

    def __init__(self, path: str | Path, frames: int, dim: int):
        self.path, self.frames, self.dim, self.written = Path(path), int(frames), int(dim), 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close() / the context manager
        header = {"descr": DTYPE.str, "fortran_order": False, "shape": (self.frames, self.dim)}
        np.lib.format.write_array_header_1_0(self._file, header)

    def append(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.dim or self.written + len(rows) > self.frames:
            raise ValueError(f"{self.path}: block of shape {rows.shape} does not fit ({self.written}/{self.frames} "
                             f"rows of {self.dim} written)")
        self._file.write(np.ascontiguousarray(rows, dtype=DTYPE).tobytes())
        self.written += len(rows)

    def close(self) -> None:
        self._file.close()
        if self.written != self.frames:
            raise ValueError(f"{self.path}: {self.written} rows written, header says {self.frames}")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._file.close()


class ShardReader:
    """Row ranges of a shard written by ShardWriter (or any C-order float32 2-D .npy)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != DTYPE or len(shape) != 2:
            raise ValueError(f"{self.path}: not a C-order float32 2-D array")
        self.frames, self.dim = shape

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new (stop - start, dim) array."""
        count = (stop - start) * self.dim
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.dim * DTYPE.itemsize)
            rows = np.fromfile(f, dtype=DTYPE, count=count)
        if rows.size != count:
            raise ValueError(f"{self.path}: short read at rows {start}:{stop}")
        return rows.reshape(stop - start, self.dim)

    def take(self, positions: np.ndarray, block: int = 65536) -> np.ndarray:
        """Rows at sorted `positions`, reading only the blocks that hold any of them."""
        out = np.empty((len(positions), self.dim), dtype=DTYPE)
        done = 0
        while done < len(positions):
            start = int(positions[done])
            stop = min(start + block, self.frames)
            upto = int(np.searchsorted(positions, stop, side="left"))
            out[done:upto] = self.read(start, stop)[positions[done:upto] - start]
            done = upto
        return out


def sample_without_replacement(n: int, k: int, rng: np.random.Generator, chunk: int = 1 << 20) -> np.ndarray:
    """k of range(n), uniformly without replacement, sorted, in O(k + chunk) memory.

    Up to `chunk` items this is `sort(rng.permutation(n)[:k])` (what fedctl did before shards, so small corpora keep
    their fit samples); above, per-chunk counts come from a multivariate hypergeometric draw and each chunk is
    sampled on its own, which is the same distribution without an n-long permutation."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if n <= chunk:
        return np.sort(rng.permutation(n)[:k])
    sizes = np.full(n // chunk, chunk, dtype=np.int64)
    if n % chunk:
        sizes = np.append(sizes, n % chunk)
    counts = rng.multivariate_hypergeometric(sizes, k, method="marginals")
    picks, start = [], 0
    for size, count in zip(sizes, counts):
        if count:
            picks.append(start + np.sort(rng.permutation(int(size))[:count]))
        start += int(size)
    return np.concatenate(picks).astype(np.int64)
