"""Where output goes: results to stdout, progress and warnings to stderr."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console, RenderHook

out = Console(soft_wrap=True)  # results: tables, "✓ Saved <path>", --json
err = Console(stderr=True, soft_wrap=True)  # progress, warnings, errors


class _PlainCopy(RenderHook):
    """Copies what a console prints, as plain text (no colour codes, no live-display control), into the active
    run record (fedctl/utils/record.py): run.log shows what the terminal showed."""

    def __init__(self, sink):
        import io

        self.sink = sink
        self.buffer = io.StringIO()
        self.plain = Console(file=self.buffer, color_system=None, force_terminal=False, width=200, soft_wrap=True,
                             highlight=False, emoji=False, markup=False)

    def process_renderables(self, renderables):
        from rich.control import Control

        kept = [r for r in renderables if not isinstance(r, Control)]
        if kept:
            self.plain.print(*kept, sep="")
            text = self.buffer.getvalue()
            self.buffer.seek(0)
            self.buffer.truncate()
            self.sink("\n".join(line.rstrip() for line in text.split("\n")))
        return renderables


def copy_to(sink) -> tuple[RenderHook, RenderHook]:
    """Send everything `out` and `err` print to `sink(text)` too, until `stop_copy` is called."""
    hooks = (_PlainCopy(sink), _PlainCopy(sink))
    out.push_render_hook(hooks[0])
    err.push_render_hook(hooks[1])
    return hooks


def stop_copy(hooks: tuple[RenderHook, RenderHook]) -> None:
    for console, hook in zip((out, err), hooks):
        if hook in console._render_hooks:  # rich's stack: pop only our own hook (a live display may sit above)
            console._render_hooks.remove(hook)


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
