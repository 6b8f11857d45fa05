"""The round renderer: throughput column, in-round progress on a terminal only."""

from __future__ import annotations

from rich.console import Console

from fedctl.cli.render import RunRenderer
from fedctl.core.events import ClientProgress, RoundFinished, RunStarted


def test_progress_is_silent_off_terminal_and_names_client_step_and_eta(capsys):
    r = RunRenderer()
    assert not r.live_mode  # pytest's stdout is not a TTY
    r(RunStarted("linear", "fedavg", 2, 1, 4, 10, 40, None))
    r(ClientProgress(1, 2, 4, 3, 5))
    assert r.progress is None and "step" not in capsys.readouterr().out  # no progress without a terminal
    r.progress, r.round_t0 = ClientProgress(1, 2, 4, 3, 5), None
    console = Console(width=100, record=True)
    console.print(r.progress_line())
    assert "round 1/2 · client 2/4 · step 3/5 · ETA" in console.export_text()
    r(RoundFinished(1, {"round": 1, "clients": 4, "train_loss": 1.0, "examples_per_s": 1234.5, "tokens_per_s": 5e4,
                        "lr": 0.1, "grad_norm": 2.0, "time": 1.7e9, "peak_rss_mb": 300.0, "seconds": 1.0}))
    line = capsys.readouterr().out
    assert "examples_per_s=1234" in line and "tokens_per_s=50000" in line
    assert "grad_norm" not in line and "peak_rss_mb" not in line  # kept in metrics.jsonl, not the table
