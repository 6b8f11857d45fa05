"""Audio and k-means labels for HuBERT pretraining: load a partition + its labels, align them, batch them.

A client's utterances come from its manifest in `--parts` (path, num_samples, split); its labels from
`--labels/<client>/{train,val}.{tsv,km}` (fairseq layout, written by `fedctl data kmeans`), matched by path.
Labels at 100 Hz are subsampled to HuBERT's 50 Hz frames (fairseq's feat2tar ratio). A label sequence may
differ from the audio's frame count by `label_tolerance` frames (the longer side is trimmed); a bigger
difference is an error naming the utterance.

Batches follow fairseq's HuBERT dataset with pad_audio=False: utterances of similar length are grouped so
that (utterances × longest) stays under `max_batch_seconds`, and each batch is cropped to its shortest
utterance at a random frame-aligned offset (labels cropped with it), so no frame is padding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedctl.data.speech.audio import load_audio
from fedctl.data.speech.demo import demo_partition
from fedctl.data.speech.features import HUBERT_HOP, SAMPLE_RATE, WINDOW, hubert_num_frames
from fedctl.errors import FedctlError

AUDIO_CACHE_SECONDS = 3 * 3600  # below this much audio everything is kept in memory after the first read


@dataclass
class Utterance:
    path: str
    frames: int  # usable 20 ms frames = len(labels)
    labels: np.ndarray  # int64 cluster ids, one per frame


@dataclass
class SpeechData:
    train: dict[str, list[Utterance]]  # per client
    val: dict[str, list[Utterance]]  # per client (held out)
    num_classes: int
    source: str
    scope: str  # "global": one cluster set shared by all clients; "client": each client's own

    def all_val(self) -> list[Utterance]:
        return [u for us in self.val.values() for u in us]


# ----------------------------------------------------------------------------------------- demo


def demo_data(root: Path, num_clients: int, speakers: int, utterances: int, clusters: int,
              log: Callable[[str], None]) -> tuple[Path, Path]:
    """The speech demo partition (see fedctl.data.speech.demo) and its global MFCC k-means labels (made once)."""
    from fedctl.data.speech.kmeans import KmeansConfig, learn_kmeans_labels

    parts = demo_partition(root, num_clients, speakers, utterances, log)
    labels = parts.with_name(f"{parts.name}-km{clusters}")
    if not (labels / "summary.json").is_file():
        log(f"demo data: fitting {clusters}-cluster MFCC k-means (global, 50 Hz) into {labels}")
        learn_kmeans_labels(parts, labels, KmeansConfig(clusters=clusters, scope="global", label_rate=50, seed=0))
    return parts, labels


# -------------------------------------------------------------------------------------- loading


def _read_tsv_km(folder: Path, split: str) -> dict[str, list[int]]:
    tsv, km = folder / f"{split}.tsv", folder / f"{split}.km"
    if not tsv.is_file() or not km.is_file():
        raise FedctlError(f"{tsv} or {km} is missing", "--labels must be a folder written by `fedctl data kmeans`")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    root, rows = lines[0].strip(), [ln.split("\t")[0] for ln in lines[1:] if ln.strip()]
    labels = km.read_text(encoding="utf-8").splitlines()
    if len(labels) != len(rows):
        raise FedctlError(f"{km} has {len(labels)} lines but {tsv} lists {len(rows)} utterances",
                          "re-run `fedctl data kmeans` so labels and manifest match")
    return {os.path.normpath(os.path.join(root, r)): [int(t) for t in lab.split()] for r, lab in zip(rows, labels)}


def _dict_size(path: Path) -> int:
    if not path.is_file():
        raise FedctlError(f"{path} is missing", "--labels must be a folder written by `fedctl data kmeans`")
    return sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def align(path: str, num_samples: int, labels: list[int], label_rate: int, tolerance: int) -> Utterance:
    """Match labels to HuBERT's frames for `num_samples` samples; trim a small mismatch, refuse a large one."""
    lab = np.asarray(labels, dtype=np.int64)[:: max(1, label_rate // 50)]
    frames = hubert_num_frames(num_samples)
    if abs(len(lab) - frames) > tolerance:
        raise FedctlError(
            f"labels of {path} have {len(lab)} frames at 50 Hz but its {num_samples} samples give {frames} "
            f"(tolerance {tolerance})",
            "the labels were made for other audio: re-run `fedctl data kmeans --parts PARTS` for this partition "
            "(or raise task.label_tolerance)",
        )
    n = min(len(lab), frames)
    return Utterance(path=path, frames=n, labels=lab[:n])


def load_speech(parts: str | Path, labels: str | Path | None, num_clients: int, tolerance: int,
                clusters: int | None) -> SpeechData:
    """The partition's clients with their aligned labels; checks client count and cluster count.
    Without `labels` (audio-only distillation) every frame gets label 0 and num_classes is 0."""
    from fedctl.data.speech.partition import read_partition

    parts = Path(parts)
    _summary, manifests = read_partition(parts)
    if len(manifests) != num_clients:
        raise FedctlError(f"partition {parts} has {len(manifests)} clients but the run has {num_clients}",
                          f"use --clients {len(manifests)} (or re-partition with --clients {num_clients})")
    if labels is None:
        train, val = {}, {}
        for client_id, rows in manifests.items():
            utts = [(r, hubert_num_frames(int(r["num_samples"]))) for r in rows]
            train[client_id] = [Utterance(r["path"], f, np.zeros(f, np.int64)) for r, f in utts if f and r.get("split") != "val"]
            val[client_id] = [Utterance(r["path"], f, np.zeros(f, np.int64)) for r, f in utts if f and r.get("split") == "val"]
        return SpeechData(train, val, 0, f"{parts} (audio only)", "none")
    labels = Path(labels)
    summary_path = labels / "summary.json"
    if not summary_path.is_file():
        raise FedctlError(f"{summary_path} not found: --labels must be a folder written by `fedctl data kmeans`",
                          f"run `fedctl data kmeans --parts {parts} --out LABELS` first")
    lsum = json.loads(summary_path.read_text(encoding="utf-8"))
    settings = lsum.get("settings", {})
    label_rate, scope = int(settings.get("label_rate", 50)), str(settings.get("scope", "global"))
    train: dict[str, list[Utterance]] = {}
    val: dict[str, list[Utterance]] = {}
    sizes = []
    for client_id, rows in manifests.items():
        folder = labels / client_id
        if not folder.is_dir():
            raise FedctlError(f"labels {labels} have no folder for {client_id} of partition {parts}",
                              f"re-run `fedctl data kmeans --parts {parts}` for this partition")
        sizes.append(_dict_size(folder / "dict.km.txt"))
        by_path = {**_read_tsv_km(folder, "train"), **_read_tsv_km(folder, "val")}
        train[client_id], val[client_id] = [], []
        for row in rows:
            key = os.path.normpath(row["path"])
            if key not in by_path:
                raise FedctlError(f"{row['path']} ({client_id}) has no labels in {labels}",
                                  f"re-run `fedctl data kmeans --parts {parts}` for this partition")
            utt = align(row["path"], int(row["num_samples"]), by_path[key], label_rate, tolerance)
            if utt.frames < 1:
                continue
            (val if row.get("split", "train") == "val" else train)[client_id].append(utt)
        if not train[client_id]:
            raise FedctlError(f"{client_id} has no training utterances", "give every client data (re-partition)")
    num_classes = max(sizes)
    if clusters is not None and clusters != num_classes:
        raise FedctlError(f"labels {labels} have {num_classes} clusters but task.clusters = {clusters}",
                          f"set --set task.clusters={num_classes} (or null), or use labels with {clusters} clusters")
    top = max(int(u.labels.max()) for us in (*train.values(), *val.values()) for u in us if u.frames)
    if top >= num_classes:
        raise FedctlError(f"labels {labels} use cluster id {top} but dict.km.txt lists {num_classes} clusters",
                          "re-run `fedctl data kmeans`; the labels folder is inconsistent")
    return SpeechData(train, val, num_classes, f"{parts} + {labels} ({scope} k-means, {label_rate} Hz)", scope)


# -------------------------------------------------------------------------------------- audio


class AudioStore:
    """Reads audio as 16 kHz mono (`load_audio`); keeps it in memory when the corpus is small."""

    def __init__(self, total_seconds: float):
        self.cache: dict[str, np.ndarray] | None = {} if total_seconds <= AUDIO_CACHE_SECONDS else None

    def read(self, path: str) -> np.ndarray:
        if self.cache is not None and path in self.cache:
            return self.cache[path]
        audio = load_audio(path)  # 16 kHz mono: resampled / down-mixed once, in the one loader
        if self.cache is not None:
            self.cache[path] = audio
        return audio


# -------------------------------------------------------------------------------------- batches


def length_batches(utts: list[Utterance], max_batch_seconds: float, max_frames: int) -> list[list[int]]:
    """Indices grouped by length so that count × longest (cropped to `max_frames`) ≤ max_batch_seconds."""
    budget = max(1, int(max_batch_seconds * SAMPLE_RATE / HUBERT_HOP))  # in frames
    order = sorted(range(len(utts)), key=lambda i: (-utts[i].frames, i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        f = min(utts[i].frames, max_frames)
        if current and (len(current) + 1) * max(longest, f) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, f)
    if current:
        batches.append(current)
    return batches


def collate(store: AudioStore, utts: list[Utterance], max_frames: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [B, samples], labels [B, frames]) cropped to the shortest utterance (and to max_frames) at a
    frame-aligned offset (random with `gen`, 0 without)."""
    frames = min(min(u.frames for u in utts), max_frames)
    n = (frames - 1) * HUBERT_HOP + WINDOW
    audio = torch.empty(len(utts), n)
    labels = torch.empty(len(utts), frames, dtype=torch.long)
    for row, u in enumerate(utts):
        start = int(torch.randint(u.frames - frames + 1, (1,), generator=gen)) if gen is not None else 0
        wav = store.read(u.path)[start * HUBERT_HOP : start * HUBERT_HOP + n]
        audio[row] = torch.from_numpy(np.ascontiguousarray(wav))
        labels[row] = torch.from_numpy(u.labels[start : start + frames])
    return audio, labels
