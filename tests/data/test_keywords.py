"""Keyword-spotting data: `synth_keywords` writes the Speech Commands layout, `read_speech_commands` reads it.

The tiny corpus: keywords yes, no; other words cat, dog; 5 speakers x 2 repetitions; 4 noise files of 10 s.
Hand-derived counts: 5 speakers -> max(1, round(0.5)) = 1 validation, 1 test, 3 train speakers; 4 words x 2
repetitions = 8 clips per speaker; each 10 s noise file -> 10 windows: 8 train, 1 validation, 1 test.
"""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from fedctl.data.speech.keywords import (
    KeywordUtterance,
    keyword_labels,
    load_keyword_audio,
    partition_keywords,
    read_speech_commands,
    which_set,
)
from fedctl.data.speech.synth_keywords import NOISE_FILES, speaker_ids, synth_keywords
from fedctl.errors import FedctlError

WORDS, UNKNOWN = ("yes", "no"), ("cat", "dog")
SPEAKERS, REPETITIONS, NOISE_SECONDS = 5, 2, 10.0


def readme_split(speaker: str) -> str:
    """The Speech Commands README's which_set, written out again here (10 % validation, 10 % testing)."""
    value = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 2**27
    percentage = value * (100.0 / (2**27 - 1))
    return "validation" if percentage < 10 else "test" if percentage < 20 else "train"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("kw") / "speech_commands"
    result = synth_keywords(root, keywords=WORDS, unknown_words=UNKNOWN, speakers=SPEAKERS,
                            repetitions=REPETITIONS, noise_seconds=NOISE_SECONDS, seed=0)
    return root, result


def speakers_by_split(root):
    spk = {}
    for wav in root.glob("*/*_nohash_*.wav"):
        spk.setdefault(wav.name.split("_nohash_")[0], set())
    return spk


# ---------------------------------------------------------------- the hashing rule


def test_which_set_matches_the_official_lists():
    # speaker ids that the official v0.01 validation_list.txt / testing_list.txt hold
    for speaker in ("fde2dee7", "099d52ad", "364c0853", "471a0925", "7c1d8533"):
        assert which_set(f"right/{speaker}_nohash_0.wav") == "validation"
    for speaker in ("0c40e715", "022cd682", "096456f9", "1b4c9b89", "f6af2457"):
        assert which_set(f"up/{speaker}_nohash_3.wav") == "test"
    # only the speaker id counts: word folder and repetition number do not move a file
    assert {which_set(f"{w}/3bc21161_nohash_{n}.wav") for w in ("yes", "cat") for n in range(4)} == {"train"}


def test_speaker_ids_hash_to_their_split_in_the_asked_proportions():
    ids = speaker_ids(50, seed=3)
    assert len(ids) == 50 and all(re.fullmatch(r"[0-9a-f]{8}", s) for s in ids)
    assert [sum(v == s for v in ids.values()) for s in ("train", "validation", "test")] == [40, 5, 5]
    assert all(readme_split(s) == split for s, split in ids.items())
    assert ids == speaker_ids(50, seed=3) and set(ids) != set(speaker_ids(50, seed=4))


# ---------------------------------------------------------------- the synthetic corpus


def test_synth_writes_the_official_layout(corpus):
    root, result = corpus
    top = {p.name for p in root.iterdir()}
    assert top == {*WORDS, *UNKNOWN, "_background_noise_", "validation_list.txt", "testing_list.txt",
                   "README.md", ".fedctl-output"}
    speakers = set()
    for word in (*WORDS, *UNKNOWN):
        names = sorted(p.name for p in (root / word).iterdir())
        assert len(names) == SPEAKERS * REPETITIONS
        for name in names:
            m = re.fullmatch(r"([0-9a-f]{8})_nohash_([0-9]+)\.wav", name)
            assert m and int(m.group(2)) < REPETITIONS
            speakers.add(m.group(1))
            info = sf.info(str(root / word / name))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
    assert len(speakers) == SPEAKERS
    noise = sorted(p.name for p in (root / "_background_noise_").iterdir())
    assert noise == sorted([f"{k}.wav" for k in NOISE_FILES] + ["README.md"])
    for k in NOISE_FILES:
        info = sf.info(str(root / "_background_noise_" / f"{k}.wav"))
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 160000)
    assert result.clips == 40 and result.split_speakers == {"train": 3, "validation": 1, "test": 1}
    assert result.split_clips == {"train": 24, "validation": 8, "test": 8}


