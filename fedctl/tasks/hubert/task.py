"""Federated HuBERT pretraining (issue #5): masked prediction of k-means cluster labels.

Setup: resolve the preset, load (or, without data arguments, make) a partition and its k-means labels,
group each client's utterances into length batches. Train: each round a client runs `local_updates`
AdamW steps of masked prediction on its own audio. Evaluate: masked / unmasked prediction loss and
accuracy on the pooled held-out utterances (or one client's). Export: `final/hf` (HubertModel.save_pretrained
plus the pretraining head) and `final/s3prl.pt` (s3prl's converted fairseq layout).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedctl.core.config import require_in_range
from fedctl.core.task import ClientConfig, FitResult, TaskContext, proximal_term
from fedctl.data.speech.features import SAMPLE_RATE
from fedctl.errors import FedctlError
from fedctl.tasks.hubert import data as hdata
from fedctl.tasks.hubert.config import HubertPretrainConfig
from fedctl.tasks.hubert.model import (
    IGNORE,
    HubertPretrainModel,
    hubert_config,
    masked_prediction_loss,
    num_frames,
    span_mask,
)
from fedctl.tasks.hubert.presets import ARCH_KEYS, PRESETS, TRAIN_KEYS
from fedctl.utils.io import atomic_dir, torch_save, write_json

EVAL_MASK_SEED = 4242  # validation masks are fixed so that rounds compare
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ------------------------------------------------------------------------- shared with `distill`


def resolve_preset(cfg: Any, presets: dict[str, dict], keys: Iterable[str]) -> dict[str, Any]:
    """The preset's values with the config's non-None overrides."""
    if cfg.preset not in presets:
        raise FedctlError(f"unknown task.preset {cfg.preset!r}", f"valid presets: {', '.join(presets)}")
    out = dict(presets[cfg.preset])
    for key in keys:
        if getattr(cfg, key, None) is not None:
            out[key] = getattr(cfg, key)
    return out


def check_arch(arch: dict[str, Any]) -> None:
    for key in ("hidden_size", "num_layers", "num_heads", "ffn_size", "conv_dim", "conv_pos", "conv_pos_groups", "final_dim"):
        if key in arch and arch[key] < 1:
            raise FedctlError(f"task.{key} = {arch[key]} must be at least 1", "see the presets in templates/hubert*.yaml")
    if arch["hidden_size"] % arch["num_heads"]:
        raise FedctlError(f"task.num_heads = {arch['num_heads']} does not divide hidden_size = {arch['hidden_size']}",
                          "choose heads that divide the width (HuBERT Base: 768 / 12)")
    if arch["hidden_size"] % arch["conv_pos_groups"]:
        raise FedctlError(f"task.conv_pos_groups = {arch['conv_pos_groups']} does not divide hidden_size = {arch['hidden_size']}",
                          "HuBERT Base uses 16 groups for 768")


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


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def warmup_lr(peak: float, warmup_steps: int, global_step: int) -> float:
    """Linear warmup to `peak` over `warmup_steps` global steps, then constant."""
    return peak * min(1.0, (global_step + 1) / warmup_steps) if warmup_steps > 0 else peak


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, lr: float, grad_clip: float,
                   scaler: torch.amp.GradScaler | None) -> None:
    """One update after accumulated backward passes: set lr, unscale (fp16), clip, step, zero."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def make_demo_or_load(cfg: Any, ctx: TaskContext, clusters: int | None) -> hdata.SpeechData:
    """The partition + labels named by cfg.parts / cfg.labels, or the synth demo made under the run directory."""
    parts, labels = cfg.parts, cfg.labels
    if (parts is None) != (labels is None):
        missing = "--labels" if labels is None else "--parts"
        raise FedctlError(f"{missing} is missing: real data needs both --parts and --labels",
                          "give both (from `fedctl data partition librispeech` and `fedctl data kmeans`), or neither for the demo")
    if parts is None:
        import tempfile

        root = (ctx.run_dir / "demo_data") if ctx.run_dir is not None else Path(tempfile.mkdtemp(prefix="fedctl-hubert-"))
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

    def micro_batches(self, client_id: str, seed: int, total: int, mcfg: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`total` (audio, labels, span mask) micro-batches of a client's audio; one generator seeded with `seed`
        picks the batches, the crops and the masks. `mcfg` carries mask_prob / mask_length / mask_min_spans."""
        gen = torch.Generator().manual_seed(seed)
        for index in hdata.schedule(len(self.train[client_id]), gen, total, 0.0):
            audio, labels = self.train_batch(client_id, index, gen)
            mask_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            yield audio, labels, span_mask(labels.shape[0], labels.shape[1], mcfg.mask_prob, mcfg.mask_length,
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


# ------------------------------------------------------------------------------------------- task


class HubertTask:
    """The `hubert` workload. Build with `HubertTask(cfg, ctx)`; the engine drives it through the Task protocol."""

    name = "hubert"

    def __init__(self, cfg: HubertPretrainConfig, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        self.arch = resolve_preset(cfg, PRESETS, ARCH_KEYS)
        self.train_cfg = resolve_preset(cfg, PRESETS, TRAIN_KEYS)
        check_arch(self.arch)
        self._check_training()
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.data = make_demo_or_load(cfg, ctx, cfg.clusters)
        self.batches = SpeechBatches(self.data, self.train_cfg["max_batch_seconds"], cfg.max_sample_seconds)

    def _check_training(self) -> None:
        c, t = self.cfg, self.train_cfg
        checks = [
            ("mask_prob", 0 < c.mask_prob <= 1, "fairseq HuBERT: 0.8"),
            ("mask_length", c.mask_length >= 1, "fairseq HuBERT: 10"),
            ("mask_min_spans", c.mask_min_spans >= 0, "fairseq HuBERT: 2"),
            ("logit_temp", c.logit_temp > 0, "fairseq HuBERT: 0.1"),
            ("unmasked_weight", c.unmasked_weight >= 0, "0 trains on masked frames only"),
            ("feature_pen_weight", c.feature_pen_weight >= 0, "fairseq HuBERT: 10"),
            ("label_tolerance", c.label_tolerance >= 0, "e.g. 2"),
            ("grad_accum", c.grad_accum >= 1, "1 disables accumulation"),
            ("lr", t["lr"] > 0, "e.g. 5e-4"),
            ("warmup_steps", t["warmup_steps"] >= 0, "0 disables warmup"),
            ("local_updates", t["local_updates"] >= 0, "0 switches to local_epochs"),
            ("local_epochs", t["local_updates"] > 0 or c.local_epochs > 0, "set local_epochs > 0 or local_updates > 0"),
            ("grad_clip", c.grad_clip >= 0, "0 disables clipping"),
            ("eval_batches", c.eval_batches >= 0, "0 evaluates the whole validation set"),
        ]
        require_in_range(checks, lambda key: t.get(key, getattr(c, key, None)))
        if c.attn_implementation not in ("sdpa", "eager"):
            raise FedctlError(f"task.attn_implementation = {c.attn_implementation!r} is not valid", "use sdpa or eager")

    # ------------------------------------------------------------------------------ model

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def hf_config(self):
        return hubert_config(self.arch, self.cfg.attn_implementation)

    def build_model(self) -> nn.Module:
        """HubertModel + pretraining head, freshly initialised, identical for the same ctx.seed (global RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            model = HubertPretrainModel(self.hf_config(), self.num_classes, self.arch["final_dim"],
                                        self.cfg.logit_temp, self.arch["feature_grad_mult"])
        if self.cfg.gradient_checkpointing:
            model.hubert.gradient_checkpointing_enable()
        model.train()
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        return list(model.state_dict().keys())

    def client_ids(self) -> list[str]:
        return list(self.data.train)

    def _client(self, client_id: str) -> str:
        if client_id not in self.data.train:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are {', '.join(self.data.train)}")
        return client_id

    # ------------------------------------------------------------------------------ training

    def make_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr or self.train_cfg["lr"],
                                 betas=(0.9, self.cfg.adam_beta2), eps=1e-6, weight_decay=self.cfg.weight_decay)

    def steps_per_round(self, num_batches: int) -> int:
        lu = self.train_cfg["local_updates"]
        return lu if lu > 0 else max(1, math.ceil(round(self.cfg.local_epochs * num_batches) / self.cfg.grad_accum))

    def micro_batches(self, client_id: str, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One round's (audio, labels, mask) micro-batches for a client, all drawn from a generator seeded with `seed`."""
        total = self.steps_per_round(len(self.batches.train[client_id])) * self.cfg.grad_accum
        return self.batches.micro_batches(client_id, seed, total, self.cfg)

    def loss(self, model: nn.Module, audio: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The pretraining objective: masked CE + unmasked_weight · unmasked CE + feature_pen_weight · penalty."""
        with autocast(self.device, self.amp_dtype):
            logits, pen = model(audio.to(self.device), mask.to(self.device))
        parts = masked_prediction_loss(logits, labels.to(self.device), mask.to(self.device))
        total = parts["masked_loss"] + self.cfg.feature_pen_weight * pen
        if self.cfg.unmasked_weight > 0:
            total = total + self.cfg.unmasked_weight * parts["unmasked_loss"]
        return total, parts

    def train_steps(self, model: nn.Module, optimizer: torch.optim.Optimizer, micro: Iterable, *, peak_lr: float,
                    step_offset: int = 0, anchor: dict | None = None, proximal_mu: float = 0.0) -> dict[str, float]:
        """The local loop: grad_accum micro-batches → (FedProx term) → clip → AdamW step, with warmup.
        Returns mean objective, masked loss / accuracy and audio seconds seen."""
        c = self.cfg
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        model.train()
        sums = {"loss": 0.0, "masked_loss": 0.0, "masked_acc": 0.0}
        n_micro, seconds, step = 0, 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for i, (audio, labels, mask) in enumerate(micro):
            total, parts = self.loss(model, audio, labels, mask)
            if (i + 1) % c.grad_accum == 0 and proximal_mu > 0:
                total = total + proximal_term(model, anchor, proximal_mu) * c.grad_accum
            (scaler.scale(total / c.grad_accum) if scaler else total / c.grad_accum).backward()
            sums["loss"] += float(total.detach())
            sums["masked_loss"] += float(parts["masked_loss"].detach())
            sums["masked_acc"] += float(parts["masked_acc"])
            n_micro += 1
            seconds += audio.numel() / SAMPLE_RATE
            if (i + 1) % c.grad_accum:
                continue
            optimizer_step(model, optimizer, warmup_lr(peak_lr, self.train_cfg["warmup_steps"], step_offset + step),
                           c.grad_clip, scaler)
            step += 1
        out = {k: v / max(1, n_micro) for k, v in sums.items()}
        return {**out, "steps": float(step), "audio_seconds": seconds}

    def fit(self, model: nn.Module, client_id: str, cfg: ClientConfig) -> FitResult:
        """Train `model` in place on the client's audio for one round; reproducible for cfg.seed."""
        self._client(client_id)
        peak = float(cfg.strategy.get("lr", self.train_cfg["lr"]))
        optimizer = self.make_optimizer(model, peak)
        if cfg.keep_optimizer_state and cfg.optimizer_state is not None:
            optimizer.load_state_dict(copy.deepcopy(cfg.optimizer_state))  # the engine's copy must stay as it was
        steps = self.steps_per_round(len(self.batches.train[client_id]))
        m = self.train_steps(model, optimizer, self.micro_batches(client_id, cfg.seed), peak_lr=peak,
                             step_offset=(cfg.server_round - 1) * steps, anchor=cfg.anchor, proximal_mu=cfg.proximal_mu)
        return FitResult(
            num_examples=len(self.data.train[client_id]),
            metrics={"train_loss": m["loss"], "train_masked_loss": m["masked_loss"], "train_masked_acc": m["masked_acc"],
                     "steps": m["steps"]},
            optimizer_state=optimizer.state_dict() if cfg.keep_optimizer_state else None,
        )

    # ------------------------------------------------------------------------------ evaluation

    def eval_batches(self, client_id: str | None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Deterministic (audio, labels, mask) batches of the validation pool (or one client's held-out audio)."""
        return self.batches.eval_batches(client_id, self.cfg.eval_batches, self.cfg)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """Masked / unmasked cross-entropy and accuracy (frame-weighted) on held-out audio with fixed masks."""
        if client_id is not None:
            self._client(client_id)
        was_training = model.training
        model.eval()
        sums = {k: 0.0 for k in ("masked_loss", "masked_acc", "unmasked_loss", "unmasked_acc")}
        counts = {"masked": 0.0, "unmasked": 0.0}
        histogram = torch.zeros(self.num_classes, dtype=torch.float64)
        try:
            for audio, labels, mask in self.eval_batches(client_id):
                picked = labels[mask & (labels >= 0)]
                histogram += torch.bincount(picked.flatten().cpu(), minlength=self.num_classes).double()
                _, parts = self.loss(model, audio, labels, mask)
                for kind in counts:
                    n = float(parts[f"{kind}_n"])
                    counts[kind] += n
                    sums[f"{kind}_loss"] += float(parts[f"{kind}_loss"]) * n
                    sums[f"{kind}_acc"] += float(parts[f"{kind}_acc"]) * n
        finally:
            model.train(was_training)
        out = {f"val_{k}": v / max(1.0, counts[k.split("_")[0]]) for k, v in sums.items()}
        # What a model that knew only the label frequencies of these very frames would score (an
        # oracle prior): masked accuracy must beat the majority share, loss the unigram entropy.
        p = histogram / histogram.sum().clamp_min(1.0)
        prior_acc = float(p.max())
        prior_loss = float(-(p[p > 0] * p[p > 0].log()).sum())
        return {"val_loss": out["val_masked_loss"], "val_masked_acc": out["val_masked_acc"],
                "val_unmasked_loss": out["val_unmasked_loss"], "val_unmasked_acc": out["val_unmasked_acc"],
                "prior_loss": prior_loss, "prior_acc": prior_acc}

    # ------------------------------------------------------------------------------ client statistics

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        """The client's first `max_examples` held-out utterances, cropped to a common length (≤ stat_seconds),
        with a fixed span mask per client (deterministic), for FedEntropy/FedFisher."""
        self._client(client_id)
        return self.batches.stat_examples(client_id, max_examples, self.client_ids().index(client_id), self.cfg, self.device)

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked-frame logits [B, T, clusters] and labels [B, T] (−100 on unmasked frames); vmap-safe."""
        logits, _ = model(inputs["audio"], inputs["mask"])
        return logits, torch.where(inputs["mask"], inputs["labels"], torch.full_like(inputs["labels"], IGNORE))

    # ------------------------------------------------------------------------------ artefacts

    def export(self, model: nn.Module, out_dir: str | Path) -> Path:
        """`out_dir`: HubertModel.save_pretrained + pretraining head; `out_dir/../s3prl.pt`: s3prl's layout."""
        out_dir = Path(out_dir)
        export_pretrained(model, out_dir, label_rate=50)
        from fedctl.tasks.hubert.s3prl import to_s3prl

        torch_save(to_s3prl(model, cfg_extra={"mask_prob": self.cfg.mask_prob, "mask_length": self.cfg.mask_length,
                                              "feature_grad_mult": self.arch["feature_grad_mult"]}),
                   out_dir.parent / "s3prl.pt")
        return out_dir

    def describe(self) -> dict[str, Any]:
        """What the CLI prints before training: model size, data, batches."""
        from transformers import HubertModel

        with torch.device("meta"):
            params = sum(p.numel() for p in HubertModel(self.hf_config()).parameters())
        params += (self.arch["hidden_size"] + 1) * self.arch["final_dim"] + self.num_classes * self.arch["final_dim"]
        return {
            "preset": self.cfg.preset,
            **{k: self.arch[k] for k in ("hidden_size", "num_layers", "num_heads", "ffn_size", "conv_dim", "final_dim")},
            "parameters": params,
            "clusters": self.num_classes,
            "chance_acc": 1.0 / self.num_classes,
            "data": self.data.source,
            "train_utterances": [len(u) for u in self.data.train.values()],
            "val_utterances": len(self.data.all_val()),
            "train_seconds": [round(self.batches.seconds(c), 1) for c in self.data.train],
            "batches_per_client": [len(b) for b in self.batches.train.values()],
            "steps_per_round": [self.steps_per_round(len(b)) for b in self.batches.train.values()],
            "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
        }


HEAD_FILE = "pretrain_head.safetensors"
HEAD_META = "fedctl_hubert.json"


def export_pretrained(model: HubertPretrainModel, out_dir: Path, label_rate: int = 50) -> Path:
    """HubertModel.save_pretrained into `out_dir`, plus the pretraining head (safetensors) and its sizes (json)."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_dir(out_dir) as tmp:
            model.hubert.save_pretrained(tmp)
            head = {"final_proj.weight": model.final_proj.weight, "final_proj.bias": model.final_proj.bias,
                    "label_embs_concat": model.label_embs_concat}
            save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp / HEAD_FILE))
            write_json(tmp / HEAD_META, {"num_classes": model.num_classes, "final_dim": model.final_proj.out_features,
                                         "logit_temp": model.logit_temp, "label_rate": label_rate})
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out_dir
