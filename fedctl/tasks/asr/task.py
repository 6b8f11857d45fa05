"""Federated speech recognition: DeepSpeech 1 or 2 trained with CTC, each client a set of speakers.

Setup: load a by-speaker partition (or make the synth demo corpus and partition it under the run directory),
normalise transcripts to the 29 symbols (`task.text_norm`), leave out by name (warning + run folder's
left_out_utterances.json) the utterances with no usable transcript or too short for it,
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedctl.core.client import check_spec as check_client_spec
from fedctl.core.client import optimizer_keys
from fedctl.core.config import check_fields, require_in_range
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
    left_out,
    load_partition,
    make_batch,
)
from fedctl.tasks.asr.models import ARCHITECTURES, build_asr_model
from fedctl.tasks.asr.text import check_text_norm, error_rates, greedy_decode
from fedctl.utils.io import atomic_dir, write_text

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
    return build_asr_model(cfg.arch, cfg.preset, **model_overrides(cfg)).to(model_dtype(cfg))


def model_dtype(cfg: AsrConfig) -> torch.dtype:
    """The dtype of a run's model weights and features: float64 with `precision: fp64`, else float32."""
    return torch.float64 if cfg.precision == "fp64" else torch.float32


def initial_model(task_cfg: dict[str, Any], seed: int) -> nn.Module:
    """The global model a run starts from (round 0): its resolved `task` section built under `run.seed`,
    then its `init` weights if any. `AsrTask.build_model` makes it this way, so it can be rebuilt from a
    run's config.yaml (round 0 has no checkpoint)."""
    cfg = AsrConfig(**{k: v for k, v in task_cfg.items() if k in AsrConfig.__dataclass_fields__})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_asr_model(cfg.arch, cfg.preset, **model_overrides(cfg)).to(model_dtype(cfg))  # seeded in float32
    if cfg.init is not None:
        source_arch, loaded = load_asr_model(cfg.init)
        load_state(model, loaded.state_dict(), cfg.init, source_arch)
    return model


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


def _full(log_probs: torch.Tensor) -> torch.Tensor:
    """CTC in full precision: float32 from autocast's half types, float64 kept (precision fp64)."""
    return log_probs if log_probs.dtype == torch.float64 else log_probs.float()


