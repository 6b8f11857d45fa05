"""Federated speech recognition: DeepSpeech 1 or 2 trained with CTC, each client a set of speakers.

Setup: load a by-speaker partition (or make the synth demo corpus and partition it under the run directory),
normalise transcripts to the 29 symbols, refuse by name the utterances too short for their transcript,
compute every utterance's features once. Train: the engine's client trainer runs CTC (`F.ctc_loss`, fast) on
zero-padded batches of each client's utterances. Evaluate: validation CTC loss, greedy decoding, CER and WER
(jiwer) on the pooled held-out utterances (or one client's). Export: `final/hf/model.safetensors` with
`asr_config.json` (architecture and sizes), loadable with `load_asr_model`.

The attacks (`fedctl attack ds1|ds2`) use the same models and features with the twice-differentiable
log-space CTC of `fedctl.tasks.asr.ctc` where they need a second derivative.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedctl.core.config import require_in_range
from fedctl.core.local import LocalTraining
from fedctl.core.task import Task, TaskContext
from fedctl.data.speech.demo import demo_partition
from fedctl.errors import FedctlError
from fedctl.tasks.asr.config import AsrConfig
from fedctl.tasks.asr.data import (
    ARCHS,
    AsrUtterance,
    FeatureCache,
    check_utterances,
    load_partition,
    make_batch,
    too_short,
)
from fedctl.tasks.asr.models import ARCHITECTURES, build_asr_model
from fedctl.tasks.asr.text import error_rates, greedy_decode
from fedctl.utils.io import atomic_dir

CONFIG_FILE = "asr_config.json"
WEIGHTS_FILE = "model.safetensors"
OVERRIDE_KEYS = {"ds1": ("activation", "n_hidden"), "ds2": ("n_hidden", "rnn_layers", "conv_channels")}


def model_overrides(cfg: AsrConfig) -> dict[str, Any]:
    """The model settings the config overrides for its architecture (a ds1-only key on ds2 is an error)."""
    if cfg.arch not in ARCHS:
        raise FedctlError(f"task.arch = {cfg.arch!r} is not a DeepSpeech architecture", "use --model ds1 or --model ds2")
    other = {k for keys in OVERRIDE_KEYS.values() for k in keys} - set(OVERRIDE_KEYS[cfg.arch])
    for key in sorted(other):
        if getattr(cfg, key) is not None:
            raise FedctlError(f"task.{key} does not apply to {cfg.arch}",
                              f"{cfg.arch} takes: {', '.join(OVERRIDE_KEYS[cfg.arch])}")
    return {k: getattr(cfg, k) for k in OVERRIDE_KEYS[cfg.arch] if getattr(cfg, k) is not None}


def build_model_from_config(task_cfg: dict[str, Any]) -> nn.Module:
    """The model a run's resolved `task` section describes (e.g. a checkpoint's `config["task"]`), freshly
    initialised; load the checkpoint's `model` state into it."""
    cfg = AsrConfig(**{k: v for k, v in task_cfg.items() if k in AsrConfig.__dataclass_fields__})
    return build_asr_model(cfg.arch, cfg.preset, **model_overrides(cfg))


def load_asr_model(path: str | Path) -> tuple[str, nn.Module]:
    """(arch, model) from an export folder (`final/hf`: asr_config.json + model.safetensors) or a fedctl
    checkpoint of an `asr` run; the model is in eval mode."""
    from safetensors.torch import load_file

    from fedctl.core.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir():
        meta_path = path / CONFIG_FILE
        if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FedctlError(f"{path} has no {CONFIG_FILE} and {WEIGHTS_FILE}",
                              "pass RUN/final/hf of `fedctl train asr` or one of its checkpoints/round_NNN.pt")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            state = load_file(str(path / WEIGHTS_FILE))
        except Exception as exc:  # damaged json or safetensors
            raise FedctlError(f"{path} is unreadable ({type(exc).__name__})", "re-export it with `fedctl train asr`") from None
        task_cfg = meta
    else:
        ckpt = load_checkpoint(path)
        if ckpt["task"] != "asr":
            raise FedctlError(f"{path} is a checkpoint of task '{ckpt['task']}', not of an asr run",
                              "pass a checkpoint or final/hf of `fedctl train asr`")
        task_cfg, state = ckpt["config"].get("task") or {}, ckpt["model"]
    model = build_model_from_config(task_cfg)
    load_state(model, state, str(path), task_cfg.get("arch", "?"))
    return task_cfg.get("arch", "ds1"), model.eval()


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, source_arch: str) -> None:
    """Copy `state` into `model`; any missing, extra or reshaped tensor is an error naming the first one."""
    own = model.state_dict()
    arch = "ds1" if isinstance(model, ARCHITECTURES["ds1"][1]) else "ds2"
    for key in sorted(set(own) | set(state)):
        if key not in own or key not in state or own[key].shape != state[key].shape:
            detail = ("missing" if key not in state else "not in this model" if key not in own
                      else f"{tuple(state[key].shape)} vs {tuple(own[key].shape)}")
            raise FedctlError(
                f"{source} ({source_arch}) does not fit this {arch} model: tensor '{key}' is {detail}",
                "initialise from weights of the same architecture and sizes (--model / --preset as that run)")
    model.load_state_dict(state)


