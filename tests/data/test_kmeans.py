import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fedctl.data.speech.features import (
    MfccExtractor,
    compute_deltas,
    hubert_num_frames,
    label_num_frames,
    mfcc_num_frames,
    to_label_rate,
)
from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels, phone_metrics
from fedctl.data.speech.partition import read_partition
from fedctl.errors import FedctlError

LENGTHS = [400, 401, 719, 720, 879, 1040, 16000, 16001, 16160, 33333]


@pytest.fixture(scope="module")
def tiny_hubert():
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    # default conv_kernel/conv_stride (the part that sets the frame count); everything else tiny
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(4,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    return HubertModel(cfg).eval()


def test_hubert_frame_rule_matches_transformers(tiny_hubert):
    assert list(tiny_hubert.config.conv_kernel) == [10, 3, 3, 3, 3, 2, 2]
    assert list(tiny_hubert.config.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    for n in LENGTHS:
        with torch.no_grad():
            frames = tiny_hubert(torch.randn(1, n)).last_hidden_state.shape[1]
        assert frames == hubert_num_frames(n) == int(tiny_hubert._get_feat_extract_output_lengths(n))
        assert label_num_frames(n, 50) == frames and label_num_frames(n, 100) == 2 * frames


def test_label_files_have_hubert_frame_counts(tiny_labels, tiny_parts, tiny_hubert):
    _summary, manifests = read_partition(tiny_parts.out)
    checked = 0
    for client_id, rows in manifests.items():
        for split in ("train", "val"):
            tsv = (tiny_labels.out / client_id / f"{split}.tsv").read_text().splitlines()[1:]
            km = (tiny_labels.out / client_id / f"{split}.km").read_text().splitlines()
            assert len(tsv) == len(km) == sum(r["split"] == split for r in rows)
            for tsv_line, km_line in zip(tsv, km):
                n = int(tsv_line.split("\t")[1])
                assert len(km_line.split()) == hubert_num_frames(n)
                checked += 1
    assert checked == sum(len(r) for r in manifests.values())
    # and against the real model on a few of the actual files
    for row in manifests["client_000"][:3]:
        audio, _ = sf.read(row["path"], dtype="float32")
        with torch.no_grad():
            frames = tiny_hubert(torch.from_numpy(audio)[None]).last_hidden_state.shape[1]
        assert frames == label_num_frames(len(audio), 50)


def test_mfcc_is_39_dims_at_100_hz():
    ex = MfccExtractor()
    rng = np.random.default_rng(0)
    for n in (400, 559, 560, 16000, 24321):
        feats = ex(rng.normal(0, 0.1, n).astype(np.float32))
        assert feats.shape == (mfcc_num_frames(n), 39) == ((n - 400) // 160 + 1, 39)
        assert torch.isfinite(feats).all()
    assert ex(np.zeros(399, np.float32)).shape == (0, 39)
    audios = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 5000, 12345)]
    for one, batched in zip([ex(a) for a in audios], ex.batch(audios)):
        assert torch.allclose(one, batched, atol=1e-4)


def test_deltas_match_the_regression_formula():
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2) ** 2
    d = compute_deltas(x)
    t = 5  # interior frame: sum_k k (x[t+k] - x[t-k]) / 10
    expected = (1 * (x[t + 1] - x[t - 1]) + 2 * (x[t + 2] - x[t - 2])) / 10
    assert torch.allclose(d[t], expected)
    assert torch.allclose(compute_deltas(torch.ones(6, 3)), torch.zeros(6, 3))


@pytest.mark.parametrize("n", LENGTHS)
def test_label_rate_alignment(n):
    frames = np.arange(mfcc_num_frames(n))
    fifty = to_label_rate(frames, n, 50)
    hundred = to_label_rate(frames, n, 100)
    assert len(fifty) == hubert_num_frames(n) and np.array_equal(fifty, frames[::2])
    assert len(hundred) == 2 * hubert_num_frames(n)
    assert np.array_equal(hundred[: len(frames)], frames[: len(hundred)])


def test_phone_metrics_extremes():
    phones = np.array(list("aabbccdd") * 10)
    perfect = phone_metrics(phones, np.searchsorted(np.unique(phones), phones))
    assert perfect["pnmi"] == pytest.approx(1.0)
    assert perfect["phone_purity"] == pytest.approx(1.0) and perfect["cluster_purity"] == pytest.approx(1.0)
    constant = phone_metrics(phones, np.zeros(len(phones), int))
    assert constant["pnmi"] == pytest.approx(0.0) and constant["phone_purity"] == pytest.approx(0.25)
    assert constant["cluster_purity"] == pytest.approx(1.0)


def test_kmeans_labels_beat_random_on_phone_metrics(tiny_labels):
    pm = tiny_labels.summary["phone_metrics"]
    assert pm["available"] and pm["frames"] > 2000
    km, rnd = pm["mean"]["kmeans"], pm["mean"]["random"]
    assert km["pnmi"] > rnd["pnmi"] + 0.2
    assert km["phone_purity"] > 2 * rnd["phone_purity"]
    models = tiny_labels.summary["models"]
    assert set(models) == {"client_000", "client_001", "client_002"}
    assert all(m["clusters"] == 20 and m["clusters_used"] >= 15 and m["inertia"] > 0 for m in models.values())
    assert json.loads((tiny_labels.out / "summary.json").read_text())["models"] == models
    assert np.load(tiny_labels.out / "client_000" / "centroids.npy").shape == (20, 39)


def test_global_scope_100hz_and_cluster_lowering(tiny_parts, tmp_path):
    cfg = KmeansConfig(clusters=1000, scope="global", label_rate=100, seed=0, n_init=2)
    result = learn_kmeans_labels(tiny_parts.out, tmp_path / "labels", cfg)
    (model,) = result.summary["models"].values()
    frames = model["fit_frames"]
    assert model["clusters"] == min(1000, frames // 10) < 1000
    assert any("using" in w and "clusters" in w for w in result.warnings)
    km = (tmp_path / "labels" / "client_000" / "train.km").read_text().splitlines()
    tsv = (tmp_path / "labels" / "client_000" / "train.tsv").read_text().splitlines()[1:]
    assert [len(k.split()) for k in km] == [2 * hubert_num_frames(int(t.split("\t")[1])) for t in tsv]
    # one model: the same dictionary for every client
    assert (tmp_path / "labels" / "global" / "centroids.npy").exists()


def test_too_few_frames_is_an_error_and_writes_nothing(tiny_parts, tmp_path):
    cfg = KmeansConfig(clusters=50, scope="client", fit_fraction=0.001)
    with pytest.raises(FedctlError, match="too few for k-means"):
        learn_kmeans_labels(tiny_parts.out, tmp_path / "labels", cfg)
    assert not (tmp_path / "labels").exists()


def test_bad_parts_folder(tmp_path):
    with pytest.raises(FedctlError, match="summary.json not found"):
        learn_kmeans_labels(tmp_path, tmp_path / "labels")
