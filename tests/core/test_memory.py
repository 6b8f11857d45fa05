"""peak_rss_tree_mb: the server and its worker processes, not the server alone."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedctl.core.engine import peak_rss_mb
from fedctl.core.memory import TreePeak, tree_rss_bytes

CHILD = 150_000_000  # bytes the child writes (touched, so resident)


@pytest.mark.system
def test_the_tree_peak_holds_a_child_that_allocated_and_exited_while_the_server_peak_does_not():
    server_before = peak_rss_mb()
    with TreePeak(interval=0.02) as peak:
        base = peak.peak
        child = subprocess.Popen(
            [sys.executable, "-c", f"x = b'\\x01' * {CHILD}; print('ok', flush=True); import time; time.sleep(0.5)"],
            stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ok\n"
        during = tree_rss_bytes()
        assert child.wait(timeout=30) == 0
        time.sleep(0.05)
    # the child's 150 MB count while it lives and stay in the peak after it exits
    assert during - base >= CHILD
    assert peak.peak - base >= CHILD and peak.peak >= during * 0.99
    assert tree_rss_bytes() - base < CHILD / 2  # gone from a sample taken now
    # the server's own ru_maxrss never saw them
    assert peak_rss_mb() - server_before < CHILD / 1e6 / 2


def test_reset_starts_a_new_peak():
    peak = TreePeak()
    peak.peak = 10**15
    peak.reset()
    assert 0 < peak.peak < 10**15 and peak.peak_mb == peak.peak / 1e6
