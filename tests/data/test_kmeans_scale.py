"""k-means in bounded memory (shards, fit sample, streamed labels), TextGrid / frame-label alignments, speaker NMI."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.data.speech.alignments import Alignments
from fedctl.data.speech.feature_shards import ShardReader, ShardWriter, sample_without_replacement
from fedctl.data.speech.features import MfccExtractor, to_label_rate
from fedctl.data.speech.kmeans import (
    KmeansConfig,
    _fit,
    frame_phones,
    learn_kmeans_labels,
    normalised_mutual_information,
)
from fedctl.data.speech.partition import read_partition
from fedctl.errors import FedctlError

runner = CliRunner()


def _km_lines(folder, client, split):
    return [list(map(int, line.split())) for line in (folder / client / f"{split}.km").read_text().splitlines()]


def test_shard_roundtrip_and_take(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 7)).astype(np.float32)
    with ShardWriter(tmp_path / "a.npy", 1000, 7) as w:
        for start in range(0, 1000, 333):
            w.append(data[start : start + 333])
    assert np.array_equal(np.load(tmp_path / "a.npy"), data)  # a plain .npy
    reader = ShardReader(tmp_path / "a.npy")
    assert np.array_equal(reader.read(10, 20), data[10:20])
    positions = np.sort(rng.choice(1000, 100, replace=False))
    assert np.array_equal(reader.take(positions, block=64), data[positions])
    with pytest.raises(ValueError, match="header says"):
        with ShardWriter(tmp_path / "b.npy", 5, 7) as w:
            w.append(data[:4])


def test_sample_without_replacement():
    # small populations: exactly the former sort(permutation(n)[:k]) draw
    a = sample_without_replacement(500, 40, np.random.default_rng(3))
    assert np.array_equal(a, np.sort(np.random.default_rng(3).permutation(500)[:40]))
    # chunked path: sorted, distinct, in range, the right count, roughly uniform over chunks
    b = sample_without_replacement(10_000, 2_000, np.random.default_rng(1), chunk=1024)
    assert len(b) == len(np.unique(b)) == 2000 and np.all(np.diff(b) > 0) and 0 <= b[0] and b[-1] < 10_000
    per_chunk = np.bincount(b // 1024)[:9]  # 9 full chunks, each expects 2000 * 1024 / 10000 = 204.8
    assert np.all(np.abs(per_chunk - 204.8) < 60)
    assert np.array_equal(sample_without_replacement(5, 9, np.random.default_rng(0)), np.arange(5))


def test_streamed_labels_equal_in_memory_labels(tiny_parts, tmp_path):
    """The former all-in-memory recipe (features -> concat train frames -> fit -> predict each utterance) on the
    same partition gives the same centroids and the same labels, for any block size."""
    cfg = KmeansConfig(clusters=12, scope="global", label_rate=50, seed=0, n_init=3, block_frames=97)
    result = learn_kmeans_labels(tiny_parts.out, tmp_path / "streamed", cfg)
    _summary, manifests = read_partition(tiny_parts.out)
    ex = MfccExtractor()
    feats = {cid: [to_label_rate(f.numpy(), r["num_samples"], 50)
                   for r, f in zip(rows, ex.batch([sf.read(r["path"], dtype="float32")[0] for r in rows]))]
             for cid, rows in manifests.items()}
    train = np.concatenate([f for cid, rows in manifests.items() for r, f in zip(rows, feats[cid])
                            if r["split"] == "train"])
    km = _fit(train, 12, cfg, seed=0)
    assert np.array_equal(np.load(tmp_path / "streamed" / "global" / "centroids.npy"),
                          km.cluster_centers_.astype(np.float32))
    for cid, rows in manifests.items():
        for split in ("train", "val"):
            expected = [km.predict(f).tolist() for r, f in zip(rows, feats[cid]) if r["split"] == split]
            assert _km_lines(tmp_path / "streamed", cid, split) == expected
    assert result.summary["models"]["global"]["fit_frames"] == len(train)
    # one utterance per block and one big block: the same labels
    big = learn_kmeans_labels(tiny_parts.out, tmp_path / "big", KmeansConfig(**{**cfg.__dict__, "block_frames": 10**6}))
    for cid in manifests:
        assert _km_lines(tmp_path / "big", cid, "train") == _km_lines(tmp_path / "streamed", cid, "train")
    assert big.summary["speaker_metrics"] == result.summary["speaker_metrics"]
    assert not (tmp_path / "streamed" / "features").exists()  # shards are scratch unless kept


def test_max_fit_frames_caps_the_sample_and_keep_features(tiny_parts, tmp_path):
    cfg = KmeansConfig(clusters=8, scope="client", seed=0, n_init=2, max_fit_frames=300, keep_features=True)
    result = learn_kmeans_labels(tiny_parts.out, tmp_path / "l", cfg)
    assert all(m["fit_frames"] == 300 for m in result.summary["models"].values())
    shard = np.load(tmp_path / "l" / "features" / "client_000.npy")
    lines = _km_lines(tmp_path / "l", "client_000", "train") + _km_lines(tmp_path / "l", "client_000", "val")
    assert shard.shape == (sum(map(len, lines)), 39)
    with pytest.raises(FedctlError, match="--max-fit-frames must be >= 1, got 0"):
        learn_kmeans_labels(tiny_parts.out, tmp_path / "z", KmeansConfig(max_fit_frames=0))
    assert not (tmp_path / "z").exists()


def test_speaker_nmi_hand_computed():
    # speaker a: 2 frames in cluster 0; speaker b: one in 0, one in 1.
    # I = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2 = 3/4 ln(4/3); H(speaker) = ln 2
    assert normalised_mutual_information(np.array([[2, 0], [1, 1]])) == pytest.approx(0.75 * math.log(4 / 3) / math.log(2))
    assert normalised_mutual_information(np.array([[3, 0], [0, 5]])) == pytest.approx(1.0)
    assert normalised_mutual_information(np.array([[3, 3], [5, 5]])) == pytest.approx(0.0)
    assert normalised_mutual_information(np.array([[4, 1]])) is None  # one speaker: no entropy to explain


def test_speaker_metrics_in_summary(tiny_labels):
    sm = tiny_labels.summary["speaker_metrics"]
    # 3 clients x 2 speakers each (by speaker): every model has speaker entropy
    assert sm["models"] == sm["models_scored"] == 3
    assert 0 <= sm["random_nmi"] < sm["nmi"] <= 1
    for m in sm["per_model"].values():
        assert m["speakers"] == 2 and m["kmeans"]["frames"] == m["random"]["frames"] > 0


def _write_textgrids(manifests, folder, label_rate=50, tier="phones"):
    """One MFA-style TextGrid per utterance, from the corpus' .phn (sample offsets -> seconds)."""
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    for rows in manifests.values():
        for r in rows:
            lines = [line.split() for line in open(r["phones"]).read().splitlines() if line.strip()]
            end = r["num_samples"] / 16000
            intervals = [Interval(int(a) / 16000, min(int(b) / 16000, end), "" if p == "sil" else p)
                         for a, b, p in lines if int(a) / 16000 < end]
            grid = textgrid.Textgrid()
            grid.addTier(textgrid.IntervalTier(tier, intervals, 0, end))
            grid.addTier(textgrid.IntervalTier("words", [Interval(0, end, "w")], 0, end))
            (folder / r["speaker"]).mkdir(parents=True, exist_ok=True)
            grid.save(str(folder / r["speaker"] / f"{r['id']}.TextGrid"), format="long_textgrid",
                      includeBlankSpaces=True)


