"""ASR utterances from a synth corpus and its partition: durations, features cache, batches, feasibility."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from fedctl.data.speech.partition import partition_librispeech
from fedctl.data.speech.synth import synth_corpus
from fedctl.errors import FedctlError
from fedctl.tasks.asr.ctc import ctc_loss
from fedctl.tasks.asr.data import (
    AsrUtterance,
    FeatureCache,
    check_utterances,
    collate,
    filter_duration,
    load_corpus,
    load_partition,
    make_batch,
    too_short,
)
from fedctl.tasks.asr.features import ds1_features, ds2_num_frames
from fedctl.tasks.asr.models import build_asr_model
from fedctl.tasks.asr.text import decode


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr_data") / "corpus"
    synth_corpus(root, speakers=2, utterances=3, seed=0)
    parts = partition_librispeech([root], root.parent / "parts", clients=2, by="speaker", val_fraction=0.34, seed=0)
    return root, parts.out


def test_load_corpus_reads_ids_transcripts_and_milliseconds(corpus):
    root, _ = corpus
    utts = load_corpus(root)
    assert len(utts) == 6 and [u.id for u in utts] == sorted(u.id for u in utts)
    for u in utts:
        info = sf.info(u.path)
        assert u.num_samples == info.frames and u.duration_ms == info.frames * 1000 // 16000
        assert u.id.startswith(u.speaker + "-")
        assert decode(u.target) == u.transcript == u.transcript.lower()
    lines = dict(ln.split(" ", 1) for t in root.glob("*/*/*.trans.txt") for ln in t.read_text().splitlines())
    assert {u.id: u.transcript for u in utts} == {k: v.lower() for k, v in lines.items()}


def test_load_partition_keeps_clients_and_filters_by_duration(corpus):
    root, parts = corpus
    clients = load_partition(parts)
    assert sorted(clients) == ["client_000", "client_001"]
    assert sorted(u.id for us in clients.values() for u in us) == [u.id for u in load_corpus(root)]
    assert all(len({u.speaker for u in us}) == 1 for us in clients.values())  # partitioned by speaker
    assert {u.split for us in clients.values() for u in us} == {"train", "val"}
    durations = sorted(u.duration_ms for us in clients.values() for u in us)
    cut = durations[2]
    kept = load_partition(parts, min_dur=cut, max_dur=durations[-1])
    got = sorted(u.duration_ms for us in kept.values() for u in us)
    assert got == [d for d in durations if cut <= d < durations[-1]]  # half-open, as the reference
    with pytest.raises(FedctlError):
        filter_duration([], 2000, 1000)


def test_features_are_cached_and_batches_are_padded(corpus):
    root, _ = corpus
    utts = load_corpus(root)[:3]
    cache = FeatureCache("ds1")
    first = cache(utts[0])
    assert cache(utts[0]) is first and len(cache) == 1
    audio, _ = sf.read(utts[0].path, dtype="int16")
    assert torch.equal(first, ds1_features(audio))
    feats, lengths, targets, target_lengths = make_batch(utts, cache)
    assert len(cache) == 3
    assert feats.shape == (int(lengths.max()), 3, 26)
    for b, u in enumerate(utts):
        n = int(lengths[b])
        assert torch.equal(feats[:n, b], cache(u)) and not feats[n:, b].any()
        assert targets[b, : len(u.target)].tolist() == list(u.target) and not targets[b, len(u.target) :].any()
        assert int(target_lengths[b]) == len(u.target)
    model = build_asr_model("ds1", "tiny")
    log_probs, out = model(feats, lengths)
    loss = ctc_loss(log_probs, targets, out, target_lengths, reduction="none")
    assert torch.isfinite(loss).all() and (loss > 0).all()

    ds2 = FeatureCache("ds2")
    feats2, lengths2, _, _ = make_batch(utts, ds2)
    assert feats2.shape[-1] == 257 and lengths2.tolist() == [ds2_num_frames(u.num_samples) for u in utts]


def test_collate_handles_empty_targets():
    feats, lengths, targets, target_lengths = collate([torch.ones(4, 2), torch.ones(2, 2)], [[], [3]])
    assert feats.shape == (4, 2, 2) and lengths.tolist() == [4, 2]
    assert targets.tolist() == [[0], [3]] and target_lengths.tolist() == [0, 1]


def test_too_short_utterances_are_refused_by_name():
    # 310 ms "i have": DS1 has 15 frames, DS2 only 3 (the reference doc's example)
    short = AsrUtterance(id="1-2-0003", speaker="1", path="unused.flac", transcript="i have",
                         target=(10, 1, 9, 2, 23, 6), duration_ms=310, num_samples=4960)
    fine = AsrUtterance(id="1-2-0004", speaker="1", path="unused.flac", transcript="i have",
                        target=(10, 1, 9, 2, 23, 6), duration_ms=1000, num_samples=16000)
    check_utterances([short, fine], "ds1")
    assert [(u.id, have, need) for u, have, need in too_short([short, fine], "ds2")] == [("1-2-0003", 3, 6)]
    with pytest.raises(FedctlError) as err:
        check_utterances([fine, short], "ds2")
    assert "1-2-0003" in err.value.message and "1-2-0004" not in err.value.message
    assert "3 output frames" in err.value.message and "skip_too_short" in err.value.hint
