"""Renders engine events: a Rich live table per round on a terminal, `[round r/R] …` lines otherwise."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fedctl.cli.console import err, out
from fedctl.core.events import (
    CheckpointSaved,
    ClientFailed,
    ClientProgress,
    Message,
    RoundFinished,
    RunFinished,
    RunStarted,
)
from fedctl.utils import record

_FIXED = ("round", "clients", "train_loss")
_TAIL = ("mb_down", "mb_up", "seconds")
_HEAD = {"round": "round", "clients": "clients", "train_loss": "train loss", "mb_down": "MB ↓",
         "mb_up": "MB ↑", "seconds": "s", "examples_per_s": "ex/s", "tokens_per_s": "tok/s",
         "audio_s_per_s": "audio s/s"}
_COMMANDS = {"glue": "lora"}  # task name → its `fedctl train` command, where they differ
_SKIP = {"sampled", "failed", "num_examples", "type", "scope", "client_id", "fit_clients", "evaluate_clients",
         "aggregation", "bulyan_selected", "qffl_h",
         # the resource record stays in metrics.jsonl; the table shows throughput only
         "samples", "time", "peak_rss_mb", "peak_rss_tree_mb", "cuda_max_allocated_mb", "lr", "grad_norm", "dp_delta"}
_PROGRESS_EVERY = 0.1  # seconds between redraws of the in-round progress line


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
        if key.endswith("_per_s"):
            return f"{value:.1f}" if value < 100 else f"{value:.0f}"
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
        self.progress: ClientProgress | None = None  # the newest in-round step, shown under the table
        self.round_t0: float | None = None  # when the running round's first step was reported
        self.drawn = 0.0  # monotonic time of the last progress redraw

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
        rates = [k for k in extra if k.endswith("_per_s")]  # throughput sits beside the transfer and time columns
        return [*_FIXED, *[k for k in extra if k not in rates], *rates, *_TAIL]

    def progress_line(self) -> Group | None:
        """`round r · client i/K · step j/N · ETA` with a bar over the round's steps, or None between rounds.
        ETA assumes every client of the round takes as many steps as the current one."""
        p = self.progress
        if p is None:
            return None
        total = p.clients * p.steps
        done = (p.client - 1) * p.steps + p.step
        elapsed = time.monotonic() - (self.round_t0 or time.monotonic())
        eta = elapsed / done * (total - done) if done else 0.0
        text = Text(f"round {p.server_round}/{self.total} · client {p.client}/{p.clients} · "
                    f"step {p.step}/{p.steps} · ETA {eta:.0f}s", style="dim")
        return Group(ProgressBar(total=total, completed=done, width=40), text)

    def renderable(self):
        line = self.progress_line()
        return self.table() if line is None else Group(self.table(), line)

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
            if event.run_dir is not None:  # the run's own record (run.log, meta.json) starts here
                record.attach(event.run_dir, scope="run")
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
        elif isinstance(event, ClientProgress):
            if self.live is None:  # not a terminal: no progress display
                return
            if self.progress is None or self.progress.server_round != event.server_round:
                self.round_t0 = time.monotonic()
            self.progress = event
            now = time.monotonic()
            if now - self.drawn >= _PROGRESS_EVERY or (event.client == event.clients and event.step == event.steps):
                self.drawn = now
                self.live.update(self.renderable(), refresh=True)
        elif isinstance(event, RoundFinished):
            self.rows.append(dict(event.metrics))
            self.progress = None
            row = event.metrics
            parts = [f"{k}={_fmt(k, row.get(k))}" for k in self.columns()[1:] if row.get(k) is not None]
            line = f"[round {event.server_round}/{self.total}] " + " ".join(parts)
            if self.live is not None:
                self.live.update(self.table(), refresh=True)
                rec = record.current()
                if rec is not None:  # the live table is redrawn in place: run.log gets the plain line
                    rec.write(line + "\n")
            else:
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


def print_samples(samples: list[dict[str, str]] | None) -> None:
    """The decoded validation samples of an evaluation (`Task.eval_samples`), each reference above its
    hypothesis, on stdout."""
    if not samples:
        return
    out.print(f"[bold]Samples[/] ({len(samples)} validation utterances, greedy decoding):", highlight=False)
    for ex in samples:
        out.print(f"  {ex.get('id', '')}", highlight=False, markup=False)
        out.print(f"    ref: {ex.get('ref', '')}", highlight=False, markup=False)
        out.print(f"    hyp: {ex.get('hyp', '') or '(empty)'}", highlight=False, markup=False)
