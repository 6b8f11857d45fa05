from __future__ import annotations

import pytest

from fedctl.data.speech.synth import synth_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A 4-speaker, 24-utterance eSpeak corpus (0.7-2.5 s), made in seconds."""
    root = tmp_path_factory.mktemp("attack_data") / "corpus"
    synth_corpus(root, speakers=4, utterances=6, seed=0)
    return root
