"""Fixtures of the reliability suite."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import cli


@pytest.fixture
def linear_cli(monkeypatch):
    """`fedctl train mamba …` trains the tiny linear workload instead (same CLI path, no transformers)."""
    from fedctl.run import registry

    monkeypatch.setitem(registry.WORKLOADS, "mamba", registry.Workload(
        "mamba", "tests.reliability.linear_workload", "LinearConfig", "LinearWorkloadTask"))
    return cli
