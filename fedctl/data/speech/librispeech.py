"""Index LibriSpeech-layout trees: one record per utterance, durations from audio headers only.

A root may be a subset (`train-clean-100/`), the `LibriSpeech/` folder holding several subsets, or any
folder below which `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` files sit next to their audio
(`.flac` or `.wav`). Problems are collected per file instead of aborting the scan, so that one bad file
in 28,000 does not cost a re-run: the caller lists them and decides (see `--strict`).

Hand-written rather than `lhotse.recipes.prepare_librispeech`: that recipe accepts only the official
subset folder names and FLAC, and its `lhotse.audio.info` falls back to torchaudio (unusable here) on
files libsndfile rejects. `soundfile.info` reads the FLAC STREAMINFO / WAV header only, never the audio.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from fedctl.data.speech.audio import MODEL_RATE, AudioInfo, _open, parse_hf_locator, probe_audio
from fedctl.errors import FedctlError

SAMPLE_RATE = MODEL_RATE  # every utterance is read at 16 kHz mono (`fedctl.data.speech.audio.load_audio`)
MIN_SAMPLES = 400  # one 25 ms window at 16 kHz: the shortest input HuBERT's conv stack turns into a frame
AUDIO_EXTENSIONS = (".flac", ".wav")


@dataclass
class Utterance:
    """One row of the utterance table every speech reader produces (`fedctl.data.speech.readers`).

    `num_samples` are samples at `sample_rate` = 16 kHz mono, what `load_audio` returns for `path`
    (a file, or a dataset-row locator); `duration` = num_samples / 16000 seconds. `source_rate` and
    `channels` are the stored audio's, before resampling / down-mixing. `transcript` is the raw text
    (None when the corpus has none); it is normalised by the consumer (`--text-norm`)."""

    id: str
    path: str
    duration: float
    num_samples: int
    sample_rate: int
    speaker: str
    chapter: str
    transcript: str | None
    split: str = "train"
    phones: str | None = None  # TIMIT-style .phn alignment (sample offsets), when the tree has one
    source_rate: int = MODEL_RATE  # Hz of the stored audio
    channels: int = 1  # of the stored audio

    def to_json(self) -> dict:
        row = asdict(self)
        if row["phones"] is None:
            del row["phones"]
        return row


@dataclass
class BadFile:
    path: str
    reason: str


@dataclass
class Index:
    utterances: list[Utterance] = field(default_factory=list)
    bad_files: list[BadFile] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)  # per root: librispeech, tsv, csv or hf


def _read_transcripts(trans: Path, bad: list[BadFile]) -> dict[str, str]:
    lines: dict[str, str] = {}
    try:
        text = trans.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        bad.append(BadFile(str(trans), f"unreadable transcript file ({type(exc).__name__})"))
        return lines
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        utt_id, _, words = line.strip().partition(" ")
        if not words.strip():
            bad.append(BadFile(f"{trans}:{number}", f"transcript line for {utt_id} has no words"))
            continue
        lines[utt_id] = words.strip()
    return lines


def probe(path: str | Path) -> AudioInfo | str:
    """Header facts of a file or dataset row (`AudioInfo`), or the reason it is unusable: unreadable,
    empty, truncated, or shorter than MIN_SAMPLES once at 16 kHz. Any rate and channel count is fine:
    `load_audio` resamples and down-mixes."""
    path = str(path)
    is_file = parse_hf_locator(path) is None
    try:
        if is_file and os.stat(path).st_size == 0:
            return "empty file (0 bytes)"
        info = probe_audio(path)
    except FedctlError as exc:
        return exc.message
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return f"unreadable audio ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})"
    if info.frames <= 0:
        return "zero-length audio (0 samples)"
    damaged = _truncation(path, info.frames, is_file)
    if damaged:
        return damaged
    if info.num_samples < MIN_SAMPLES:
        return f"only {info.num_samples} samples at 16 kHz (< {MIN_SAMPLES}, one 25 ms frame)"
    return info


PROBE_FRAMES = 4096  # decoded at each end of a file: ~0.5 ms per file, where decoding it whole costs ~100× more


def _truncation(path: str, frames: int, is_file: bool = True) -> str | None:
    """Why a file whose header promises `frames` samples cannot deliver them, or None.

    A header alone does not show truncation (a FLAC cut to a third still reports its full length), and
    decoding every file would make indexing a 1000-hour corpus slow; so decode the first and the last
    PROBE_FRAMES samples (a seek to the end fails on a cut FLAC), and for WAV compare the data chunk's
    declared size with the bytes on disk (libsndfile silently shortens a cut WAV)."""
    if is_file and path.lower().endswith(".wav"):
        missing = _wav_missing_bytes(Path(path))
        if missing:
            return f"truncated audio (the WAV data chunk lacks {missing} of its declared bytes)"
    try:
        with sf.SoundFile(_open(path)) as f:
            k = min(frames, PROBE_FRAMES)
            if len(f.read(k, dtype="float32")) != k:
                return "truncated audio (cannot decode its first samples)"
            f.seek(frames - k)
            if len(f.read(k, dtype="float32")) != k:
                return f"truncated audio (decodes fewer than the {frames} samples its header declares)"
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        return f"truncated or corrupt audio (header declares {frames} samples, decoding the end fails: {first})"
    return None


def _wav_missing_bytes(path: Path) -> int:
    """Bytes the RIFF 'data' chunk declares beyond the end of the file (0 when whole or not RIFF)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"data":
            if size == 0xFFFFFFFF:  # streamed WAV: length unknown, nothing to compare
                return 0
            return max(0, pos + 8 + size - path.stat().st_size)
        pos += 8 + size + (size & 1)
    return 0