def test_textgrid_frame_phones_hand_computed(tmp_path):
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    grid = textgrid.Textgrid()
    grid.addTier(textgrid.IntervalTier("phones", [Interval(0.0, 0.03, "AH0"), Interval(0.05, 0.1, "B")], 0, 0.12))
    grid.save(str(tmp_path / "u1.TextGrid"), format="short_textgrid", includeBlankSpaces=False)
    al = Alignments(tmp_path)
    # 50 Hz label frames: centres at 200 + 320 j samples = 0.0125, 0.0325, 0.0525, 0.0725, 0.0925, 0.1125 s
    assert al.frame_phones("u1", 6, 50).tolist() == ["AH0", "sil", "B", "B", "B", "sil"]
    assert al.frame_phones("other", 6, 50) is None


def test_textgrid_alignments_give_the_same_pnmi_as_phn(tiny_parts, tiny_labels, tmp_path):
    _summary, manifests = read_partition(tiny_parts.out)
    _write_textgrids(manifests, tmp_path / "mfa")
    cfg = KmeansConfig(clusters=20, scope="client", label_rate=50, seed=0, alignments=str(tmp_path / "mfa"))
    result = learn_kmeans_labels(tiny_parts.out, tmp_path / "labels", cfg)
    pm, ref = result.summary["phone_metrics"], tiny_labels.summary["phone_metrics"]
    assert pm["available"] and pm["aligned_utterances"] == pm["utterances"] == 30
    assert pm["frames"] == ref["frames"]
    for key in ("pnmi", "phone_purity", "cluster_purity"):
        assert pm["mean"]["kmeans"][key] == pytest.approx(ref["mean"]["kmeans"][key], abs=1e-12)
    # and a keyed frame-label file at 50 Hz holding each label frame's phone: the same again
    lines = [r["id"] + " " + " ".join(frame_phones(r["phones"], len(lab), 50).tolist())
             for rows in manifests.values() for r in rows
             for lab in [np.zeros(int((r["num_samples"] - 400) // 320 + 1))]]
    (tmp_path / "frames.txt").write_text("\n".join(lines) + "\n")
    cfg2 = KmeansConfig(clusters=20, scope="client", seed=0, alignments=str(tmp_path / "frames.txt"), alignment_rate=50)
    pm2 = learn_kmeans_labels(tiny_parts.out, tmp_path / "labels2", cfg2).summary["phone_metrics"]
    assert pm2["mean"]["kmeans"]["pnmi"] == pytest.approx(ref["mean"]["kmeans"]["pnmi"], abs=1e-12)


def test_bad_alignment_inputs_exit_1(tiny_parts, tmp_path):
    _summary, manifests = read_partition(tiny_parts.out)
    _write_textgrids(manifests, tmp_path / "mfa", tier="phone")  # the tier is named 'phone', not 'phones'
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tiny_parts.out), "--alignments", str(tmp_path / "mfa"),
                            "--clusters", "8", "--out", str(tmp_path / "l")])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert [line.split(":")[0] for line in lines[-2:]] == ["Error", "Hint"]
    assert "has no tier 'phones' (its tiers: phone, words)" in r.output
    assert "--tier with one of: phone, words" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "l").exists()
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tiny_parts.out), "--max-fit-frames", "0",
                            "--out", str(tmp_path / "l")])
    assert r.exit_code == 1 and "Error: --max-fit-frames must be >= 1, got 0" in r.output and "Hint:" in r.output
    assert not (tmp_path / "l").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.TextGrid").write_text("not a textgrid")
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tiny_parts.out), "--alignments", str(tmp_path / "empty"),
                            "--out", str(tmp_path / "l")])
    assert r.exit_code == 1 and "covers none of the partition's utterances" in r.output


def test_cli_reports_speaker_information(tiny_parts, tmp_path):
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tiny_parts.out), "--clusters", "8", "--scope", "global",
                            "--out", str(tmp_path / "l")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "l" / "summary.json").read_text())
    nmi = summary["speaker_metrics"]["nmi"]
    assert f"I(cluster; speaker)/H(speaker) {nmi:.3f}" in r.output
