"""Renders engine events: a Rich live table per round on a terminal, `[round r/R] …` lines otherwise."""

from __future__ import annotations

import math
from typing import Any

from rich.live import Live
from rich.table import Table

from fedctl.cli.console import err, out
from fedctl.core.events import CheckpointSaved, ClientFailed, Message, RoundFinished, RunFinished, RunStarted

_FIXED = ("round", "clients", "train_loss")
_TAIL = ("mb_down", "mb_up", "seconds")
_HEAD = {"round": "round", "clients": "clients", "train_loss": "train loss", "mb_down": "MB ↓",
         "mb_up": "MB ↑", "seconds": "s"}
_COMMANDS = {"glue": "lora"}  # task name → its `fedctl train` command, where they differ
_SKIP = {"sampled", "failed", "num_examples", "type", "scope", "client_id"}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if key in ("mb_down", "mb_up"):
            return f"{value:.1f}"
        if key == "seconds":
            return f"{value:.1f}"
        if "ppl" in key or abs(value) >= 100:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


class RunRenderer:
    """Call with each engine event. Use as a context manager so the live table closes cleanly."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet  # --json: progress goes to stderr, stdout stays machine-readable
        self.live_mode = out.is_terminal and not quiet
        self.rows: list[dict[str, Any]] = []
        self.total = 0
        self.live: Live | None = None
        self.started: RunStarted | None = None
        self.saved: CheckpointSaved | None = None  # the newest checkpoint of this run, for Ctrl-C
        self.saved_round = 0

    def __enter__(self) -> RunRenderer:
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.interrupted()

    def interrupted(self) -> None:
        """Ctrl-C: say what is safe on disk and how to continue (the CLI then exits 130)."""
        start = self.started
        if start is None or start.run_dir is None:
            err.print("[yellow]Interrupted[/] before the run started; nothing was saved.", highlight=False)
            return
        if self.saved_round < 1:
            err.print(f"[yellow]Interrupted[/]: no checkpoint saved yet in {start.run_dir}; start the run again.",
                      highlight=False)
            return
        command = _COMMANDS.get(start.task, start.task)
        where = self.saved.path if self.saved is not None else f"{start.run_dir}/checkpoints"
        err.print(f"[yellow]Interrupted[/]: round {self.saved_round} of {self.total} is saved ({where}).",
                  highlight=False)
        err.print(f"Resume with: fedctl train {command} --out {start.run_dir} --resume", highlight=False,
                  markup=False)

    def columns(self) -> list[str]:
        extra: list[str] = []
        for row in self.rows:
            for key in row:
                if key not in _FIXED and key not in _TAIL and key not in _SKIP and key not in extra:
                    extra.append(key)
        return [*_FIXED, *extra, *_TAIL]

    def table(self) -> Table:
        table = Table(title=None, show_edge=False, header_style="bold")
        cols = self.columns()
        for key in cols:
            table.add_column(_HEAD.get(key, key.replace("_", " ")), justify="right")
        for row in self.rows:
            cells = [_fmt(k, row.get(k)) for k in cols]
            cells[0] = f"{row['round']}/{self.total}"
            table.add_row(*cells)
        return table

    def __call__(self, event: object) -> None:
        if isinstance(event, RunStarted):
            self.started, self.saved_round = event, event.start_round - 1
            self.total = event.rounds
            mb = event.shared_bytes / 1e6
            where = f" → {event.run_dir}" if event.run_dir else ""
            err.print(
                f"[bold]{event.task}[/] · {event.strategy} · {event.num_clients} clients · "
                f"{event.num_parameters / 1e6:.2f}M parameters · {mb:.1f} MB per transfer{where}",
                highlight=False,
            )
            if self.live_mode:
                self.live = Live(self.table(), console=out, auto_refresh=False)
                self.live.start()
        elif isinstance(event, RoundFinished):
            self.rows.append(dict(event.metrics))
            if self.live is not None:
                self.live.update(self.table(), refresh=True)
            else:
                row = event.metrics
                parts = [f"{k}={_fmt(k, row.get(k))}" for k in self.columns()[1:] if row.get(k) is not None]
                line = f"[round {event.server_round}/{self.total}] " + " ".join(parts)
                (err if self.quiet else out).print(line, highlight=False, markup=False)
        elif isinstance(event, ClientFailed):
            err.print(f"[yellow]round {event.server_round}: {event.client_id} left out — {event.reason}[/]", highlight=False)
        elif isinstance(event, Message):
            style = "yellow" if event.level == "warning" else "dim"
            err.print(f"[{style}]{event.text}[/]", highlight=False)
        elif isinstance(event, CheckpointSaved):
            self.saved, self.saved_round = event, event.server_round  # shown on Ctrl-C; per round it would drown the table
        elif isinstance(event, RunFinished):
            self.__exit__()
