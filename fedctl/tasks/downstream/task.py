"""Downstream evaluation of a speech encoder, SUPERB-style, on the one engine (federated or central).

Setup: load the upstream (a HF HubertModel/Wav2Vec2Model, a hubert/distill run or checkpoint, the same
architecture randomly initialised, or MFCC/fbank features), the utterance table with the probe's labels, and —
frozen mode — every utterance's hidden states, from the on-disk cache keyed by the upstream's fingerprint (or
computed once into it). Train: the engine's client trainer runs the probe on each client's utterances: frozen,
only the layer weights and the head exist in the model (they are all that travels); fine-tune, the upstream is
part of the model, its conv feature encoder frozen and not shared, the rest frozen for the first `freeze_steps`
global steps. Evaluate: pr PER, sid/ks accuracy, asr CER/WER (greedy CTC decoding, jiwer) on the pooled
held-out utterances (or one client's), with the softmax layer weights, and a few decoded hypotheses logged next
to their references. Export: `final/hf/model.safetensors` + `downstream.json` (probe, vocabulary, upstream).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jiwer
import torch
import torch.nn.functional as F
from torch import nn

from fedctl.core.client import check_spec as check_client_spec
from fedctl.core.client import optimizer_keys
from fedctl.core.config import require_in_range
from fedctl.core.task import LocalTraining, Task, TaskContext
from fedctl.errors import FedctlError
from fedctl.tasks.downstream import cache as hcache
from fedctl.tasks.downstream.config import MODES, PROBES, DownstreamConfig
from fedctl.tasks.downstream.data import Utt, load_table, read_audio
from fedctl.tasks.downstream.heads import (
    Featurizer,
    FinetuneModel,
    FrameHead,
    ProbeModel,
    RnnHead,
    UtteranceHead,
)
from fedctl.tasks.downstream.upstream import load_upstream
from fedctl.utils.io import atomic_dir

CTC_PROBES = ("pr", "asr")
META_FILE = "downstream.json"
WEIGHTS_FILE = "model.safetensors"
DATA_SEED = 0  # splits of --corpus / sid / ks are fixed, independent of the run seed, so seeds vary the model only


class DownstreamTask(Task):
    """The `downstream` workload. Build with `DownstreamTask(cfg, ctx)`; the engine drives it through the Task protocol."""

    name = "downstream"
    vmap_safe = False  # packed LSTM sequences (asr) depend on length values
    throughput_units = ("audio_s",)

    def __init__(self, cfg: DownstreamConfig, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self._check()
        self.frozen = cfg.mode == "frozen"
        self.upstream = load_upstream(cfg.upstream, random_init=cfg.random_init, seed=ctx.seed, device=self.device,
                                      finetune=not self.frozen)
        if cfg.layer is not None and not 0 <= cfg.layer < self.upstream.num_layers:
            raise FedctlError(f"task.layer = {cfg.layer} but {cfg.upstream} has hidden states 0..{self.upstream.num_layers - 1}",
                              "choose one of those, or null for the weighted sum of all")
        self.training = LocalTraining(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                      grad_clip=cfg.grad_clip, batch_size=cfg.batch_size,
                                      local_updates=cfg.local_updates, local_epochs=cfg.local_epochs, **optimizer_keys(cfg))
        check_client_spec(self.training)
        clients, self.vocab, self.source = load_table(cfg, ctx.num_clients, DATA_SEED, self._demo_root, ctx.log)
        self.train = {cid: [u for u in us if u.split == "train"] for cid, us in clients.items()}
        self.val = {cid: [u for u in us if u.split == "val"] for cid, us in clients.items()}
        self.test = [u for us in clients.values() for u in us if u.split == "test"]  # ks: the corpus's test rows
        self.index = {label: i for i, label in enumerate(self.vocab)}
        self.targets = {u.id: self._encode(u) for us in clients.values() for u in us}
        self.utterances = [u for us in clients.values() for u in us]
        self._samples: list[dict[str, str]] = []
        self._audio: dict[str, torch.Tensor] = {}
        self.states: hcache.FrameStore | None = None
        self.cache_folder: Path | None = None
        if self.frozen:
            self._load_states()

    # ------------------------------------------------------------------------------ setup

    def _check(self) -> None:
        c = self.cfg
        if c.probe not in PROBES:
            raise FedctlError(f"task.probe = {c.probe!r} is not a probe", f"use one of: {', '.join(PROBES)}")
        if c.mode not in MODES:
            raise FedctlError(f"task.mode = {c.mode!r} is not valid", "use frozen or finetune")
        require_in_range([
            ("batch_size", c.batch_size >= 1, "e.g. 8"),
            ("lr", math.isfinite(c.lr) and c.lr > 0, "e.g. 1e-3"),
            ("weight_decay", c.weight_decay >= 0, "0 disables it"),
            ("warmup_steps", c.warmup_steps >= 0, "0 disables warmup"),
            ("local_updates", c.local_updates >= 0, "0 switches to local_epochs"),
            ("local_epochs", c.local_updates > 0 or c.local_epochs > 0, "set local_epochs > 0 or local_updates > 0"),
            ("grad_clip", c.grad_clip >= 0, "0 disables clipping"),
            ("proj_dim", c.proj_dim >= 1, "SUPERB: 256 (asr: 1024)"),
            ("lstm_hidden", c.lstm_hidden >= 1, "SUPERB: 1024"),
            ("lstm_layers", c.lstm_layers >= 1, "SUPERB: 2"),
            ("lstm_dropout", 0 <= c.lstm_dropout < 1, "SUPERB: 0.2"),
            ("freeze_steps", c.freeze_steps >= 0, "0 trains the upstream from the first step"),
            ("val_fraction", 0 < c.val_fraction < 1, "e.g. 0.2"),
            ("eval_batch_size", c.eval_batch_size >= 1, "e.g. 16"),
            ("eval_batches", c.eval_batches >= 0, "0 evaluates the whole validation set"),
            ("eval_samples", c.eval_samples >= 0, "0 logs none"),
        ], lambda key: getattr(c, key))
        if c.freeze_steps and c.mode != "finetune":
            raise FedctlError("task.freeze_steps applies to --mode finetune only", "drop --freeze-steps or add --mode finetune")

    def _demo_root(self) -> Path:
        if self.ctx.run_dir is not None:
            return self.ctx.run_dir.demo_data_dir
        import tempfile

        return Path(tempfile.mkdtemp(prefix="fedctl-downstream-"))

    def _encode(self, u: Utt) -> list[int] | int:
        if self.cfg.probe == "pr":
            ids = [self.index[p] for p in u.label.split()]
        elif self.cfg.probe == "asr":
            from fedctl.tasks.asr.text import encode

            ids = encode(u.label)
        else:
            return self.index[u.label]
        if not ids:
            raise FedctlError(f"utterance {u.id} ({u.path}) has an empty {self.cfg.probe} target",
                              "leave it out of the corpus (CTC needs at least one label)")
        return ids

    def _load_states(self) -> None:
        """Every utterance's hidden states, from the cache or encoded once into it."""
        root = Path(self.cfg.cache_dir) if self.cfg.cache_dir else hcache.default_cache_dir()
        fingerprint = self.upstream.fingerprint()
        utts = sorted(self.utterances, key=lambda u: u.id)
        key = hcache.cache_key(fingerprint, [(u.id, u.num_samples, u.path) for u in utts])
        self.cache_folder = root / key[:24]
        describe = f"{self.cfg.upstream}{' (random init, seed ' + str(self.ctx.seed) + ')' if self.cfg.random_init else ''}"
        self.states = hcache.load_or_build(root, key, fingerprint, [u.id for u in utts],
                                           lambda i: self.upstream.hidden_states(read_audio(utts[i].path, utts[i].offset, utts[i].num_samples)),
                                           self.ctx.log, describe)

    # ------------------------------------------------------------------------------ model

    def _head(self) -> nn.Module:
        c, dim, classes = self.cfg, self.upstream.dim, len(self.vocab)
        if c.probe == "pr":
            return FrameHead(dim, c.proj_dim, classes)
        if c.probe == "asr":
            return RnnHead(dim, c.proj_dim, c.lstm_hidden, c.lstm_layers, c.lstm_dropout, classes)
        return UtteranceHead(dim, c.proj_dim, classes)

    def build_model(self) -> nn.Module:
        """Frozen: layer weights (zeros: uniform) + head; fine-tune: a copy of the upstream + those. Identical for
        the same ctx.seed; global RNG untouched."""
        import copy

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            featurizer = Featurizer(self.upstream.num_layers, self.cfg.layer, self.cfg.layer_norm)
            head = self._head()
        if self.frozen:
            model = ProbeModel(featurizer, head)
        else:
            model = FinetuneModel(copy.deepcopy(self.upstream.model), featurizer, head)
        model.train()
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        """Frozen: everything the model holds (layer weights + head). Fine-tune: all but the frozen conv encoder."""
        return [k for k in model.state_dict() if not k.startswith("upstream.feature_extractor.")]

    # ------------------------------------------------------------------------------ batches

    def client_ids(self) -> list[str]:
        return list(self.train)

    def _client(self, client_id: str) -> list[Utt]:
        if client_id not in self.train:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are {', '.join(self.train)}")
        return self.train[client_id]

    def train_items(self, client_id: str) -> int:
        return len(self._client(client_id))

    def num_examples(self, client_id: str) -> int:
        return len(self._client(client_id))

    def _batch(self, utts: list[Utt], gen: torch.Generator | None) -> dict[str, Any]:
        """Frozen: packed hidden states [L, Σ frames, D] gathered from the cache; fine-tune: zero-padded audio
        [B, samples]; with frame lengths and targets. Whole utterances (KS `_silence_` rows are already fixed 1 s
        windows of the noise files); `gen` is unused: nothing random happens after the cache."""
        if self.frozen:
            x, lengths = self.states.gather([u.id for u in utts])
            return self.batch_of(utts, x, lengths)
        frames = [self.upstream.num_frames(u.num_samples) for u in utts]
        hop = self.upstream.hop
        spans = [(k - 1) * hop + 400 for k in frames]
        x = torch.zeros(len(utts), max(spans))
        for row, (u, n) in enumerate(zip(utts, spans)):
            wav = self._wave(u)[:n]
            x[row, : len(wav)] = wav
        return self.batch_of(utts, x, torch.tensor(frames, dtype=torch.long))

    def batch_of(self, utts: list[Utt], x: torch.Tensor, lengths: torch.Tensor) -> dict[str, Any]:
        """The batch dict of model input `x` (frozen: packed hidden states; fine-tune: audio) with `utts`' targets."""
        batch: dict[str, Any] = {"x": x.to(self.device), "lengths": lengths.to(self.device),
                                 "audio_s": sum(u.num_samples for u in utts) / 16000}
        if self.cfg.probe in CTC_PROBES:
            targets = [self.targets[u.id] for u in utts]
            batch["targets"] = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=self.device)
            batch["target_lengths"] = torch.tensor([len(t) for t in targets], dtype=torch.long, device=self.device)
        else:
            batch["labels"] = torch.tensor([self.targets[u.id] for u in utts], dtype=torch.long, device=self.device)
        return batch

    def _wave(self, u: Utt) -> torch.Tensor:
        if u.id not in self._audio:
            self._audio[u.id] = self.upstream.waveform(read_audio(u.path, u.offset, u.num_samples))
        return self._audio[u.id]

    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator):
        utts = self._client(client_id)
        return self._batch([utts[i] for i in items.tolist()], gen)

    def throughput(self, batch) -> dict[str, float]:
        return {"audio_s": float(batch["audio_s"])}

    # ------------------------------------------------------------------------------ training

    def step_begins(self, model: nn.Module, global_step: int) -> None:
        """Fine-tune: the transformer gets no gradient during the first `freeze_steps` global steps."""
        if isinstance(model, FinetuneModel):
            model.frozen_transformer = global_step < self.cfg.freeze_steps

    def _outputs(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(model output, its frame lengths); mismatched frame counts are trimmed to the shorter."""
        out = model(batch["x"], batch["lengths"])
        lengths = batch["lengths"].clamp_max(out.shape[1]) if out.dim() == 3 else batch["lengths"]
        return out, lengths

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """CTC (mean over the batch of loss / target length, zero_infinity) or cross-entropy (+ accuracy)."""
        out, lengths = self._outputs(model, batch)
        if self.cfg.probe in CTC_PROBES:
            loss = F.ctc_loss(out.transpose(0, 1).float(), batch["targets"], lengths, batch["target_lengths"],
                              blank=0, reduction="mean", zero_infinity=True)
            return loss, {}
        loss = F.cross_entropy(out.float(), batch["labels"])
        return loss, {"acc": (out.argmax(-1) == batch["labels"]).float().mean().detach()}

    # ------------------------------------------------------------------------------ evaluation

    def eval_utterances(self, client_id: str | None) -> list[Utt]:
        if client_id is None:
            return [u for us in self.val.values() for u in us]
        self._client(client_id)
        return self.val[client_id] or self.train[client_id]

    def _decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC: argmax per frame, merge repeats, drop blanks; phones space-joined, characters as text."""
        best = log_probs.argmax(-1).tolist()
        texts = []
        for path, n in zip(best, lengths.tolist()):
            ids = [c for t, c in enumerate(path[:n]) if c != 0 and (t == 0 or c != path[t - 1])]
            sep = " " if self.cfg.probe == "pr" else ""
            texts.append(sep.join(self.vocab[i] for i in ids))
        return texts

    @torch.no_grad()
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """pr: val_loss, val_per; asr: val_loss, val_cer, val_wer; sid/ks: val_loss, val_acc, chance_acc (1/classes);
        ks with a test split (the global evaluation): also test_loss, test_acc (SUPERB reports the test figure:
        validation is class-balanced by sampling in s3prl, test is not); all: the softmax layer weights
        `layer_w<i>` (frozen weighted sum)."""
        was_training = model.training
        model.eval()
        try:
            metrics, samples = self._score(model, self.eval_utterances(client_id), "val", self.cfg.eval_batches)
            if client_id is None and self.test:
                metrics.update(self._score(model, self.test, "test", 0)[0])
        finally:
            model.train(was_training)
        if self.cfg.probe not in CTC_PROBES:
            metrics["chance_acc"] = 1.0 / len(self.vocab)
        for i, w in enumerate(model.featurizer.layer_weights()):
            metrics[f"layer_w{i}"] = w
        if self.cfg.probe in CTC_PROBES:
            self._samples = samples[: self.cfg.eval_samples]
            for s in self._samples:
                self.ctx.log(f"  {s['id']}  ref: {s['ref']}\n  {' ' * len(s['id'])}  hyp: {s['hyp'] or '(empty)'}")
        return metrics

    def _score(self, model: nn.Module, utts: list[Utt], prefix: str, max_batches: int
               ) -> tuple[dict[str, float], list[dict[str, str]]]:
        """`<prefix>_loss` and the probe's metric over `utts` (at most `max_batches` batches; 0: all), and the
        decoded hypotheses next to their references (ctc probes)."""
        size = self.cfg.eval_batch_size
        chunks = [utts[i : i + size] for i in range(0, len(utts), size)]
        if max_batches > 0:
            chunks = chunks[:max_batches]
        total, count, correct, refs, hyps, ids = 0.0, 0, 0, [], [], []
        for chunk in chunks:
            batch = self._batch(chunk, None)
            out, lengths = self._outputs(model, batch)
            if self.cfg.probe in CTC_PROBES:
                losses = F.ctc_loss(out.transpose(0, 1).float(), batch["targets"], lengths, batch["target_lengths"],
                                    blank=0, reduction="none", zero_infinity=True)
                total += float((losses / batch["target_lengths"].clamp_min(1)).sum())
                hyps += self._decode(out, lengths)
                refs += [u.label for u in chunk]
                ids += [u.id for u in chunk]
            else:
                total += float(F.cross_entropy(out.float(), batch["labels"], reduction="sum"))
                correct += int((out.argmax(-1) == batch["labels"]).sum())
            count += len(chunk)
        metrics: dict[str, float] = {f"{prefix}_loss": total / max(1, count)}
        if self.cfg.probe == "pr":
            metrics[f"{prefix}_per"] = float(jiwer.wer(refs, hyps))
        elif self.cfg.probe == "asr":
            from fedctl.tasks.asr.text import error_rates

            rates = error_rates(refs, hyps)
            metrics.update({f"{prefix}_cer": rates["cer"], f"{prefix}_wer": rates["wer"]})
        else:
            metrics[f"{prefix}_acc"] = correct / max(1, count)
        return metrics, [{"id": i, "ref": r, "hyp": h} for i, r, h in zip(ids, refs, hyps)]

    def eval_samples(self, model: nn.Module) -> list[dict[str, str]]:
        """The samples decoded by the last evaluation (the head's CTC probes decode them there)."""
        return list(self._samples)

    # ------------------------------------------------------------------------------ artefacts

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        """`out_dir/model.safetensors` (the model's tensors) + `downstream.json` (probe, vocabulary, upstream, layer weights)."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            meta = {"probe": self.cfg.probe, "mode": self.cfg.mode, "upstream": self.cfg.upstream,
                    "random_init": self.cfg.random_init, "upstream_fingerprint": self.upstream.fingerprint(),
                    "vocab": self.vocab, "layer_weights": model.featurizer.layer_weights()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out_dir

    def sample(self, model: nn.Module) -> str | None:
        if self.cfg.probe not in CTC_PROBES or not self._samples:
            return None
        s = self._samples[0]
        return f"{s['id']}: ref {s['ref']!r} → hyp {s['hyp']!r}"

    def describe(self) -> dict[str, Any]:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            head = self._head()
        return {
            "upstream": self.cfg.upstream + (" (random init)" if self.cfg.random_init else ""),
            "mode": self.cfg.mode, "probe": self.cfg.probe,
            "hidden_states": self.upstream.num_layers, "dim": self.upstream.dim, "frame_rate_hz": self.upstream.frame_rate,
            "classes": len(self.vocab), "head_parameters": sum(p.numel() for p in head.parameters()),
            "data": self.source,
            "train_utterances": [len(u) for u in self.train.values()],
            "val_utterances": sum(len(u) for u in self.val.values()),
            "test_utterances": len(self.test),
            "cache": str(self.cache_folder) if self.cache_folder else None,
        }
