"""Feature metrics and the speaker-identification model."""

from __future__ import annotations

import math

import torch

from fedctl.attacks.analysis import SpeakerID, feature_metrics, windows
from fedctl.tasks.asr.data import FeatureCache, load_corpus


def test_feature_metrics_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = feature_metrics(x + 0.5, x, torch.zeros_like(x))
    assert m["feature_mae"] == 0.5 and m["random_mae"] == 2.5
    assert math.isclose(m["snr_db"], 20 * math.log10(math.sqrt(30) / 1.0), rel_tol=1e-9)
    assert 0.99 < m["cosine"] < 1.0
    assert abs(feature_metrics(x, x, x)["cosine"] - 1.0) < 1e-12


def test_speaker_id_beats_chance_on_held_out_clean_features(corpus):
    utts = load_corpus(corpus)
    cache = FeatureCache("ds1")
    test = [u for i, u in enumerate(utts) if i % 3 == 0]
    train = [u for i, u in enumerate(utts) if i % 3 != 0]
    sid = SpeakerID([cache(u) for u in train], [u.speaker for u in train])
    got = sid.topk([cache(u) for u in test], [u.speaker for u in test])
    assert sid.chance() == {"top1": 0.25, "top5": 1.0}
    assert got["top1"] >= 0.75  # 4 eSpeak voices: clean MFCC statistics separate them
    noise = [torch.rand_like(cache(u)) * 2 - 1 for u in test]  # a random start carries no speaker
    assert sid.topk(noise, [u.speaker for u in test])["top1"] <= 0.5


def test_windows_cover_the_utterance_at_half_hop():
    x = torch.arange(10.0).view(10, 1)
    got = windows(x, 4)
    assert [int(w[0, 0]) for w in got] == [0, 2, 4, 6]  # starts at hop 2, the last window ends at frame 10
    assert all(w.shape == (4, 1) for w in got)
    assert windows(x, None)[0] is x and windows(x, 10)[0] is x and windows(x, 20)[0] is x
