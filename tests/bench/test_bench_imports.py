"""Every import in bench/ resolves, including the ones inside functions (a benchmark's child process imports
lazily, so a moved module broke `bench_parallel` without any test noticing)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
OPTIONAL = {"ray", "flwr.simulation", "mamba_ssm", "peft"}  # extras a benchmark skips without


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


@pytest.mark.parametrize("path", sorted(p for p in BENCH.glob("*.py") if p.name != "__init__.py"), ids=lambda p: p.name)
def test_every_import_in_the_benchmark_resolves(path):
    checked = 0
    for module, name in _imports(path):
        if module.split(".")[0] in OPTIONAL or module in OPTIONAL:
            continue
        mod = importlib.import_module(module)
        if name is not None and name != "*":
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
                f"{path.name}: from {module} import {name}"
        checked += 1
    assert checked > 0
