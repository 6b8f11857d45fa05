"""Resident-memory readings for benchmarks, from /proc (Linux).

ru_maxrss is not usable for per-process peaks here: Linux keeps the high-water mark across exec,
so a child started by a large parent reports the parent's peak. VmHWM belongs to the process's
own address space, and writing 5 to /proc/self/clear_refs resets it to the current RSS.
"""

from __future__ import annotations

from pathlib import Path


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB → MB
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_mb() -> float:
    """Current resident set size, MB."""
    return _status("VmRSS")


def peak_mb() -> float:
    """Highest resident set size since the process started or since reset_peak(), MB."""
    return _status("VmHWM")


def reset_peak() -> None:
    """Start peak tracking from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