def test_lists_are_the_hashing_rule_by_speaker(corpus):
    root, _ = corpus
    speakers = sorted(speakers_by_split(root))
    val = [s for s in speakers if readme_split(s) == "validation"]
    test = [s for s in speakers if readme_split(s) == "test"]
    assert len(val) == 1 and len(test) == 1
    expected = {
        "validation_list.txt": sorted(f"{w}/{val[0]}_nohash_{n}.wav" for w in (*WORDS, *UNKNOWN) for n in range(2)),
        "testing_list.txt": sorted(f"{w}/{test[0]}_nohash_{n}.wav" for w in (*WORDS, *UNKNOWN) for n in range(2)),
    }
    for name, lines in expected.items():
        assert (root / name).read_text() == "".join(line + "\n" for line in lines)


def test_clips_hold_a_word_above_the_floor(corpus):
    root, _ = corpus
    for wav in sorted(root.glob("*/*_nohash_*.wav"))[:12]:
        x, _ = sf.read(str(wav), dtype="float32")
        # the word peaks well above the -70 dBFS noise floor; the floor is never digital zero
        assert np.abs(x).max() > 0.05 and np.count_nonzero(x) > 0.9 * len(x)


def test_synth_is_deterministic_for_a_seed(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    synth_keywords(again, keywords=WORDS, unknown_words=UNKNOWN, speakers=SPEAKERS, repetitions=REPETITIONS,
                   noise_seconds=NOISE_SECONDS, seed=0, workers=1)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_synth_refuses_bad_word_lists(tmp_path):
    for kwargs, needle in (
        ({"keywords": ("yes", "Yes!")}, "'Yes!' is not a word"),
        ({"keywords": ("yes", "yes")}, "yes given twice"),
        ({"keywords": ("yes",), "unknown_words": ("yes", "cat")}, "both a keyword and an unknown word"),
        ({"speakers": 2}, "at least 3"),
    ):
        with pytest.raises(FedctlError, match=re.escape(needle)) as info:
            synth_keywords(tmp_path / "k", **kwargs)
        assert info.value.hint
    assert not (tmp_path / "k").exists()


# ---------------------------------------------------------------- the reader


def test_reader_labels_and_splits(corpus):
    root, _ = corpus
    rows = read_speech_commands(root, WORDS)
    labels = keyword_labels(WORDS)
    assert labels == ["yes", "no", "_unknown_", "_silence_"]
    assert all(labels[r.label_index] == r.label for r in rows)
    words = [r for r in rows if r.label != "_silence_"]
    assert len(words) == 40 and len(rows) == 80
    for r in words:
        assert r.label == (r.word if r.word in WORDS else "_unknown_")
        assert r.split == readme_split(r.speaker)  # the lists give the hashing rule's split
        assert r.id == f"{r.word}/{r.speaker}_nohash_{r.id[-1]}" and r.path.endswith(r.id + ".wav")
        assert (r.offset, r.num_samples, r.sample_rate) == (0, 16000, 16000)
    count = {(s, lab): sum(r.split == s and r.label == lab for r in rows) for s in ("train", "validation", "test")
             for lab in labels}
    assert count == {
        ("train", "yes"): 6, ("train", "no"): 6, ("train", "_unknown_"): 12, ("train", "_silence_"): 32,
        ("validation", "yes"): 2, ("validation", "no"): 2, ("validation", "_unknown_"): 4, ("validation", "_silence_"): 4,
        ("test", "yes"): 2, ("test", "no"): 2, ("test", "_unknown_"): 4, ("test", "_silence_"): 4,
    }
    # split by speaker: no speaker in two splits
    splits_of = {}
    for r in words:
        splits_of.setdefault(r.speaker, set()).add(r.split)
    assert len(splits_of) == SPEAKERS and all(len(s) == 1 for s in splits_of.values())


def test_unknown_words_map_to_unknown(corpus):
    root, _ = corpus
    rows = read_speech_commands(root, keywords="yes")  # "no" is now just another word
    assert keyword_labels(["yes"]) == ["yes", "_unknown_", "_silence_"]
    assert {(r.word, r.label, r.label_index) for r in rows} == {
        ("yes", "yes", 0), ("no", "_unknown_", 1), ("cat", "_unknown_", 1), ("dog", "_unknown_", 1),
        ("_background_noise_", "_silence_", 2),
    }


def test_silence_windows_are_one_second_split_by_time(corpus):
    root, _ = corpus
    silence = [r for r in read_speech_commands(root, WORDS) if r.label == "_silence_"]
    assert len(silence) == len(NOISE_FILES) * 10
    for kind in NOISE_FILES:
        windows = [r for r in silence if r.id.startswith(f"_background_noise_/{kind}@")]
        assert [r.offset for r in windows] == [16000 * k for k in range(10)]
        assert [r.split for r in windows] == ["train"] * 8 + ["validation", "test"]
        full, _ = sf.read(windows[0].path, dtype="float32")
        for r in windows:
            assert r.num_samples == 16000 and r.speaker is None and r.duration == 1.0
            audio = load_keyword_audio(r)
            assert audio.shape == (16000,) and audio.dtype == np.float32
            assert np.array_equal(audio, full[r.offset : r.offset + 16000])


def test_without_lists_the_hashing_rule_gives_the_same_splits(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "nolists"
    shutil.copytree(root, copy)
    (copy / "validation_list.txt").unlink()
    (copy / "testing_list.txt").unlink()
    a = {r.id: r.split for r in read_speech_commands(root, WORDS)}
    b = {r.id: r.split for r in read_speech_commands(copy, WORDS)}
    assert a == b


def test_folder_without_a_keyword_is_refused(corpus, tmp_path):
    root, _ = corpus
    bad = tmp_path / "not_commands"
    shutil.copytree(root / "cat", bad / "cat")
    with pytest.raises(FedctlError) as info:
        read_speech_commands(bad)
    message = info.value.message
    assert str(bad) in message and "has no folder for any keyword" in message
    assert "yes/ no/ up/ down/ left/ right/ on/ off/ stop/ go/" in message
    assert "fedctl data synth --keywords" in info.value.hint
    with pytest.raises(FedctlError, match="keyword\\(s\\) stop"):  # some keywords present, one missing
        read_speech_commands(root, ("yes", "stop"))
    with pytest.raises(FedctlError, match="is not a folder"):
        read_speech_commands(tmp_path / "missing")


def test_damaged_folders_are_refused_by_name(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "damaged"
    shutil.copytree(root, copy)
    listed = (copy / "validation_list.txt").read_text().splitlines()[0]
    (copy / listed).unlink()
    with pytest.raises(FedctlError, match=re.escape(f"validation_list.txt:1 lists {listed}")):
        read_speech_commands(copy, WORDS)
    shutil.copy(root / listed, copy / listed)
    sf.write(copy / "yes" / "0000beef_nohash_0.wav", np.zeros(8000, dtype=np.float32), 8000)
    with pytest.raises(FedctlError, match="0000beef_nohash_0.wav is 8000 Hz"):
        read_speech_commands(copy, WORDS)
    (copy / "yes" / "0000beef_nohash_0.wav").unlink()
    shutil.rmtree(copy / "_background_noise_")
    with pytest.raises(FedctlError, match="no `_silence_` examples"):
        read_speech_commands(copy, WORDS)


def test_separate_test_archive_replaces_the_testing_list(corpus, tmp_path):
    root, _ = corpus
    test_root = tmp_path / "speech_commands_test_set"
    for folder, n in (("yes", 2), ("no", 1), ("_unknown_", 3), ("_silence_", 2)):
        (test_root / folder).mkdir(parents=True)
        for i in range(n):
            sf.write(test_root / folder / f"abc{i}def_nohash_{i}.wav", np.full(16000, 0.01, np.float32), 16000)
    rows = read_speech_commands(root, WORDS, test_root=test_root)
    test = [r for r in rows if r.split == "test"]
    assert all(r.path.startswith(str(test_root.resolve())) for r in test)  # the train archive's test part is gone
    assert sorted((r.label, r.speaker is None) for r in test) == sorted(
        [("yes", False)] * 2 + [("no", False)] + [("_unknown_", False)] * 3 + [("_silence_", True)] * 2)
    assert sum(r.split == "validation" for r in rows) == 12 and sum(r.split == "train" for r in rows) == 56


# ---------------------------------------------------------------- partitioning


def test_partition_by_speaker_covers_train_only(corpus):
    root, _ = corpus
    rows = read_speech_commands(root, WORDS)
    train = [r for r in rows if r.split == "train"]
    parts = partition_keywords(rows, 3, by="speaker", seed=0)
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in train)  # each train row once
    # 3 train speakers x 8 clips: one speaker per client; 32 silence windows dealt 11 / 11 / 10
    assert [len({r.speaker for r in p if r.speaker}) for p in parts] == [1, 1, 1]
    assert [sum(r.speaker is not None for r in p) for p in parts] == [8, 8, 8]
    assert [sum(r.speaker is None for r in p) for p in parts] == [11, 11, 10]
    assert parts == partition_keywords(rows, 3, by="speaker", seed=0)
    with pytest.raises(FedctlError, match="only 3 speakers"):
        partition_keywords(rows, 4, by="speaker")


def test_partition_iid(corpus):
    root, _ = corpus
    rows = read_speech_commands(root, WORDS)
    parts = partition_keywords(rows, 3, by="iid", seed=1)
    assert [len(p) for p in parts] == [19, 19, 18]  # 56 train rows
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in rows if r.split == "train")
    with pytest.raises(FedctlError, match="speaker or iid"):
        partition_keywords(rows, 3, by="dirichlet")


def test_keyword_utterance_duration():
    u = KeywordUtterance(id="a/b", path="/x.wav", word="a", label="_unknown_", label_index=10, speaker="b",
                         split="train", num_samples=12000)
    assert u.duration == 0.75
