"""Phone alignments of real corpora, for the PNMI / purity of k-means targets.

Two sources, matched to manifest rows by utterance id:
- a folder of Praat TextGrids, as the Montreal Forced Aligner writes them (`<out>/<speaker>/<utterance>.TextGrid`,
  tiers "words" and "phones"; silence is an empty interval). Read with `praatio` (a maintained TextGrid library;
  it handles the long and short text formats, which a hand-written parser would have to duplicate).
- a text file of frame labels, one utterance per line: `<utterance-id> <label> <label> ...` at a fixed rate
  (`--alignment-rate`, 100 Hz for Kaldi's `ali-to-phones --per-frame` and MFA's 10 ms frames), the keyed form of
  the per-frame phone files fairseq's `measure_teacher_quality.py` reads.

Each label frame takes the phone under its centre (as for the synthetic corpus' .phn files); frames outside every
interval, and empty labels, are silence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedctl.data.speech.features import SAMPLE_RATE, label_frame_centers
from fedctl.errors import FedctlError

SILENCE = "sil"


class Alignments:
    """Utterance id -> per-label-frame phones, from a TextGrid folder or a frame-label file."""

    def __init__(self, path: str | Path, tier: str = "phones", rate: int = 100):
        self.path, self.tier, self.rate = Path(path), tier, rate
        if self.path.is_dir():
            self._textgrids = {p.stem: p for p in sorted(self.path.rglob("*.TextGrid"))}
            self._frames: dict[str, list[str]] = {}
            if not self._textgrids:
                raise FedctlError(f"--alignments {self.path} holds no .TextGrid files",
                                  "pass the output folder of `mfa align`, or a frame-label file")
        elif self.path.is_file():
            self._textgrids = {}
            self._frames = _read_frame_labels(self.path)
            if rate < 1:
                raise FedctlError(f"--alignment-rate must be >= 1 Hz, got {rate}", "100 for 10 ms frames")
        else:
            raise FedctlError(f"--alignments {self.path} does not exist",
                              "pass a folder of TextGrids (MFA output) or a frame-label file")

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._textgrids or utt_id in self._frames

    def frame_phones(self, utt_id: str, num_frames: int, label_rate: int) -> np.ndarray | None:
        """Phones at the centres of `num_frames` label frames, or None when the utterance has no alignment."""
        centres = label_frame_centers(num_frames, label_rate) / SAMPLE_RATE  # seconds
        if utt_id in self._textgrids:
            starts, ends, labels = read_textgrid_tier(self._textgrids[utt_id], self.tier)
            idx = np.searchsorted(starts, centres, side="right") - 1
            ok = (idx >= 0) & (centres < ends[np.clip(idx, 0, None)]) if len(starts) else np.zeros(num_frames, bool)
            phones = np.full(num_frames, SILENCE, dtype=object)
            if len(starts):
                phones[ok] = labels[idx[ok]]
            return phones
        if utt_id in self._frames:
            labels = self._frames[utt_id]
            idx = np.minimum((centres * self.rate).astype(np.int64), len(labels) - 1)
            return np.asarray(labels, dtype=object)[idx]
        return None


def read_textgrid_tier(path: str | Path, tier: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, labels) of an interval tier, in seconds; empty labels become silence."""
    from praatio import textgrid

    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=True)
    except Exception as exc:  # praatio raises its own and builtin errors on malformed files
        raise FedctlError(f"alignment {path} is not a readable TextGrid ({type(exc).__name__}: {str(exc)[:100]})",
                          "re-export it from Praat or re-run the aligner") from None
    if tier not in grid.tierNames:
        raise FedctlError(f"alignment {path} has no tier {tier!r} (its tiers: {', '.join(grid.tierNames) or 'none'})",
                          f"pass --tier with one of: {', '.join(grid.tierNames)}")
    entries = grid.getTier(tier).entries
    if entries and len(entries[0]) != 3:
        raise FedctlError(f"alignment {path}: tier {tier!r} is a point tier, not intervals",
                          f"pass --tier naming an interval tier (tiers: {', '.join(grid.tierNames)})")
    starts = np.array([e[0] for e in entries], dtype=float)
    ends = np.array([e[1] for e in entries], dtype=float)
    labels = np.array([e[2].strip() or SILENCE for e in entries], dtype=object)
    return starts, ends, labels


def _read_frame_labels(path: Path) -> dict[str, list[str]]:
    frames: dict[str, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FedctlError(f"--alignments {path} is unreadable ({type(exc).__name__})",
                          "pass a UTF-8 text file of '<utterance-id> <label> ...' lines") from None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise FedctlError(f"--alignments {path} line {number}: utterance {parts[0]!r} has no frame labels",
                              "each line is '<utterance-id> <label> <label> ...'")
        frames[parts[0]] = parts[1:]
    if not frames:
        raise FedctlError(f"--alignments {path} holds no frame labels", "each line is '<utterance-id> <label> ...'")
    return frames
