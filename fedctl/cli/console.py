"""Where output goes: results to stdout, progress and warnings to stderr."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console

out = Console(soft_wrap=True)  # results: tables, "✓ Saved <path>", --json
err = Console(stderr=True, soft_wrap=True)  # progress, warnings, errors


def saved(path: Any, what: str = "") -> None:
    out.print(f"[green]✓[/] Saved {what + ' ' if what else ''}{path}")


def warn(message: str) -> None:
    err.print(f"[yellow]Warning:[/] {message}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _jsonable(obj.item())
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):  # tensors and arrays (e.g. inside a crafted checkpoint)
        return _jsonable(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    """Machine-readable result on stdout (plain print: no Rich markup or wrapping)."""
    print(json.dumps(_jsonable(obj), indent=2, default=repr))  # anything else JSON lacks: its repr, not a crash
