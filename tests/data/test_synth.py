import numpy as np
import soundfile as sf

from fedctl.data.speech.librispeech import index_librispeech
from fedctl.data.speech.synth import (
    MAX_SECONDS,
    MIN_SECONDS,
    normalize_phone,
    speaker_voices,
    synth_corpus,
)
from fedctl.data.textgen import VOCABULARY

from .conftest import SPEAKERS, UTTERANCES


def test_librispeech_layout_and_audio_format(tiny_corpus):
    root, result = tiny_corpus
    assert result.utterances == SPEAKERS * UTTERANCES
    flacs = sorted(root.glob("*/*/*.flac"))
    assert len(flacs) == SPEAKERS * UTTERANCES
    for flac in flacs:
        speaker, chapter = flac.parent.parent.name, flac.parent.name
        assert flac.name.startswith(f"{speaker}-{chapter}-")
        info = sf.info(str(flac))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert MIN_SECONDS <= info.frames / 16000 <= MAX_SECONDS
    trans = sorted(root.glob("*/*/*.trans.txt"))
    lines = [line for t in trans for line in t.read_text().splitlines()]
    assert len(lines) == SPEAKERS * UTTERANCES
    assert all(line.split(" ", 1)[1].replace(" ", "").isupper() for line in lines)
    speakers_txt = [row for row in (root / "SPEAKERS.TXT").read_text().splitlines() if not row.startswith(";")]
    assert len(speakers_txt) == SPEAKERS
    assert {row.split("|")[1].strip() for row in speakers_txt} <= {"M", "F"}


def test_transcripts_use_the_generator_vocabulary(tiny_corpus):
    root, _ = tiny_corpus
    words = {w.lower() for t in root.glob("*/*/*.trans.txt") for line in t.read_text().splitlines()
             for w in line.split()[1:]}
    base = set(VOCABULARY)
    # inflected forms (plurals, past tenses) come on top of the base vocabulary
    assert len([w for w in words if w in base]) >= 0.6 * len(words)


def test_phone_alignments_tile_each_utterance(tiny_corpus):
    root, _ = tiny_corpus
    for flac in sorted(root.glob("*/*/*.flac")):
        rows = [line.split() for line in flac.with_suffix(".phn").read_text().splitlines()]
        starts, ends = [int(r[0]) for r in rows], [int(r[1]) for r in rows]
        assert starts[0] == 0 and ends[-1] == sf.info(str(flac)).frames
        assert all(e == s for e, s in zip(ends[:-1], starts[1:]))  # contiguous, no gaps or overlaps
        assert all(e > s for s, e in zip(starts, ends))
        phones = [r[2] for r in rows]
        assert len(set(phones) - {"sil"}) >= 2


def test_voices_are_distinct_and_stable():
    voices = speaker_voices(24, seed=0)
    assert len({(v.name, v.pitch, v.rate) for v in voices}) == 24
    assert len({v.name for v in voices}) == 24  # language+variant pairs are used once before repeating
    assert voices == speaker_voices(24, seed=0)
    assert voices != speaker_voices(24, seed=1)


def test_deterministic_for_a_seed(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    again = synth_corpus(tmp_path / "again", speakers=SPEAKERS, utterances=UTTERANCES, seed=0, workers=1)
    assert again.utterances == SPEAKERS * UTTERANCES
    for flac in sorted((tmp_path / "again").glob("*/*/*.flac")):
        twin = root / flac.relative_to(tmp_path / "again")
        a, _ = sf.read(str(flac), dtype="int16")
        b, _ = sf.read(str(twin), dtype="int16")
        assert np.array_equal(a, b)
        assert flac.with_suffix(".phn").read_text() == twin.with_suffix(".phn").read_text()


def test_synth_output_parses_back(tiny_corpus):
    root, _ = tiny_corpus
    index = index_librispeech([root])
    assert index.bad_files == []
    assert len(index.utterances) == SPEAKERS * UTTERANCES
    assert len({u.speaker for u in index.utterances}) == SPEAKERS
    assert all(u.phones and u.sample_rate == 16000 for u in index.utterances)
    u = index.utterances[0]
    assert u.duration == u.num_samples / 16000


def test_normalize_phone():
    assert normalize_phone("'aI") == "aI"
    assert normalize_phone(",E") == "E"
    assert normalize_phone("_:") == "sil"
    assert normalize_phone("_") == "sil"
