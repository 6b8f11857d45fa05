import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from fedctl.data.speech.librispeech import Utterance, index_librispeech
from fedctl.data.speech.partition import (
    partition_librispeech,
    read_partition,
    split_by_speaker,
    split_dirichlet,
)
from fedctl.errors import FedctlError

from .conftest import SPEAKERS, UTTERANCES


def _fake(n_speakers: int, seed: int) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    utts = []
    for s in range(n_speakers):
        for i in range(int(rng.integers(1, 30))):
            d = float(rng.uniform(0.5, 20.0))
            utts.append(Utterance(f"{s}-1-{i}", "x.flac", d, int(d * 16000), 16000, str(s), "1", "A"))
    return utts


def test_manifests_and_summary_match_the_corpus(tiny_parts):
    summary, manifests = read_partition(tiny_parts.out)
    rows = [r for rs in manifests.values() for r in rs]
    assert len(rows) == SPEAKERS * UTTERANCES == summary["totals"]["utterances"]
    assert summary["num_bad_files"] == 0 and summary["totals"]["speakers"] == SPEAKERS
    assert set(rows[0]) >= {"id", "path", "duration", "num_samples", "sample_rate", "speaker", "chapter",
                            "transcript", "split", "phones"}
    for c in summary["per_client"]:
        client_rows = manifests[c["client_id"]]
        assert c["utterances"] == len(client_rows)
        assert c["hours"] == pytest.approx(sum(r["duration"] for r in client_rows) / 3600)
        assert c["val"] == sum(r["split"] == "val" for r in client_rows) == round(0.2 * len(client_rows))
    assert sum(c["hours"] for c in summary["per_client"]) == pytest.approx(summary["totals"]["hours"])


@pytest.mark.parametrize("seed", range(20))
def test_speaker_split_never_splits_a_speaker_and_bounds_the_hour_spread(seed):
    utts = _fake(n_speakers=37, seed=seed)
    clients = 1 + seed % 9
    parts = split_by_speaker(utts, clients)
    owner = {}
    for k, part in enumerate(parts):
        for u in part:
            assert owner.setdefault(u.speaker, k) == k
    assert sum(len(p) for p in parts) == len(utts)
    hours = [sum(u.duration for u in p) for p in parts]
    largest_speaker = max(sum(u.duration for u in utts if u.speaker == s) for s in owner)
    # greedy least-loaded assignment: max - min <= the largest single speaker
    assert max(hours) - min(hours) <= largest_speaker + 1e-9


def test_speaker_split_on_the_synth_corpus(tiny_parts):
    summary, manifests = read_partition(tiny_parts.out)
    speakers = [{r["speaker"] for r in rows} for rows in manifests.values()]
    assert sum(len(s) for s in speakers) == len(set().union(*speakers)) == SPEAKERS
    assert summary["hours_spread"] <= summary["largest_speaker_hours"]


def test_dirichlet_is_reproducible_for_a_seed_and_skewed():
    utts = _fake(n_speakers=20, seed=1)
    a = split_dirichlet(utts, 5, 0.3, np.random.default_rng(7))
    b = split_dirichlet(utts, 5, 0.3, np.random.default_rng(7))
    c = split_dirichlet(utts, 5, 0.3, np.random.default_rng(8))
    assert [[u.id for u in p] for p in a] == [[u.id for u in p] for p in b]
    assert [[u.id for u in p] for p in a] != [[u.id for u in p] for p in c]
    assert sorted(u.id for p in a for u in p) == sorted(u.id for u in utts)
    assert min(len(p) for p in a) >= 1


