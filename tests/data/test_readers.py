"""One reader layer: the same utterances as a LibriSpeech tree, CSV, fairseq TSV or local HF dataset give
the same utterance table, the same partition and the same k-means labels; other rates/channels are
resampled and down-mixed once, in `load_audio`."""

import json

import numpy as np
import pytest
import soxr
from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.data.speech.audio import load_audio, resampled_length
from fedctl.data.speech.features import MfccExtractor, to_label_rate
from fedctl.data.speech.readers import detect_format, read_corpus
from fedctl.errors import FedctlError

from .speech_corpora import (
    make_utterances,
    write_csv,
    write_fairseq,
    write_hf,
    write_librispeech,
)

runner = CliRunner()
FORMATS = ("librispeech", "csv", "tsv", "tsv-ltr", "hf", "parquet")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The same 12 utterances (4 speakers) in every input format."""
    base = tmp_path_factory.mktemp("readers")
    utts = make_utterances(speakers=4, per_speaker=3, seed=0)
    tree = write_librispeech(utts, base / "tree")
    shuffled = [utts[i] for i in np.random.default_rng(1).permutation(len(utts))]  # row order must not matter
    (base / "ltr").mkdir()
    return utts, {
        "librispeech": tree,
        "csv": write_csv(shuffled, tree, base / "clips.csv"),
        "tsv": write_fairseq(shuffled, tree, base / "train.tsv"),
        "tsv-ltr": write_fairseq(shuffled, tree, base / "ltr" / "train.tsv", side="ltr"),
        "hf": write_hf(shuffled, base / "hfds"),
        "parquet": write_hf(shuffled, base / "clips.parquet", parquet=True),
    }


def _table(index):
    return [(u.id, u.speaker, u.chapter, u.transcript, u.num_samples, u.sample_rate) for u in index.utterances]


def test_every_format_is_detected_and_gives_the_same_utterance_table(corpora):
    utts, sources = corpora
    expected = sorted((u.id, u.speaker, "7", u.transcript, len(u.audio), 16000) for u in utts)
    detected = {name: detect_format(src) for name, src in sources.items()}
    assert detected == {"librispeech": "librispeech", "csv": "csv", "tsv": "tsv", "tsv-ltr": "tsv",
                        "hf": "hf", "parquet": "hf"}
    for name, src in sources.items():
        index = read_corpus([src])
        assert not index.bad_files, name
        assert _table(index) == expected, name
        for u in index.utterances[:2]:  # the audio every consumer reads is the original, sample for sample
            original = next(x for x in utts if x.id == u.id).audio
            assert np.array_equal(load_audio(u.path, dtype="int16"), original), name


def _partition_and_labels(src, out):
    r = runner.invoke(app, ["data", "partition", "speech", "--root", str(src), "--clients", "2", "--val-fraction",
                            "0.25", "--seed", "3", "--out", str(out / "parts")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(out / "parts"), "--clusters", "6", "--scope", "global",
                            "--seed", "0", "--out", str(out / "labels")])
    assert r.exit_code == 0, r.output
    parts = {}
    for f in sorted((out / "parts").glob("client_*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        parts[f.stem] = [(r["id"], r["speaker"], r["split"], r["num_samples"], r["transcript"]) for r in rows]
    labels = {p.relative_to(out / "labels").as_posix(): p.read_text() for p in sorted((out / "labels").glob("*/*.km"))}
    return parts, labels


@pytest.fixture(scope="module")
def reference(corpora, tmp_path_factory):
    _utts, sources = corpora
    return _partition_and_labels(sources["librispeech"], tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("name", FORMATS[1:])
def test_same_partitions_and_same_kmeans_labels_from_every_format(corpora, reference, name, tmp_path):
    _utts, sources = corpora
    parts, labels = reference
    assert sum(len(p) for p in parts.values()) == 12 and len(labels) == 4  # 2 clients x train/val
    assert sum(len(line.split()) for text in labels.values() for line in text.splitlines()) > 500
    assert sorted({s for p in parts.values() for _, _, s, _, _ in p}) == ["train", "val"]
    p, lab = _partition_and_labels(sources[name], tmp_path)
    assert p == parts
    assert lab == labels


def test_44k_stereo_gives_the_labels_of_its_16k_mono_original(tmp_path):
    """A 16 kHz mono corpus, and the same signals upsampled to 44.1 kHz in two channels whose mean is the
    original: the reader resamples/down-mixes them back; MFCC k-means labels (centroids fitted on the
    original) agree on >= 95% of frames."""
    utts = make_utterances(speakers=2, per_speaker=3, seed=5)
    write_librispeech(utts, tmp_path / "mono")
    for u in utts:
        up = soxr.resample(u.audio.astype(np.float32) / 32768, 16000, 44100)
        u.audio, u.rate = (np.stack([1.2 * up, 0.8 * up], axis=1) * 32768).clip(-32768, 32767).astype(np.int16), 44100
    write_librispeech(utts, tmp_path / "stereo", fmt="WAV")
    for name in ("mono", "stereo"):
        r = runner.invoke(app, ["data", "partition", "speech", "--root", str(tmp_path / name), "--clients", "1",
                                "--val-fraction", "0", "--out", str(tmp_path / f"parts_{name}")])
        assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "parts_stereo" / "summary.json").read_text())
    assert summary["audio"]["input_rates_hz"] == {"44100": 6} and summary["audio"]["input_channels"] == {"2": 6}
    assert summary["audio"]["resampled"] == 6 == summary["audio"]["downmixed"]
    assert summary["audio"]["resampler"].startswith(f"soxr {soxr.__version__}")
    assert "audio read at 16 kHz mono: 6 resampled" in r.output
    mono = json.loads((tmp_path / "parts_mono" / "summary.json").read_text())["audio"]
    assert mono["resampled"] == 0 and mono["resampler"] is None
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tmp_path / "parts_mono"), "--clusters", "8",
                            "--scope", "global", "--out", str(tmp_path / "labels")])
    assert r.exit_code == 0, r.output
    centroids = np.load(tmp_path / "labels" / "global" / "centroids.npy")
    rows = {n: [json.loads(x) for x in (tmp_path / f"parts_{n}" / "client_000.jsonl").read_text().splitlines()]
            for n in ("mono", "stereo")}
    ex = MfccExtractor()
    agree = total = 0
    for a, b in zip(rows["mono"], rows["stereo"]):
        assert a["id"] == b["id"] and b["source_rate"] == 44100 and b["channels"] == 2
        assert b["num_samples"] == resampled_length(round(a["num_samples"] * 44100 / 16000), 44100) == a["num_samples"]
        la, lb = [np.argmin(((to_label_rate(ex(load_audio(r["path"])).numpy(), r["num_samples"], 50)[:, None]
                               - centroids[None]) ** 2).sum(-1), axis=1) for r in (a, b)]
        assert len(la) == len(lb)
        agree += int((la == lb).sum())
        total += len(la)
    print(f"44.1 kHz stereo vs 16 kHz mono: {agree}/{total} label frames agree ({agree / total:.4f})")
    assert total > 200 and agree / total >= 0.95, agree / total


def test_manifest_row_with_a_missing_file_names_the_row_and_file(corpora, tmp_path):
    utts, sources = corpora
    manifest = sources["csv"].with_name("missing_row.csv")  # beside the good one: its relative paths hold
    manifest.write_text(sources["csv"].read_text() + "nowhere/gone.flac,9,HELLO\n")
    r = runner.invoke(app, ["data", "partition", "speech", "--root", str(manifest), "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[0].startswith("Error:") and "row 14" in r.output and "gone.flac" in r.output
    assert any(line.startswith("Hint:") for line in lines)
    assert not (tmp_path / "p").exists()
    tsv = tmp_path / "f.tsv"
    tsv.write_text(sources["tsv"].read_text() + "x/missing.flac\t16000\n")
    with pytest.raises(FedctlError, match=r"f\.tsv row 14: audio file .*missing\.flac does not exist"):
        read_corpus([tsv])


def test_manifest_without_a_path_column_names_the_accepted_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("clip,speaker,text\na.flac,1,HI\n")
    r = runner.invoke(app, ["data", "partition", "speech", "--root", str(manifest), "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Error:" in r.output and "no audio path column" in r.output and "clip, speaker, text" in r.output
    hint = r.output[r.output.index("Hint:"):]
    for name in ("path", "audio", "audio_path", "file", "speaker", "transcript", "text", "duration"):
        assert name in hint


def test_stale_manifest_durations_and_sample_counts_are_bad_files(corpora, tmp_path):
    utts, sources = corpora
    manifest = write_csv(utts, sources["librispeech"], tmp_path / "d.csv", columns=("path", "duration", "id"))
    text = manifest.read_text().splitlines()
    path, dur, uid = text[1].split(",")
    text[1] = f"{path},{float(dur) + 0.5:.4f},{uid}"
    manifest.write_text("\n".join(text) + "\n")
    index = read_corpus([manifest])
    assert len(index.utterances) == 11 and len(index.bad_files) == 1
    assert "stale manifest" in index.bad_files[0].reason and index.bad_files[0].path.endswith(f"{uid}.flac")
    assert {u.speaker for u in index.utterances} == {"100", "101", "102", "103"}  # from the LibriSpeech-style ids
    assert all(u.transcript is None for u in index.utterances)  # no transcript column
