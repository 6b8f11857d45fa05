"""Audio batches shared by the HuBERT-family workloads (`hubert`, `distill`): the synth demo or a partition with
its k-means labels, length-bucketed batches of every client, deterministic held-out batches, and the inputs
FedEntropy/FedFisher measure on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedctl.core.task import TaskContext
from fedctl.data.speech.features import SAMPLE_RATE
from fedctl.errors import FedctlError
from fedctl.tasks.hubert import data as hdata
from fedctl.tasks.hubert.model import num_frames, span_mask

EVAL_MASK_SEED = 4242  # validation masks are fixed so that rounds compare
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: fp32, no autocast)."""
    if precision not in PRECISIONS:
        raise FedctlError(f"task.precision = {precision!r} is not valid", f"use one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise FedctlError("task.precision = fp16 needs CUDA", "use fp32 or bf16 on CPU (or precision: auto)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_demo_or_load(cfg: Any, ctx: TaskContext, clusters: int | None) -> hdata.SpeechData:
    """The partition + labels named by cfg.parts / cfg.labels, or the synth demo made under the run directory."""
    parts, labels = cfg.parts, cfg.labels
    if (parts is None) != (labels is None):
        missing = "--labels" if labels is None else "--parts"
        raise FedctlError(f"{missing} is missing: real data needs both --parts and --labels",
                          "give both (from `fedctl data partition librispeech` and `fedctl data kmeans`), or neither for the demo")
    if parts is None:
        import tempfile

        root = ctx.run_dir.demo_data_dir if ctx.run_dir is not None else Path(tempfile.mkdtemp(prefix="fedctl-hubert-"))
        ctx.log(f"no --parts/--labels: using the synth demo corpus ({cfg.demo_speakers} eSpeak speakers x "
                f"{cfg.demo_utterances} utterances, {cfg.demo_clusters} global MFCC clusters) under {root}")
        parts, labels = hdata.demo_data(root, ctx.num_clients, cfg.demo_speakers, cfg.demo_utterances,
                                        cfg.demo_clusters, ctx.log)
    data = hdata.load_speech(parts, labels, ctx.num_clients, cfg.label_tolerance, clusters)
    if data.scope == "client" and ctx.num_clients > 1:
        ctx.log("note: these labels were fitted per client (scope client): cluster ids are not shared across clients")
    return data


class SpeechBatches:
    """Length-bucketed batches of every client (train) and of the validation pool, with their audio."""

    def __init__(self, data: hdata.SpeechData, max_batch_seconds: float, max_sample_seconds: float):
        if max_batch_seconds <= 0 or max_sample_seconds <= 0:
            raise FedctlError("task.max_batch_seconds and task.max_sample_seconds must be > 0", "e.g. 87.5 and 15.625")
        self.data = data
        self.max_frames = max(1, num_frames(int(max_sample_seconds * SAMPLE_RATE)))
        total = sum(u.frames for us in (*data.train.values(), *data.val.values()) for u in us) * 0.02
        self.store = hdata.AudioStore(total)
        self.max_batch_seconds = max_batch_seconds
        self.train = {c: hdata.length_batches(us, max_batch_seconds, self.max_frames) for c, us in data.train.items()}
        self._eval: dict[str | None, tuple[list, list]] = {}

    def train_batch(self, client_id: str, index: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        utts = self.data.train[client_id]
        return hdata.collate(self.store, [utts[i] for i in self.train[client_id][index]], self.max_frames, gen)

    def eval_utterances(self, client_id: str | None) -> tuple[list, list]:
        """(utterances, batches) to evaluate on: the pooled validation set, or a client's (its train set if it has none)."""
        if client_id not in self._eval:
            if client_id is None:
                utts = self.data.all_val() or [u for us in self.data.train.values() for u in us]
            else:
                utts = self.data.val[client_id] or self.data.train[client_id]
            self._eval[client_id] = (utts, hdata.length_batches(utts, self.max_batch_seconds, self.max_frames))
        return self._eval[client_id]

    def masked_batch(self, client_id: str, index: int, gen: torch.Generator, mcfg: Any
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio, labels, span mask) of a client's length batch `index`: `gen` picks the crops, then the mask
        seed. `mcfg` carries mask_prob / mask_length / mask_min_spans."""
        audio, labels = self.train_batch(client_id, index, gen)
        mask_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        return audio, labels, span_mask(labels.shape[0], labels.shape[1], mcfg.mask_prob, mcfg.mask_length,
                                        mcfg.mask_min_spans, mask_seed)

    def eval_batches(self, client_id: str | None, cap: int, mcfg: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Deterministic held-out (audio, labels, mask) batches: crops at offset 0, fixed mask seeds."""
        utts, batches = self.eval_utterances(client_id)
        for b, idx in enumerate(batches[:cap] if cap > 0 else batches):
            audio, labels = hdata.collate(self.store, [utts[i] for i in idx], self.max_frames, None)
            yield audio, labels, span_mask(labels.shape[0], labels.shape[1], mcfg.mask_prob, mcfg.mask_length,
                                           mcfg.mask_min_spans, EVAL_MASK_SEED + b)

    def stat_examples(self, client_id: str, max_examples: int, client_index: int, mcfg: Any,
                      device: torch.device) -> dict[str, torch.Tensor]:
        """The client's first `max_examples` held-out utterances cropped to a common length (≤ stat_seconds),
        with a fixed span mask per client: inputs for FedEntropy/FedFisher."""
        utts = (self.data.val[client_id] or self.data.train[client_id])[:max_examples]
        max_frames = min(self.max_frames, max(1, num_frames(int(mcfg.stat_seconds * SAMPLE_RATE))))
        audio, labels = hdata.collate(self.store, utts, max_frames, None)
        mask = span_mask(labels.shape[0], labels.shape[1], mcfg.mask_prob, mcfg.mask_length, mcfg.mask_min_spans,
                         EVAL_MASK_SEED + 1 + client_index)
        return {"audio": audio.to(device), "labels": labels.to(device), "mask": mask.to(device)}

    def seconds(self, client_id: str) -> float:
        return sum(u.frames for u in self.data.train[client_id]) * 0.02


class SpeechClients:
    """What the HuBERT-family tasks share about their clients: each holds length batches (one per micro-batch,
    bounded by audio seconds) of its utterances. Expects `self.data` (SpeechData), `self.batches`
    (SpeechBatches) and `self.cfg` (the masking settings)."""

    throughput_units = ("audio_s",)

    def client_ids(self) -> list[str]:
        return list(self.data.train)

    def _client(self, client_id: str) -> str:
        if client_id not in self.data.train:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are {', '.join(self.data.train)}")
        return client_id

    def train_items(self, client_id: str) -> int:
        return len(self.batches.train[self._client(client_id)])

    def num_examples(self, client_id: str) -> int:
        return len(self.data.train[self._client(client_id)])

    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator):
        return self.batches.masked_batch(client_id, int(items[0]), gen, self.cfg)

    def eval_examples(self, client_id: str) -> int:
        """Utterances `evaluate(model, client_id)` scores (its first `eval_batches` length batches; 0: all)."""
        _, batches = self.batches.eval_utterances(self._client(client_id))
        cap = self.cfg.eval_batches
        return sum(len(b) for b in (batches[:cap] if cap > 0 else batches))

    def throughput(self, batch) -> dict[str, float]:
        """Seconds of (cropped, padded) audio in the batch: audio is [B, samples] at 16 kHz."""
        return {"audio_s": batch[0].numel() / SAMPLE_RATE}

