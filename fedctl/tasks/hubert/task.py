"""Federated HuBERT pretraining: masked prediction of k-means cluster labels.

Setup: resolve the preset, load (or, without data arguments, make) a partition and its k-means labels,
group each client's utterances into length batches. Train: the engine's client trainer runs masked
prediction on each client's length batches (one per micro-batch). Evaluate: masked / unmasked prediction loss and
accuracy on the pooled held-out utterances (or one client's). Export: `final/hf` (HubertModel.save_pretrained
plus the pretraining head) and `final/s3prl.pt` (s3prl's converted fairseq layout).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedctl.core.client import check_spec as check_client_spec
from fedctl.core.client import optimizer_keys
from fedctl.core.config import require_in_range
from fedctl.core.local import LocalTraining, autocast
from fedctl.core.task import Task, TaskContext
from fedctl.core.weights import warm_start
from fedctl.errors import FedctlError
from fedctl.tasks.audio import SpeechBatches, SpeechClients, autocast_dtype, make_demo_or_load
from fedctl.tasks.hubert.config import HubertPretrainConfig
from fedctl.tasks.hubert.model import (
    IGNORE,
    HubertPretrainModel,
    export_pretrained,
    hubert_config,
    masked_prediction_loss,
)
from fedctl.tasks.hubert.presets import ARCH_KEYS, PRESETS, TRAIN_KEYS
from fedctl.utils.io import torch_save


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


# ------------------------------------------------------------------------------------------- task


class HubertTask(SpeechClients, Task):
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
        t = self.train_cfg
        self.training = LocalTraining(lr=t["lr"], weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2), eps=1e-6,
                                      warmup_steps=t["warmup_steps"], grad_clip=cfg.grad_clip, grad_accum=cfg.grad_accum,
                                      batch_size=1, local_updates=t["local_updates"], local_epochs=cfg.local_epochs,
                                      amp_dtype=self.amp_dtype, **optimizer_keys(cfg))
        check_client_spec(self.training)
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
        if self.cfg.init is not None:
            warm_start(model, self.cfg.init, self.ctx.log)
        if self.cfg.gradient_checkpointing:
            model.hubert.gradient_checkpointing_enable()
        model.train()
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        return list(model.state_dict().keys())

    # ------------------------------------------------------------------------------ training

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """The pretraining objective: masked CE + unmasked_weight · unmasked CE + feature_pen_weight · penalty."""
        total, parts = self.objective(model, *batch)
        return total, {"masked_loss": parts["masked_loss"].detach(), "masked_acc": parts["masked_acc"]}

    def objective(self, model: nn.Module, audio: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, dict]:
        logits, pen = model(audio.to(self.device), mask.to(self.device))
        parts = masked_prediction_loss(logits, labels.to(self.device), mask.to(self.device))
        total = parts["masked_loss"] + self.cfg.feature_pen_weight * pen
        if self.cfg.unmasked_weight > 0:
            total = total + self.cfg.unmasked_weight * parts["unmasked_loss"]
        return total, parts

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
                with autocast(self.device, self.amp_dtype):
                    _, parts = self.objective(model, audio, labels, mask)
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

    def supports_client_stats(self) -> bool:
        return True

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
            "steps_per_round": [self.training.steps_per_round(len(b)) for b in self.batches.train.values()],
            "precision": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
        }
