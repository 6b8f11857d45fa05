"""Shared speech fixtures: one tiny eSpeak corpus (6 speakers x 5 utterances) per test session."""

from __future__ import annotations

import pytest

from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels
from fedctl.data.speech.partition import partition_librispeech
from fedctl.data.speech.synth import synth_corpus

SPEAKERS, UTTERANCES = 6, 5


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech") / "corpus"
    result = synth_corpus(root, speakers=SPEAKERS, utterances=UTTERANCES, seed=0)
    return root, result


@pytest.fixture(scope="session")
def tiny_parts(tiny_corpus, tmp_path_factory):
    root, _ = tiny_corpus
    out = tmp_path_factory.mktemp("speech") / "parts"
    return partition_librispeech([root], out, clients=3, by="speaker", val_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def tiny_labels(tiny_parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("speech") / "labels"
    cfg = KmeansConfig(clusters=20, scope="client", label_rate=50, seed=0)
    return learn_kmeans_labels(tiny_parts.out, out, cfg)
