from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedctl.cli.app import app

# Small enough for seconds on 2 cores, large enough that the model learns something.
SMALL = ["--set", "task.demo_sentences=600", "--set", "task.seq_len=32", "--set", "task.vocab_size=300",
         "--set", "task.local_updates=3", "--set", "task.eval_batches=4", "--set", "task.sample_tokens=5"]


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
