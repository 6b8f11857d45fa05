from __future__ import annotations

import pytest

from fedctl.data.speech.synth import synth_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A 4-speaker, 24-utterance eSpeak corpus (0.7-2.5 s), made in seconds."""
    root = tmp_path_factory.mktemp("attack_data") / "corpus"
    synth_corpus(root, speakers=4, utterances=6, seed=0)
    return root


@pytest.fixture(scope="session")
def asr_run(tmp_path_factory):
    """A real 2-round `fedctl train asr` run (DS1 tiny, 2 clients of one speaker each, 1 local step, demo corpus
    of 2 speakers x 4 utterances), trained in-process through the CLI with a checkpoint and every client's
    delta saved each round: the victims of `fedctl attack --checkpoint / --run`. About 5 s."""
    from typer.testing import CliRunner

    from fedctl.cli.app import app

    run = tmp_path_factory.mktemp("asr_run") / "run"
    res = CliRunner().invoke(app, [
        "train", "asr", "--config", "asr_ds1_tiny", "--rounds", "2", "--clients", "2", "--out", str(run),
        "--set", "run.workers=1", "--set", "federation.checkpoint_every=1", "--set", "federation.eval_every=1",
        "--set", "task.demo_speakers=2", "--set", "task.demo_utterances=4", "--set", "task.local_updates=1",
        "--save-deltas", "entity=clients"])
    assert res.exit_code == 0, res.output
    return run
