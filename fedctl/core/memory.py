"""Resident memory of the whole process tree (the server and its worker processes), for the resource record.

`ru_maxrss` (engine.peak_rss_mb) is the server process's own peak: it misses the workers of `--workers N`,
spawned Flower SuperNodes on loopback, and any other child. Here psutil sums the resident set size of the
process and all its descendants at each sample; the peak is over the samples a `TreePeak` takes. RSS counts a
page shared between processes (fork copy-on-write, shared-memory tensors) once per process that maps it, so the
sum can exceed the machine memory actually used: an upper bound for the tree, not a lower one.
"""

from __future__ import annotations

import os
import threading

import psutil


def _children_proc(pid: int) -> list[int] | None:
    """Direct children of `pid` from /proc/PID/task/*/children (Linux), or None where that file is absent.
    Hand-written because psutil's children() scans every process on the machine (~10 ms a call)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            if tid == tasks[0] and not os.path.exists(f"/proc/{pid}/task/{tid}/children"):
                return None  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            pass  # the thread ended meanwhile
    return kids


def tree(pid: int | None = None) -> list[psutil.Process]:
    """Process `pid` (default: this one) and all its descendants."""
    root = pid or os.getpid()
    if _children_proc(root) is None:  # not Linux, or no children files: psutil's full scan
        proc = psutil.Process(root)
        return [proc, *proc.children(recursive=True)]
    pids, todo = [root], [root]
    while todo:
        kids = _children_proc(todo.pop()) or []
        pids += kids
        todo += kids
    out = []
    for p in pids:
        try:
            out.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            pass
    return out


def rss_bytes(procs: list[psutil.Process]) -> int:
    """Summed RSS (bytes) of `procs` now; one that has exited counts 0 (cheap: one /proc read each)."""
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass  # exited between the listing and the read: it holds nothing now
    return total


def tree_rss_bytes(pid: int | None = None) -> int:
    """Summed RSS (bytes) of process `pid` (default: this one) and all its descendants, now."""
    return rss_bytes(tree(pid))


class TreePeak:
    """The highest summed RSS of this process and its descendants since the last `reset()`: sampled by
    `sample()` calls and, between `start()` and `stop()` (or inside `with`), every `interval` seconds by a
    daemon thread. A sample lists the tree afresh (workers started or restarted meanwhile count) and costs
    under a millisecond on Linux, so sampling costs well under 1% of a core."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        with self._lock:
            self.peak = max(self.peak, tree_rss_bytes())

    def reset(self) -> None:
        """Start a new peak from a sample now."""
        with self._lock:
            self.peak = 0
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> TreePeak:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="fedctl-tree-rss", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> TreePeak:
        self.reset()
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.sample()

    @property
    def peak_mb(self) -> float:
        """The peak in MB (10^6 bytes)."""
        return self.peak / 1e6