class AsrTask(Task):
    """The `asr` workload. Build with `AsrTask(cfg, ctx)`; the engine drives it through the Task protocol."""

    name = "asr"
    vmap_safe = False  # packed RNN sequences depend on the lengths' values: FedFisher takes the per-example loop

    def __init__(self, cfg: AsrConfig, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self.overrides = model_overrides(cfg)
        with torch.device("meta"):
            self.num_parameters = sum(p.numel() for p in build_asr_model(cfg.arch, cfg.preset, **self.overrides).parameters())
        require_in_range([
            ("batch_size", cfg.batch_size >= 1, "e.g. 8"),
            ("bucket_batches", cfg.bucket_batches >= 0, "e.g. 4; 0 disables length bucketing"),
            ("max_batch_seconds", math.isfinite(cfg.max_batch_seconds) and cfg.max_batch_seconds >= 0,
             "seconds of padded audio per forward pass, e.g. 120; 0 disables the cap"),
            ("lr", math.isfinite(cfg.lr) and cfg.lr > 0, "e.g. 1e-3"),
            ("weight_decay", cfg.weight_decay >= 0, "0 disables it"),
            ("warmup_steps", cfg.warmup_steps >= 0, "0 disables warmup"),
            ("local_updates", cfg.local_updates >= 0, "0 switches to local_epochs"),
            ("local_epochs", cfg.local_updates > 0 or cfg.local_epochs > 0, "set local_epochs > 0 or local_updates > 0"),
            ("grad_clip", cfg.grad_clip >= 0, "0 disables clipping"),
            ("dropout", 0 <= cfg.dropout < 1, "a probability in [0, 1), e.g. 0.2; 0 disables it"),
            ("eval_batch_size", cfg.eval_batch_size >= 1, "e.g. 16"),
            ("eval_batches", cfg.eval_batches >= 0, "0 evaluates the whole validation set"),
            ("eval_examples", cfg.eval_examples >= 0, "e.g. 3; 0 logs no decoded examples"),
            ("min_dur", cfg.min_dur >= 0, "milliseconds, e.g. 1000"),
        ], lambda key: getattr(cfg, key))
        self.training = LocalTraining(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                      grad_clip=cfg.grad_clip, batch_size=cfg.batch_size,
                                      local_updates=cfg.local_updates, local_epochs=cfg.local_epochs,
                                      bucket_batches=cfg.bucket_batches, max_pass_cost=cfg.max_batch_seconds)
        self.train, self.val, self.source = self._load()
        self.features = FeatureCache(cfg.arch)
        for utts in (*self.train.values(), *self.val.values()):
            for u in utts:
                self.features(u)  # once, up front: every round reuses them

    # ------------------------------------------------------------------------------ data

    def _load(self) -> tuple[dict[str, list[AsrUtterance]], dict[str, list[AsrUtterance]], str]:
        c, ctx = self.cfg, self.ctx
        parts = c.parts
        if parts is None:
            import tempfile

            root = ctx.run_dir.demo_data_dir if ctx.run_dir is not None else Path(tempfile.mkdtemp(prefix="fedctl-asr-"))
            ctx.log(f"no --parts: using the synth demo corpus ({c.demo_speakers} eSpeak speakers x "
                    f"{c.demo_utterances} utterances, by speaker) under {root}")
            parts = demo_partition(root, ctx.num_clients, c.demo_speakers, c.demo_utterances, ctx.log)
        clients = load_partition(parts, min_dur=c.min_dur, max_dur=c.max_dur, drop_unknown=c.drop_unknown)
        if len(clients) != ctx.num_clients:
            raise FedctlError(f"{parts} holds {len(clients)} client manifests but the run has {ctx.num_clients} clients",
                              f"use --clients {len(clients)} (or re-partition with --clients {ctx.num_clients})")
        train = {cid: [u for u in utts if u.split != "val"] for cid, utts in clients.items()}
        val = {cid: [u for u in utts if u.split == "val"] for cid, utts in clients.items()}
        empty = [cid for cid, utts in train.items() if not utts]
        if empty:
            raise FedctlError(f"client(s) {', '.join(empty)} of {parts} have no training utterances "
                              f"between {c.min_dur} and {c.max_dur} ms", "widen min_dur/max_dur or use fewer clients")
        if not any(val.values()):
            raise FedctlError(f"{parts} has no validation utterances", "partition with --val-fraction 0.2")
        if c.skip_too_short:
            short = {u.id for u, _, _ in too_short([u for us in (*train.values(), *val.values()) for u in us], c.arch)}
            if short:
                ctx.log(f"left out {len(short)} utterance(s) too short for their transcript under {c.arch}: "
                        f"{', '.join(sorted(short)[:8])}{' …' if len(short) > 8 else ''}")
                train = {cid: [u for u in utts if u.id not in short] for cid, utts in train.items()}
                val = {cid: [u for u in utts if u.id not in short] for cid, utts in val.items()}
        check_utterances([u for utts in (*train.values(), *val.values()) for u in utts], c.arch)
        empty = [cid for cid, utts in train.items() if not utts]
        if empty:
            raise FedctlError(f"client(s) {', '.join(empty)} of {parts} have no usable training utterances",
                              "widen min_dur/max_dur or use fewer clients")
        return train, val, str(parts)

    def client_ids(self) -> list[str]:
        return list(self.train)

    def _client(self, client_id: str) -> list[AsrUtterance]:
        if client_id not in self.train:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are {', '.join(self.train)}")
        return self.train[client_id]

    def _batch(self, utts: list[AsrUtterance]) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in make_batch(utts, self.features))

    # ------------------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """A freshly initialised DS1/DS2 (or the `init` weights), identical for the same ctx.seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            model = build_asr_model(self.cfg.arch, self.cfg.preset, **self.overrides)
        if self.cfg.init is not None:
            source_arch, loaded = load_asr_model(self.cfg.init)
            load_state(model, loaded.state_dict(), self.cfg.init, source_arch)
        model.dropout = self.cfg.dropout  # training forward passes only; evaluation runs in eval mode
        model.train()
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        return list(model.state_dict().keys())  # BatchNorm running statistics travel too (FedAvg-averaged)

    # ------------------------------------------------------------------------------ training

    def train_items(self, client_id: str) -> int:
        return len(self._client(client_id))

    def num_examples(self, client_id: str) -> int:
        return len(self._client(client_id))

    def item_costs(self, client_id: str) -> list[float]:
        """Each training utterance's duration in seconds (length bucketing and the max_batch_seconds cap)."""
        return [u.duration_ms / 1000 for u in self._client(client_id)]

    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator):
        utts = self._client(client_id)
        return self._batch([utts[i] for i in items.tolist()])

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """CTC (mean over the batch of loss / transcript length, as F.ctc_loss's "mean")."""
        features, lengths, targets, target_lengths = batch
        log_probs, out_lengths = model(features, lengths)
        loss = F.ctc_loss(log_probs.float(), targets, out_lengths, target_lengths, blank=0, reduction="mean")
        return loss, {}

    throughput_units = ("audio_s",)

    def throughput(self, batch) -> dict[str, float]:
        """Seconds of audio: DS1 and DS2 features are one frame per 20 ms."""
        return {"audio_s": float(batch[1].sum()) * 0.02}

    # ------------------------------------------------------------------------------ evaluation

    def eval_utterances(self, client_id: str | None) -> list[AsrUtterance]:
        if client_id is None:
            return [u for utts in self.val.values() for u in utts]
        self._client(client_id)
        return self.val[client_id] or self.train[client_id]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """Validation CTC loss (per utterance, divided by its transcript length, averaged) and greedy-decoding
        CER / WER (corpus-level, jiwer) on the pooled held-out utterances, or on one client's."""
        utts = self.eval_utterances(client_id)
        size = self.cfg.eval_batch_size
        chunks = [utts[i : i + size] for i in range(0, len(utts), size)]
        if self.cfg.eval_batches > 0:
            chunks = chunks[: self.cfg.eval_batches]
        was_training = model.training
        model.eval()
        total, count, refs, hyps = 0.0, 0, [], []
        try:
            for chunk in chunks:
                features, lengths, targets, target_lengths = self._batch(chunk)
                log_probs, out_lengths = model(features, lengths)
                losses = F.ctc_loss(log_probs.float(), targets, out_lengths, target_lengths, blank=0, reduction="none")
                total += float((losses / target_lengths.clamp_min(1)).sum())
                count += len(chunk)
                hyps += greedy_decode(log_probs, out_lengths)
                refs += [u.transcript for u in chunk]
        finally:
            model.train(was_training)
        rates = error_rates(refs, hyps)
        return {"val_loss": total / max(1, count), "val_cer": rates["cer"], "val_wer": rates["wer"]}

    @torch.no_grad()
    def eval_examples(self, model: nn.Module) -> list[dict[str, str]]:
        """The first `eval_examples` pooled validation utterances: id, reference transcript and the model's
        greedy CTC decoding (a model that emits only blanks or only vowels shows it here, not only in its CER)."""
        utts = self.eval_utterances(None)[: self.cfg.eval_examples]
        if not utts:
            return []
        was_training = model.training
        model.eval()
        try:
            features, lengths, _, _ = self._batch(utts)
            log_probs, out_lengths = model(features, lengths)
            hyps = greedy_decode(log_probs, out_lengths)
        finally:
            model.train(was_training)
        return [{"id": u.id, "ref": u.transcript, "hyp": h} for u, h in zip(utts, hyps)]

    # ------------------------------------------------------------------------------ client statistics

    def supports_client_stats(self) -> bool:
        return True

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        """The client's first `max_examples` held-out utterances, zero-padded (features, lengths)."""
        features, lengths, _, _ = self._batch(self.eval_utterances(client_id)[:max_examples])
        return {"features": features.transpose(0, 1).contiguous(), "lengths": lengths}

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame log-probabilities [B, T′, 29] and frame labels [B, T′]: CTC has no frame-level ground truth,
        so the label of a frame is the model's own greedy symbol (−100 on padding). FedEntropy and the true
        Fisher (labels sampled from the model) need no ground truth; the empirical Fisher uses that greedy path."""
        log_probs, out_lengths = model(inputs["features"].transpose(0, 1), inputs["lengths"])
        logits = log_probs.transpose(0, 1)
        valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < out_lengths[:, None]
        labels = torch.where(valid, logits.argmax(-1), torch.full_like(valid, -100, dtype=torch.long))
        return logits, labels.detach()

    # ------------------------------------------------------------------------------ artefacts

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        """`out_dir/model.safetensors` + `asr_config.json` (arch, preset and overrides: `load_asr_model` rebuilds it)."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            meta = {"arch": self.cfg.arch, "preset": self.cfg.preset, **self.overrides}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out_dir

    def describe(self) -> dict[str, Any]:
        train_ms = [sum(u.duration_ms for u in utts) for utts in self.train.values()]
        return {
            "arch": self.cfg.arch, "preset": self.cfg.preset, **self.overrides, "parameters": self.num_parameters,
            "data": self.source,
            "train_utterances": [len(u) for u in self.train.values()],
            "val_utterances": sum(len(u) for u in self.val.values()),
            "train_seconds": [round(ms / 1000, 1) for ms in train_ms],
            "speakers_per_client": [len({u.speaker for u in utts}) for utts in self.train.values()],
            "steps_per_round": [self.training.steps_per_round(len(u)) for u in self.train.values()],
        }
