"""Tiny speech corpora for reader tests, written with soundfile + numpy in every input format fedctl reads.

`make_utterances` draws voiced-like signals (a few harmonics of a speaker-specific pitch, with noise and
an amplitude envelope), so that MFCC k-means has structure to find; the same utterances can then be laid
out as a LibriSpeech tree, a CSV manifest, a fairseq TSV (+ .wrd or .ltr) and a local HF dataset.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass
class Utt:
    id: str
    speaker: str
    chapter: str
    transcript: str
    audio: np.ndarray  # int16 at `rate`, [n] or [n, channels]
    rate: int = 16000


def voiced(rng: np.random.Generator, seconds: float, pitch: float, rate: int = 16000) -> np.ndarray:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = pitch * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t) ** 2) + 0.05 * rng.normal(size=n)
    return (0.25 * x / np.abs(x).max() * 32767).astype(np.int16)


def make_utterances(speakers: int = 4, per_speaker: int = 3, seed: int = 0,
                    transcripts: list[str] | None = None, seconds: tuple[float, float] = (0.8, 1.6)) -> list[Utt]:
    rng = np.random.default_rng(seed)
    utts = []
    for s in range(speakers):
        spk = str(100 + s)
        for i in range(per_speaker):
            k = s * per_speaker + i
            text = transcripts[k] if transcripts else f"HELLO NUMBER {'ABCDEFGHIJKL'[k % 12]} SPEAKER"
            utts.append(Utt(f"{spk}-7-{i:04d}", spk, "7", text,
                            voiced(rng, rng.uniform(*seconds), 110 + 40 * s)))
    return utts


def write_librispeech(utts: list[Utt], root: Path, fmt: str = "FLAC") -> Path:
    for u in utts:
        chapter = root / u.speaker / u.chapter
        chapter.mkdir(parents=True, exist_ok=True)
        sf.write(chapter / f"{u.id}.{fmt.lower()}", u.audio, u.rate, format=fmt, subtype="PCM_16")
        with open(chapter / f"{u.speaker}-{u.chapter}.trans.txt", "a", encoding="utf-8") as f:
            f.write(f"{u.id} {u.transcript}\n")
    return root


def _relpath(u: Utt) -> str:
    return f"{u.speaker}/{u.chapter}/{u.id}.flac"


def write_csv(utts: list[Utt], tree: Path, manifest: Path, *, columns=("path", "speaker", "transcript"),
              delimiter: str = ",") -> Path:
    """A manifest with named columns over the tree's files (paths relative to the manifest's folder)."""
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(columns)
        for u in utts:
            path = Path(tree.relative_to(manifest.parent) if tree.is_relative_to(manifest.parent) else tree) / _relpath(u)
            values = {"path": str(path), "speaker": u.speaker, "transcript": u.transcript, "id": u.id,
                      "duration": f"{len(u.audio) / u.rate:.4f}"}
            w.writerow([values.get(c, "") for c in columns])
    return manifest


def write_fairseq(utts: list[Utt], tree: Path, manifest: Path, side: str = "wrd") -> Path:
    """fairseq wav2vec manifest: root line, `relpath<TAB>frames`, and `.wrd` or `.ltr` beside it."""
    lines = [str(tree.resolve())] + [f"{_relpath(u)}\t{len(u.audio)}" for u in utts]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if side == "wrd":
        manifest.with_suffix(".wrd").write_text("".join(u.transcript + "\n" for u in utts), encoding="utf-8")
    elif side == "ltr":
        manifest.with_suffix(".ltr").write_text(
            "".join(" ".join(u.transcript.replace(" ", "|")) + " |\n" for u in utts), encoding="utf-8")
    return manifest


def write_hf(utts: list[Utt], out: Path, *, parquet: bool = False) -> Path:
    """A `datasets` audio dataset holding the FLAC bytes: `save_to_disk` folder, or one Parquet file."""
    from datasets import Audio, Dataset

    def flac(u: Utt) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, u.audio, u.rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()

    ds = Dataset.from_dict({
        "audio": [{"bytes": flac(u), "path": f"{u.id}.flac"} for u in utts],
        "text": [u.transcript for u in utts],
        "speaker_id": [int(u.speaker) for u in utts],
        "id": [u.id for u in utts],
    }).cast_column("audio", Audio())
    if parquet:
        ds.to_parquet(str(out))
    else:
        ds.save_to_disk(str(out))
    return out