def test_dirichlet_cli_path_is_reproducible(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    runs = [partition_librispeech([root], tmp_path / f"p{i}", clients=4, by="dirichlet", alpha=0.5, seed=3)
            for i in range(2)]
    for name in ("client_000.jsonl", "client_003.jsonl", "summary.json"):
        assert (tmp_path / "p0" / name).read_text() == (tmp_path / "p1" / name).read_text()
    assert runs[0].summary["alpha"] == 0.5


def test_iid_is_even(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    result = partition_librispeech([root], tmp_path / "iid", clients=4, by="iid", seed=0)
    sizes = [c["utterances"] for c in result.summary["per_client"]]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == SPEAKERS * UTTERANCES


@pytest.fixture()
def broken_tree(tiny_corpus, tmp_path):
    """A copy of two speakers with one of every kind of bad file."""
    root, _ = tiny_corpus
    tree = tmp_path / "broken"
    for spk in sorted(p.name for p in root.iterdir() if p.is_dir())[:2]:
        shutil.copytree(root / spk, tree / spk)
    chapter = sorted(tree.glob("*/*"))[0]
    flacs = sorted(chapter.glob("*.flac"))
    flacs[0].write_bytes(b"")  # zero-length file
    flacs[1].write_bytes(b"not a flac at all" * 10)  # unreadable
    trans = next(chapter.glob("*.trans.txt"))
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(line for line in lines if not line.startswith(flacs[2].stem)) + "\n")  # no line
    sf.write(chapter / "1001-100100-9998.wav", np.zeros(8000, np.float32), 8000)  # 8 kHz: read, resampled
    sf.write(chapter / "1001-100100-9997.wav", np.zeros(16000, np.float32), 16000)  # good WAV
    with trans.open("a") as f:
        f.write("1001-100100-9998 EIGHT KILOHERTZ\n1001-100100-9997 A WAV FILE\n1001-100100-9999 NO AUDIO\n")
    return tree


def test_bad_files_are_listed_counted_and_skipped(broken_tree, tmp_path):
    result = partition_librispeech([broken_tree], tmp_path / "parts", clients=2, seed=0)
    reasons = {b.path.rsplit("/", 1)[-1]: b.reason for b in result.bad_files}
    assert len(result.bad_files) == 4 == result.summary["num_bad_files"]
    assert "empty file" in next(r for p, r in reasons.items() if p.endswith("0000.flac"))
    assert "unreadable audio" in next(r for p, r in reasons.items() if p.endswith("0001.flac"))
    assert "no transcript line" in next(r for p, r in reasons.items() if p.endswith(".flac") and "0002" in p)
    assert "1001-100100-9998.wav" not in reasons  # 8 kHz is no longer refused: resampled on reading
    assert "no audio" in reasons["1001-100100-9999.flac"]
    good = 2 * UTTERANCES - 3 + 2  # three broken FLACs out, the 16 kHz and the 8 kHz WAV in
    assert result.summary["totals"]["utterances"] == good
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert len(summary["bad_files"]) == 4
    assert summary["audio"]["input_rates_hz"] == {"8000": 1, "16000": good - 1} and summary["audio"]["resampled"] == 1
    _, manifests = read_partition(tmp_path / "parts")
    row = next(r for rows in manifests.values() for r in rows if r["id"] == "1001-100100-9998")
    assert (row["num_samples"], row["sample_rate"], row["source_rate"], row["channels"]) == (16000, 16000, 8000, 1)


def test_strict_turns_bad_files_into_an_error_and_writes_nothing(broken_tree, tmp_path):
    with pytest.raises(FedctlError, match=r"4 bad file\(s\) with --strict"):
        partition_librispeech([broken_tree], tmp_path / "parts", clients=2, strict=True)
    assert not (tmp_path / "parts").exists()
    assert list(tmp_path.glob(".parts*")) == []


def test_more_clients_than_speakers_is_a_clear_error(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    with pytest.raises(FedctlError, match=f"only {SPEAKERS} speakers") as exc:
        partition_librispeech([root], tmp_path / "parts", clients=SPEAKERS + 1)
    assert "--by iid" in exc.value.hint
    assert not (tmp_path / "parts").exists()


def test_several_roots_and_duplicate_ids(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    index = index_librispeech([root, root])
    assert len(index.utterances) == SPEAKERS * UTTERANCES
    assert len(index.bad_files) == SPEAKERS * UTTERANCES
    assert all("duplicate utterance id" in b.reason for b in index.bad_files)


def test_missing_root_and_empty_tree(tmp_path):
    with pytest.raises(FedctlError, match="is not a directory"):
        index_librispeech([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedctlError, match="no LibriSpeech transcripts"):
        index_librispeech([tmp_path / "empty"])


def test_sizes_and_val_by_speaker_end_to_end(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    result = partition_librispeech([root], tmp_path / "p", clients=2, by="speaker", sizes="linear",
                                   val_by="speaker", val_fraction=0.3, seed=1)
    summary, manifests = read_partition(result.out)
    # 30 utterances, linear over 2 clients: 30*1/3 = 10, 30*2/3 = 20; 5 utterances per speaker: met exactly
    assert summary["target_sizes"] == [10, 20] and [c["utterances"] for c in summary["per_client"]] == [10, 20]
    assert summary["size_deviation"] == 0 and summary["val_by"] == "speaker"
    for rows in manifests.values():
        train = {r["speaker"] for r in rows if r["split"] == "train"}
        val = {r["speaker"] for r in rows if r["split"] == "val"}
        assert train and val and not train & val  # whole speakers held out
    # client_000 has 2 speakers (10 utterances): val 1 speaker = 5 of 10 (nearest to 0.3*10 = 3 with >= 1 speaker)
    assert [c["val"] for c in summary["per_client"]] == [5, 5]  # client_001: 4 speakers, 0.3*20 = 6 -> 5


def test_val_by_speaker_needs_two_speakers_per_client(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    with pytest.raises(FedctlError, match="client_000 has 1 speaker") as exc:
        partition_librispeech([root], tmp_path / "p", clients=6, by="speaker", val_by="speaker")
    assert "--val-by utterance" in exc.value.hint
    assert not (tmp_path / "p").exists()


def test_sizes_with_iid_give_flwr_sizes(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    result = partition_librispeech([root], tmp_path / "p", clients=3, by="iid", sizes="square", seed=0)
    # 30 utterances, square: 30*[1,4,9]/14 = 2.1, 8.6, 19.3 -> 2, 8, 19 (+1)
    assert [c["utterances"] for c in result.summary["per_client"]] == [2, 8, 20]
