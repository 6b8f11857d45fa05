"""Utterances for ASR: from a partition folder or a corpus, transcripts, features, feasibility, batches.

Sources:
- a partition folder written by `fedctl data partition` (`load_partition`: per-client lists,
  read through `fedctl.data.speech.partition.read_partition`);
- a corpus in any format `fedctl.data.speech.readers.read_corpus` reads (`load_corpus`): a LibriSpeech
  tree such as `fedctl data synth` output, a fairseq TSV, a CSV manifest or a local HF dataset.

Transcripts are normalised after the duration filter, by the one `--text-norm` mode (`text.normalize_transcript`),
so that a transcript outside the wanted range never stops a run; `text_norm=None` keeps them raw (the attack
normalises only the utterances it attacks, `normalise`). `left_out` lists, with reasons, the utterances a
run cannot learn from: no or empty transcript, fewer than `min_chars_per_second` characters per second of
audio, or more CTC labels (with repeats) than output frames.

Durations are whole milliseconds (floor of samples / 16), the unit of the attack's duration buckets; the
`min_dur`/`max_dur` filters keep min_dur <= duration < max_dur, the reference's half-open rule.
Audio is read as int16 (the scale both reference feature pipelines expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedctl.errors import FedctlError
from fedctl.tasks.asr.ctc import min_frames_for
from fedctl.tasks.asr.features import SAMPLE_RATE, ds1_features, ds1_num_frames, ds2_features, ds2_num_frames
from fedctl.tasks.asr.models import output_lengths
from fedctl.tasks.asr.text import TEXT_NORM_FLAG, encode, normalize_transcript

ARCHS = ("ds1", "ds2")
# Fewer characters than this per second of audio is not a transcript of it: normal read speech has 12-16
# (LibriSpeech ~15, letters and spaces), a slow single word with silence around it ~2; "H 3 23" folded to
# "h" over 3 s (0.33/s) scored 103 nats/char against a median of 3.1 and made the validation loss rise.
MIN_CHARS_PER_SECOND = 1.0


@dataclass(frozen=True)
class AsrUtterance:
    """One utterance: `target` are class ids of the normalized `transcript`; `duration_ms` whole milliseconds."""

    id: str
    speaker: str
    path: str
    transcript: str
    target: tuple[int, ...]
    duration_ms: int
    num_samples: int
    split: str = "train"
    raw_transcript: str | None = None  # as the corpus wrote it (None: the corpus has none)


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise FedctlError(f"unknown ASR architecture {arch!r}", f"use one of: {', '.join(ARCHS)}")


def _from_row(row: dict, source: str) -> AsrUtterance:
    """The row with its raw transcript (`transcript` "" and no target until `normalise`)."""
    try:
        utt_id, num_samples, rate = str(row["id"]), int(row["num_samples"]), int(row.get("sample_rate", SAMPLE_RATE))
        raw = row.get("transcript")
        path, speaker, split = str(row["path"]), str(row.get("speaker", "")), str(row.get("split", "train"))
    except (KeyError, TypeError, ValueError) as exc:
        raise FedctlError(f"manifest row in {source} lacks a usable {exc} field: {row}",
                          "re-run `fedctl data partition` to rewrite the manifests") from exc
    if rate != SAMPLE_RATE:
        raise FedctlError(f"{utt_id} ({source}) is {rate} Hz; the ASR features need {SAMPLE_RATE} Hz",
                          "re-run `fedctl data partition` (it records 16 kHz and resamples on reading)")
    return AsrUtterance(id=utt_id, speaker=speaker, path=path, transcript="", target=(),
                        duration_ms=num_samples * 1000 // SAMPLE_RATE, num_samples=num_samples, split=split,
                        raw_transcript=None if raw is None else str(raw))


def normalise(utts: Sequence[AsrUtterance], text_norm: str, source: str = "") -> list[AsrUtterance]:
    """`utts` with `transcript` = the `text_norm` normalisation of their raw transcript and `target` its class
    ids (an utterance without a transcript gets ""). `strict` raises, naming the utterance, on characters
    outside the alphabet."""
    import dataclasses

    out = []
    for u in utts:
        text = "" if u.raw_transcript is None else normalize_transcript(
            u.raw_transcript, f"{u.id} ({source})" if source else u.id, mode=text_norm)
        out.append(dataclasses.replace(u, transcript=text, target=tuple(encode(text))))
    return out


def filter_duration(utts: Sequence[AsrUtterance], min_dur: int = 0, max_dur: int | None = None) -> list[AsrUtterance]:
    """Utterances with min_dur <= duration_ms < max_dur (milliseconds; no upper bound when max_dur is None)."""
    if max_dur is not None and max_dur <= min_dur:
        raise FedctlError(f"max_dur {max_dur} ms must exceed min_dur {min_dur} ms", "e.g. min_dur=1000, max_dur=2000")
    return [u for u in utts if u.duration_ms >= min_dur and (max_dur is None or u.duration_ms < max_dur)]


def load_partition(parts: str | Path, *, min_dur: int = 0, max_dur: int | None = None,
                   text_norm: str | None = "strict") -> dict[str, list[AsrUtterance]]:
    """Each client's utterances (manifest order, train and val; see `AsrUtterance.split`) of a partition
    folder, filtered by duration in milliseconds, then normalised (`text_norm`; None keeps them raw)."""
    from fedctl.data.speech.partition import read_partition

    _summary, manifests = read_partition(parts)
    clients = {}
    for client_id, rows in manifests.items():
        utts = filter_duration([_from_row(r, f"{parts}/{client_id}") for r in rows], min_dur, max_dur)
        clients[client_id] = utts if text_norm is None else normalise(utts, text_norm, f"{parts}/{client_id}")
    return clients


def load_corpus(roots: str | Path | Sequence[str | Path], *, min_dur: int = 0, max_dur: int | None = None,
                text_norm: str | None = "strict", corpus_format: str = "auto") -> list[AsrUtterance]:
    """Every usable utterance (sorted by id) of a corpus (`fedctl.data.speech.readers.read_corpus`: LibriSpeech
    trees, fairseq TSV, CSV manifests, local HF datasets) in the duration bin, then normalised (`text_norm`;
    None keeps them raw); unreadable files are skipped as the reader reports them."""
    from fedctl.data.speech.readers import read_corpus

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    index = read_corpus(roots, corpus_format)
    utts = filter_duration([_from_row(u.to_json(), str(Path(u.path).parent)) for u in index.utterances],
                           min_dur, max_dur)
    return utts if text_norm is None else normalise(utts, text_norm)


def left_out(utts: Sequence[AsrUtterance], arch: str, *, min_chars_per_second: float = MIN_CHARS_PER_SECOND,
             ctc_infeasible: bool = True, text_norm: str = "strict") -> list[tuple[AsrUtterance, str]]:
    """(utterance, reason) for each normalised utterance a run cannot learn from or score: no transcript, an
    empty one, fewer than `min_chars_per_second` characters per second of audio, and (with `ctc_infeasible`)
    more CTC labels and repeats than `arch` has output frames."""
    out = []
    for u in utts:
        seconds = u.num_samples / SAMPLE_RATE
        if u.raw_transcript is None:
            out.append((u, "no transcript in the corpus"))
        elif not u.transcript:
            out.append((u, f"transcript {u.raw_transcript[:60]!r} is empty after {TEXT_NORM_FLAG} {text_norm}"))
        elif len(u.transcript) < min_chars_per_second * seconds:
            out.append((u, f"{len(u.transcript)} character(s) ({u.transcript[:30]!r}) for {seconds:.2f} s of audio: "
                           f"fewer than {min_chars_per_second:g} per second"))
    if ctc_infeasible:
        named = {u.id for u, _ in out}
        out += [(u, f"too short for its transcript under {arch}: {o} output frames, needs {n}")
                for u, o, n in too_short([u for u in utts if u.id not in named], arch)]
    order = {u.id: i for i, u in enumerate(utts)}
    return sorted(out, key=lambda x: order[x[0].id])


def read_audio(path: str) -> np.ndarray:
    """16 kHz mono samples as int16 (the reference feature pipelines' scale), resampled / down-mixed by the
    one speech loader (`fedctl.data.speech.audio.load_audio`)."""
    from fedctl.data.speech.audio import load_audio

    return load_audio(path, dtype="int16")


def num_frames(arch: str, num_samples: int) -> int:
    """Feature frames of `arch` for `num_samples` samples (DS1 MFCC, DS2 STFT)."""
    _check_arch(arch)
    return ds1_num_frames(num_samples) if arch == "ds1" else ds2_num_frames(num_samples)


def too_short(utts: Sequence[AsrUtterance], arch: str) -> list[tuple[AsrUtterance, int, int]]:
    """(utterance, output frames, frames needed) for every utterance `arch` cannot align with its transcript."""
    frames = torch.tensor([num_frames(arch, u.num_samples) for u in utts], dtype=torch.long)
    outs = output_lengths(arch, frames).tolist() if len(utts) else []
    return [(u, o, min_frames_for(u.target)) for u, o in zip(utts, outs) if o < min_frames_for(u.target)]


def check_utterances(utts: Sequence[AsrUtterance], arch: str) -> None:
    """Refuse, naming them, utterances too short for their transcript under `arch`: they have no CTC
    alignment, and are not trained on as infinite losses."""
    bad = too_short(utts, arch)
    if bad:
        names = "; ".join(f"{u.id} ({u.duration_ms} ms, {o} output frames, needs {n})" for u, o, n in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FedctlError(
            f"{len(bad)} utterance(s) too short for their transcript under {arch}: {names}{more}",
            "leave them out with --set task.skip_too_short=true (the default; they are then listed), or set "
            "--set task.min_dur=MS",
        )


class FeatureCache:
    """Features [T, F] (float32) of `arch` per utterance, computed once and kept in memory."""

    def __init__(self, arch: str):
        _check_arch(arch)
        self.arch = arch
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, utt: AsrUtterance) -> torch.Tensor:
        feats = self._cache.get(utt.path)
        if feats is None:
            audio = read_audio(utt.path)
            feats = ds1_features(audio, utt.id) if self.arch == "ds1" else ds2_features(audio, utt.id)
            self._cache[utt.path] = feats
        return feats

    def __len__(self) -> int:
        return len(self._cache)


def collate(features: Sequence[torch.Tensor], targets: Sequence[Sequence[int]]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-padded batch: (features [T, B, F] time-major, lengths [B], targets [B, S] padded with 0,
    target_lengths [B]), the arguments the models and `ctc_loss` take."""
    if not features or len(features) != len(targets):
        raise FedctlError(f"collate got {len(features)} feature matrices and {len(targets)} targets",
                          "pass one target per utterance, at least one utterance")
    lengths = torch.tensor([f.shape[0] for f in features], dtype=torch.long)
    batch = features[0].new_zeros(int(lengths.max()), len(features), features[0].shape[1])
    for b, f in enumerate(features):
        batch[: f.shape[0], b] = f
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    padded = torch.zeros(len(targets), max(int(target_lengths.max()), 1), dtype=torch.long)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
    return batch, lengths, padded, target_lengths


def make_batch(utts: Sequence[AsrUtterance], cache: FeatureCache
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`collate` of `utts`' cached features and targets."""
    return collate([cache(u) for u in utts], [u.target for u in utts])