def client_spec(cfg: AsrConfig, device: torch.device | str = "cpu") -> LocalTraining:
    """How an asr run's clients train (`fedctl.core.client.ClientSpec`), read from its `task` section: what
    `AsrTask` trains with and what `fedctl attack --run` unrolls."""
    from fedctl.tasks.audio import PRECISIONS, autocast_dtype

    if cfg.precision not in ("fp64", *PRECISIONS):
        raise FedctlError(f"task.precision = {cfg.precision!r} is not valid",
                          f"use one of: fp64, {', '.join(PRECISIONS)}")
    amp = None if cfg.precision == "fp64" else autocast_dtype(cfg.precision, torch.device(device))
    spec = LocalTraining(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                         grad_clip=cfg.grad_clip, grad_accum=cfg.grad_accum, batch_size=cfg.batch_size,
                         local_updates=cfg.local_updates, local_epochs=cfg.local_epochs, amp_dtype=amp,
                         bucket_batches=cfg.bucket_batches, max_pass_cost=cfg.max_batch_seconds,
                         **optimizer_keys(cfg))
    check_client_spec(spec)
    return spec


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
            ("grad_accum", cfg.grad_accum >= 1, "1 disables accumulation"),
            ("eval_batch_size", cfg.eval_batch_size >= 1, "e.g. 16"),
            ("eval_batches", cfg.eval_batches >= 0, "0 evaluates the whole validation set"),
            ("eval_samples", cfg.eval_samples >= 0, "e.g. 3; 0 logs no decoded samples"),
            ("min_dur", cfg.min_dur >= 0, "milliseconds, e.g. 1000"),
            ("min_chars_per_second", math.isfinite(cfg.min_chars_per_second) and cfg.min_chars_per_second >= 0,
             "characters per second of audio, e.g. 1.0; 0 disables the check"),
        ], lambda key: getattr(cfg, key))
        check_text_norm(cfg.text_norm, "task.text_norm (--text-norm)")
        check_fields(cfg, "task")  # declared checks (dropout: the same as the attack's --defense-dropout)
        self.dtype = model_dtype(cfg)  # of the model and the features
        self.training = client_spec(cfg, self.device)
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
        clients = load_partition(parts, min_dur=c.min_dur, max_dur=c.max_dur, text_norm=c.text_norm)
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
        # left out before training, named: no/empty transcript, implausibly short, (optionally) CTC-infeasible
        everything = [u for us in (*train.values(), *val.values()) for u in us]
        dropped = left_out(everything, c.arch, min_chars_per_second=c.min_chars_per_second,
                           ctc_infeasible=c.skip_too_short, text_norm=c.text_norm)
        client_of = {u.id: cid for cid, us in clients.items() for u in us}
        self.left_out = [{"id": u.id, "client": client_of[u.id], "split": u.split, "path": u.path, "reason": reason}
                         for u, reason in dropped]
        if dropped:
            names = "; ".join(f"{u.id} ({reason})" for u, reason in dropped[:8])
            more = f" and {len(dropped) - 8} more" if len(dropped) > 8 else ""
            where = f", listed in {ctx.run_dir.left_out_path}" if ctx.run_dir is not None else ""
            ctx.log(f"warning: left out {len(dropped)} utterance(s) before training{where}: {names}{more}")
            if ctx.run_dir is not None:
                write_text(ctx.run_dir.left_out_path, json.dumps(
                    {"text_norm": c.text_norm, "min_chars_per_second": c.min_chars_per_second,
                     "utterances": self.left_out}, indent=2, ensure_ascii=False) + "\n")
            gone = {u.id for u, _ in dropped}
            train = {cid: [u for u in utts if u.id not in gone] for cid, utts in train.items()}
            val = {cid: [u for u in utts if u.id not in gone] for cid, utts in val.items()}
        check_utterances([u for utts in (*train.values(), *val.values()) for u in utts], c.arch)
        empty = [cid for cid, utts in train.items() if not utts]
        if empty:
            raise FedctlError(f"client(s) {', '.join(empty)} of {parts} have no usable training utterances"
                              f"{' (' + str(len(dropped)) + ' left out, see above)' if dropped else ''}",
                              "widen min_dur/max_dur, use fewer clients, or a folding --text-norm "
                              "(fold, fold-spell-numbers)")
        if not any(val.values()):
            raise FedctlError(f"{parts} has no usable validation utterances ({len(dropped)} left out, see above)",
                              "re-partition with a larger --val-fraction, or a folding --text-norm")
        return train, val, str(parts)

    def client_ids(self) -> list[str]:
        return list(self.train)

    def _client(self, client_id: str) -> list[AsrUtterance]:
        if client_id not in self.train:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are {', '.join(self.train)}")
        return self.train[client_id]

    def _batch(self, utts: list[AsrUtterance]) -> tuple[torch.Tensor, ...]:
        batch = tuple(t.to(self.device) for t in make_batch(utts, self.features))
        return (batch[0].to(self.dtype), *batch[1:])

    # ------------------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """A freshly initialised DS1/DS2 (or the `init` weights), identical for the same ctx.seed."""
        model = initial_model(asdict(self.cfg), self.ctx.seed)
        model.dropout = self.cfg.dropout  # training forward passes only; evaluation runs in eval mode
        model.train()
        return model.to(self.device, self.dtype)

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
        loss = F.ctc_loss(_full(log_probs), targets, out_lengths, target_lengths, blank=0, reduction="mean")
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

    def eval_examples(self, client_id: str) -> int:
        """Utterances `evaluate(model, client_id)` scores (the first eval_batches × eval_batch_size; 0: all)."""
        n = len(self.eval_utterances(client_id))
        cap = self.cfg.eval_batches * self.cfg.eval_batch_size
        return min(n, cap) if cap > 0 else n

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
                losses = F.ctc_loss(_full(log_probs), targets, out_lengths, target_lengths, blank=0, reduction="none")
                total += float((losses / target_lengths.clamp_min(1)).sum())
                count += len(chunk)
                hyps += greedy_decode(log_probs, out_lengths)
                refs += [u.transcript for u in chunk]
        finally:
            model.train(was_training)
        rates = error_rates(refs, hyps, [u.id for chunk in chunks for u in chunk])
        return {"val_loss": total / max(1, count), "val_cer": rates["cer"], "val_wer": rates["wer"]}

    @torch.no_grad()
    def eval_samples(self, model: nn.Module) -> list[dict[str, str]]:
        """The first `eval_examples` pooled validation utterances: id, reference transcript and the model's
        greedy CTC decoding (a model that emits only blanks or only vowels shows it here, not only in its CER)."""
        utts = self.eval_utterances(None)[: self.cfg.eval_samples]
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
            "text_norm": self.cfg.text_norm,
            "left_out_utterances": len(self.left_out),
            "train_seconds": [round(ms / 1000, 1) for ms in train_ms],
            "speakers_per_client": [len({u.speaker for u in utts}) for utts in self.train.values()],
            "steps_per_round": [self.training.steps_per_round(len(u)) for u in self.train.values()],
        }