def _chapter_dirs(root: Path) -> list[Path]:
    """Every folder under `root` holding a `*.trans.txt`, in sorted (deterministic) order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(f.endswith(".trans.txt") for f in filenames):
            found.append(Path(dirpath))
    return found


def index_librispeech(roots: list[str | Path]) -> Index:
    """Scan LibriSpeech trees; return utterances (sorted by id) and every problem found.

    A file is bad when it is unreadable, empty, truncated, shorter than 400 samples at 16 kHz, has no
    transcript line, or is a transcript line whose audio is missing. Any sample rate and channel count is
    indexed: `num_samples` counts the 16 kHz mono samples `load_audio` returns (resampled with soxr), so
    HuBERT labels align with the audio the model reads. Utterance ids that occur twice across roots are
    bad after the first.
    """
    if not roots:
        raise FedctlError("no --root given", "pass --root path/to/LibriSpeech/train-clean-100 (repeatable)")
    index = Index(roots=[str(Path(r)) for r in roots], formats=["librispeech"] * len(roots))
    seen: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FedctlError(f"--root {root} is not a directory", "point --root at a LibriSpeech subset folder")
        chapter_dirs = _chapter_dirs(root)
        if not chapter_dirs:
            raise FedctlError(
                f"no LibriSpeech transcripts (*.trans.txt) under {root}",
                "expected <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt; "
                "make a demo tree with `fedctl data synth --out DIR`",
            )
        for chapter_dir in chapter_dirs:
            _index_chapter(chapter_dir, index, seen)
    index.utterances.sort(key=lambda u: u.id)
    return index


def _index_chapter(chapter_dir: Path, index: Index, seen: set[str]) -> None:
    bad = index.bad_files
    names = sorted(os.listdir(chapter_dir))
    name_set = set(names)
    base = os.path.abspath(chapter_dir)
    transcripts: dict[str, str] = {}
    for name in names:
        if name.endswith(".trans.txt"):
            transcripts.update(_read_transcripts(chapter_dir / name, bad))
    audio = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() in AUDIO_EXTENSIONS and stem not in audio:
            audio[stem] = chapter_dir / name
    for utt_id in sorted(set(transcripts) - set(audio)):
        bad.append(BadFile(str(chapter_dir / f"{utt_id}.flac"), "transcript line but no audio file"))
    for utt_id, path in sorted(audio.items()):
        if utt_id not in transcripts:
            bad.append(BadFile(str(path), f"no transcript line for {utt_id} in the chapter's .trans.txt"))
            continue
        info = probe(path)
        if isinstance(info, str):
            bad.append(BadFile(str(path), info))
            continue
        if utt_id in seen:
            bad.append(BadFile(str(path), f"duplicate utterance id {utt_id} (already indexed from another root)"))
            continue
        seen.add(utt_id)
        parts = utt_id.split("-")
        speaker, chapter = (parts[0], parts[1]) if len(parts) >= 3 else (chapter_dir.parent.name, chapter_dir.name)
        phones = f"{utt_id}.phn"
        index.utterances.append(
            Utterance(
                id=utt_id,
                path=os.path.join(base, path.name),
                duration=info.num_samples / SAMPLE_RATE,
                num_samples=info.num_samples,
                sample_rate=SAMPLE_RATE,
                speaker=speaker,
                chapter=chapter,
                transcript=transcripts[utt_id],
                phones=os.path.join(base, phones) if phones in name_set else None,
                source_rate=info.rate,
                channels=info.channels,
            )
        )
