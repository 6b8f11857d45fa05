"""Federated fine-tuning of a sequence classifier on a GLUE task: peft LoRA (adapters + classification head
travel, the base stays frozen on every client) or full fine-tuning (every weight travels).

Any AutoModelForSequenceClassification works (RoBERTa for the research runs, the packaged MiniLM for the
offline demo). The LoRA aggregation space (svd | naive) wraps whatever strategy the run uses
(`wrap_strategy`, see fedctl.tasks.glue.aggregation); every round's fused adapter is saved, in peft's format
with the head, under `<run>/adapters/round_NNN/` at the end of each round (`round_end`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedctl.core.client import check_spec as check_client_spec
from fedctl.core.client import optimizer_keys
from fedctl.core.config import require_in_range
from fedctl.core.local import LocalTraining
from fedctl.core.task import Task, TaskContext
from fedctl.data.glue.load import GlueSplit, load_glue
from fedctl.data.glue.metrics import glue_metrics, predictions
from fedctl.data.glue.shard import make_shards, read_shards
from fedctl.data.glue.tasks import DEMO, get_spec
from fedctl.errors import FedctlError
from fedctl.tasks.glue.aggregation import MERGES, LoraSpaceStrategy
from fedctl.tasks.glue.config import GlueConfig
from fedctl.tasks.glue.model import resolve_model
from fedctl.utils.io import atomic_dir

FINETUNES = ("lora", "full")
META_NAME = "fedctl_glue.json"


@dataclass
class Encoded:
    """A tokenised split, padded to one length (int32 to halve the memory of big tasks like QQP)."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask[, token_type_ids]: [N, L] int32
    labels: torch.Tensor  # [N] int64, or float32 for regression

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows `idx`, trimmed to their longest sequence (short GLUE sentences need far fewer than max_length)."""
        mask = self.inputs["attention_mask"][idx]
        length = max(1, int(mask.sum(1).max()))
        batch = {k: v[idx, :length].long().to(device) for k, v in self.inputs.items()}
        return batch, self.labels[idx].to(device)


def _check_config(cfg: GlueConfig) -> None:
    checks = [
        ("finetune", cfg.finetune in FINETUNES, "use lora or full (--full / --lora)"),
        ("merge", cfg.merge in MERGES, "use --merge svd or --merge naive"),
        ("lora_r", cfg.lora_r >= 1, "e.g. --lora-r 8"),
        ("lora_alpha", cfg.lora_alpha > 0, "e.g. --lora-alpha 8"),
        ("lora_dropout", 0.0 <= cfg.lora_dropout < 1.0, "e.g. --lora-dropout 0.05"),
        ("target_modules", bool(cfg.target_modules), "e.g. --target-modules query value"),
        ("svd_rank", cfg.svd_rank is None or 1 <= cfg.svd_rank <= cfg.lora_r,
         f"1 ≤ --svd-rank ≤ --lora-r ({cfg.lora_r}): clients train at lora_r, the server fuses to svd_rank"),
        ("lr", cfg.lr is None or cfg.lr > 0, "e.g. --lr 5e-4"),
        ("weight_decay", cfg.weight_decay >= 0, "0 disables it"),
        ("batch_size", cfg.batch_size >= 1, "e.g. --batch-size 16"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, "e.g. 64"),
        ("local_updates", cfg.local_updates >= 0, "0 switches to local_epochs"),
        ("local_epochs", cfg.local_updates > 0 or cfg.local_epochs > 0, "set --local-epochs > 0 or --local-updates > 0"),
        ("max_length", cfg.max_length >= 8, "e.g. --max-length 128"),
        ("max_train_examples", cfg.max_train_examples >= 0, "0 keeps all"),
        ("max_eval_examples", cfg.max_eval_examples >= 0, "0 keeps all"),
        ("client_val_fraction", 0.0 <= cfg.client_val_fraction < 1.0,
         "a share in [0, 1) of each client's shard held out for client evaluation, e.g. 0.2; 0 holds none out"),
        ("demo_train_examples", cfg.demo_train_examples >= 2, "e.g. 900"),
        ("demo_val_examples", cfg.demo_val_examples >= 1, "e.g. 300"),
        ("grad_clip", cfg.grad_clip >= 0, "0 disables clipping"),
    ]
    require_in_range(checks, lambda key: getattr(cfg, key))


def default_lr(cfg: GlueConfig) -> float:
    """Learning rates that work out of the box: the small demo model takes a larger LoRA step."""
    if cfg.finetune == "full":
        return 2e-5
    demo = cfg.model is None and cfg.glue_task is None
    return 5e-3 if demo or (cfg.model or "").lower() in ("minilm", "demo") else 5e-4


def saved_key(live_key: str) -> str:
    """The name peft gives a live LoRA model's tensor in adapter_model.safetensors (adapter name dropped)."""
    return (live_key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            .replace(".modules_to_save.default.", "."))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report and weight-loading bar are noise for a head we initialise on purpose."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class GlueTask(Task):
    """The `glue` workload. Build with `GlueTask(cfg, ctx)`; the engine drives it through the Task protocol."""

    name = "glue"

    def __init__(self, cfg: GlueConfig, ctx: TaskContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        _check_config(cfg)
        self.spec = get_spec(cfg.glue_task)  # unknown task: fails here, before any model loads
        self.model_dir, self.model_source = resolve_model(cfg.model, cfg.glue_task)
        self.lora = cfg.finetune == "lora"
        self.svd_rank = cfg.svd_rank or cfg.lora_r
        self.lr = cfg.lr if cfg.lr is not None else default_lr(cfg)
        self.training = LocalTraining(lr=self.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                                      batch_size=cfg.batch_size, local_updates=cfg.local_updates,
                                      local_epochs=cfg.local_epochs, **optimizer_keys(cfg))
        check_client_spec(self.training)
        if self.spec is DEMO:
            from fedctl.data.glue.demo import sentiment_demo

            self.splits = sentiment_demo(cfg.demo_train_examples, cfg.demo_val_examples, seed=0)
            data_source = f"demo sentiment task (generated: {cfg.demo_train_examples} train / {cfg.demo_val_examples} val)"
        else:
            self.splits = load_glue(self.spec.name, cfg.data_dir, log=ctx.log)
            data_source = f"GLUE {self.spec.name} from {cfg.data_dir or 'the datasets cache'}"
        if cfg.model is None or self.spec is DEMO:
            ctx.log(f"glue: model {self.model_source}; data {data_source}")
        self.data_source = data_source
        self.shards = self._make_shards()
        from transformers import AutoTokenizer

        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.train = self._encode(self.splits["train"])
        self.val = {s: self._encode(self.splits[s], cap=cfg.max_eval_examples) for s in self.spec.val_splits}
        self._peft_config: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ data

    def _make_shards(self) -> list[torch.Tensor]:
        c, k = self.cfg, self.ctx.num_clients
        n = len(self.splits["train"])
        if c.shards is not None:
            shards = read_shards(c.shards, n)
            if k == 1 and len(shards) > 1:  # the centralized baseline: one client holds every shard's data
                shards = [sorted({i for s in shards for i in s})]
                self.ctx.log(f"glue: one client holds the union of the shards in {c.shards} ({len(shards[0])} examples)")
            elif len(shards) != k:
                raise FedctlError(
                    f"{c.shards} holds {len(shards)} client shards but the run has {k} clients",
                    f"use --clients {len(shards)} (or re-shard with --clients {k})",
                )
        else:
            shards = make_shards(self.splits["train"].labels, k, "iid", seed=self.ctx.seed,
                                 regression=self.spec.is_regression)
        # client_val_fraction: the last share of each shard is the client's held-out evaluation data
        self.held_out: list[torch.Tensor] | None = None
        if c.client_val_fraction > 0:
            small = [k for k, s in enumerate(shards) if len(s) < 2]
            if small:
                raise FedctlError(f"task.client_val_fraction: client_{small[0]} holds {len(shards[small[0]])} "
                                  "example(s), too few to hold any out of its training",
                                  "use fewer clients, more data, or task.client_val_fraction=0")
            cuts = [len(s) - min(len(s) - 1, max(1, round(c.client_val_fraction * len(s)))) for s in shards]
            self.held_out = [torch.tensor(s[cut:], dtype=torch.long) for s, cut in zip(shards, cuts)]
            shards = [s[:cut] for s, cut in zip(shards, cuts)]
        if c.max_train_examples > 0:
            shards = [s[: c.max_train_examples] for s in shards]
        return [torch.tensor(s, dtype=torch.long) for s in shards]

    def _encode(self, split: GlueSplit, cap: int = 0) -> Encoded:
        n = len(split) if cap <= 0 else min(cap, len(split))
        texts = [t[:n] for t in split.texts]
        enc = self.tokenizer(*texts, truncation=True, max_length=self.cfg.max_length, padding="max_length",
                             return_tensors="pt")
        inputs = {k: enc[k].to(torch.int32) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        dtype = torch.float32 if self.spec.is_regression else torch.long
        return Encoded(inputs, torch.tensor(split.labels[:n], dtype=dtype))

    def client_ids(self) -> list[str]:
        return [f"client_{k}" for k in range(len(self.shards))]

    def shard(self, client_id: str) -> torch.Tensor:
        """Indices (into the training split) that a client holds."""
        try:
            return self.shards[self.client_ids().index(client_id)]
        except ValueError:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are client_0 … client_{len(self.shards) - 1}") from None

    # ------------------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """The base classifier (+ LoRA), identical for the same ctx.seed; the global RNG is left untouched."""
        from transformers import AutoModelForSequenceClassification

        kwargs: dict[str, Any] = {"num_labels": self.spec.num_labels}
        if self.spec.is_regression:
            kwargs["problem_type"] = "regression"
        with torch.random.fork_rng(devices=[]), _quiet_transformers():
            torch.manual_seed(self.ctx.seed)
            try:
                # eager attention: its mask handling has no data-dependent branches, so vmap (FedFisher) works
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(self.model_dir), attn_implementation="eager", **kwargs)
            except (OSError, ValueError) as exc:
                raise FedctlError(f"cannot load a sequence classifier from {self.model_dir}: {str(exc)[:160]}",
                                  "pass --model with a transformers model folder") from None
            if self.lora:
                model = self._add_lora(model)
        model.train()
        return model.to(self.device)

    def _add_lora(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        c = self.cfg
        config = LoraConfig(task_type="SEQ_CLS", r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                            target_modules=list(c.target_modules))
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise FedctlError(f"peft cannot place LoRA on {c.target_modules}: {str(exc).splitlines()[0][:160]}",
                              f"choose --target-modules among this model's Linear layers: {' '.join(linear)}") from None
        self._peft_config = self._config_dict(model)
        if c.init_adapter is not None:
            self._load_adapter(model, Path(c.init_adapter))
        return model

    @staticmethod
    def _config_dict(model: nn.Module) -> dict[str, Any]:
        raw = model.peft_config["default"].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in raw.items()}

    @property
    def scale(self) -> float:
        """The live LoRA scale s = lora_alpha / lora_r (what ΔW = s·B·A uses)."""
        return self.cfg.lora_alpha / self.cfg.lora_r

    @torch.no_grad()
    def _load_adapter(self, model: nn.Module, path: Path) -> None:
        """Warm start from a peft adapter dir (any rank ≤ lora_r, any alpha): ΔW and the head are reproduced
        exactly; spare rank keeps its fresh LoRA init (A random, B zero), so it can still learn."""
        from fedctl.lora.adapters import module_scale, read_adapter_dir, split_state_dict

        config, state = read_adapter_dir(path)
        factors = split_state_dict(state, str(path))
        live = {saved_key(k): k for k, p in model.named_parameters() if p.requires_grad}
        params = dict(model.named_parameters())
        for module, (b, a) in factors.lora.items():
            kb, ka = factors.keys[module]
            if kb not in live or ka not in live:
                raise FedctlError(
                    f"--init-adapter {path} adapts {module.removeprefix('base_model.model.')}, which this run has no LoRA on",
                    f"use the adapter's target modules: --target-modules {' '.join(config.get('target_modules') or [])}",
                )
            B, A = params[live[kb]], params[live[ka]]
            r = a.shape[0]
            if r > self.cfg.lora_r or B.shape[0] != b.shape[0] or A.shape[1] != a.shape[1]:
                raise FedctlError(
                    f"--init-adapter {path}: module {module} is {b.shape[0]}×{a.shape[1]} at rank {r}, this model's "
                    f"is {B.shape[0]}×{A.shape[1]} at rank {self.cfg.lora_r}",
                    "use an adapter trained on the same base model, with --lora-r at least its rank",
                )
            s = module_scale(config, module, r) / self.scale
            B.zero_()[:, :r].copy_(b.to(B.dtype) * s)
            A[:r].copy_(a.to(A.dtype))
        for key, tensor in factors.extra.items():
            if key not in live or params[live[key]].shape != tensor.shape:
                raise FedctlError(
                    f"--init-adapter {path}: tensor {key} does not fit this model (another head or label count?)",
                    f"use an adapter trained for {self.spec.name} ({self.spec.num_labels} labels) on the same base",
                )
            params[live[key]].copy_(tensor.to(params[live[key]].dtype))
        self.ctx.log(f"glue: warm start from adapter {path} (rank {max(a.shape[0] for _, a in factors.lora.values())})")

    def shared_keys(self, model: nn.Module) -> list[str]:
        """LoRA: the trainable tensors (lora_A/B + the head); full: every state-dict entry, once per storage."""
        if self.lora:
            return [n for n, p in model.named_parameters() if p.requires_grad]
        keys, seen = [], set()
        for key, tensor in model.state_dict().items():
            ptr = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if ptr not in seen:
                seen.add(ptr)
                keys.append(key)
        return keys

    def wrap_strategy(self, strategy):
        """The run's strategy, aggregating LoRA in the configured space and saving each round's fused adapter."""
        if not self.lora:
            return strategy
        return LoraSpaceStrategy(strategy, merge=self.cfg.merge, svd_rank=self.svd_rank, scale=self.scale,
                                 seed=self.ctx.seed)

    # ------------------------------------------------------------------------------ training

    def objective(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    def train_items(self, client_id: str) -> int:
        return len(self.shard(client_id))

    def num_examples(self, client_id: str) -> int:
        return len(self.shard(client_id))

    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator):
        return self.train.batch(self.shard(client_id)[items], self.device)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, labels = batch
        return self.objective(model(**inputs).logits, labels), {}

    def client_trained(self, model: nn.Module, client_id: str, server_round: int) -> None:
        """With save_clients: keep this client's adapter of this round (peft format, under adapters/)."""
        if self.cfg.save_clients and self.lora and self.ctx.run_dir is not None:
            keys = set(self.shared_keys(model))
            state = {k: v for k, v in model.state_dict().items() if k in keys}
            self.save_adapter(state, self.ctx.run_dir.adapter_dir(server_round, client_id), rank=self.cfg.lora_r)

    def round_end(self, server_round: int, global_state: dict[str, torch.Tensor]) -> None:
        """LoRA: save the round's fused adapter (peft format, under adapters/round_NNN/fused)."""
        if self.lora and self.ctx.run_dir is not None:
            rank = self.svd_rank if self.cfg.merge == "svd" else self.cfg.lora_r
            self.save_adapter(global_state, self.ctx.run_dir.adapter_dir(server_round), rank=rank)

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def _predict(self, model: nn.Module, data: Encoded, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        was_training = model.training
        model.eval()
        logits, loss = [], 0.0
        try:
            for idx in rows.split(self.cfg.eval_batch_size):
                inputs, labels = data.batch(idx, self.device)
                out = model(**inputs).logits.float()
                loss += float(self.objective(out, labels, reduction="sum"))
                logits.append(out.cpu())
        finally:
            model.train(was_training)
        return torch.cat(logits), loss / len(rows)

    def client_eval_rows(self, client_id: str) -> torch.Tensor:
        """The rows of the training split a client is evaluated on: its held-out share (client_val_fraction > 0)
        or else its training shard, capped by max_eval_examples."""
        rows = self.shard(client_id)
        if self.held_out is not None:
            rows = self.held_out[self.client_ids().index(client_id)]
        return rows[: self.cfg.max_eval_examples] if self.cfg.max_eval_examples > 0 else rows

    def eval_examples(self, client_id: str) -> int:
        return len(self.client_eval_rows(client_id))

    def personal_evaluate(self, model: nn.Module, client_id: str) -> dict[str, float]:
        """The client's own adapter (LoRA; full fine-tuning: its own weights) just after local training, on its
        evaluation rows: the seed's personalised evaluation, beside the global model's on the same rows."""
        return {**self.evaluate(model, client_id), "num_examples": self.eval_examples(client_id)}

    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """The task's official metrics as val_<metric> plus val_loss: on the validation split (MNLI: matched, and
        mismatched as val_mismatched_<metric>), or with a client id on that client's rows (`client_eval_rows`)."""
        if client_id is not None:
            targets = {"val": (self.train, self.client_eval_rows(client_id))}
        else:
            targets = {("val" if i == 0 else "val_mismatched"): (self.val[s], torch.arange(len(self.val[s])))
                       for i, s in enumerate(self.spec.val_splits)}
        out: dict[str, float] = {}
        for prefix, (data, rows) in targets.items():
            logits, loss = self._predict(model, data, rows)
            scores = glue_metrics(self.spec, predictions(self.spec, logits.numpy()), data.labels[rows].numpy())
            out.update({f"{prefix}_{k}": v for k, v in scores.items()})
            out[f"{prefix}_loss"] = loss
        return out

    # ------------------------------------------------------------------------------ client statistics

    def supports_client_stats(self) -> bool:
        if self.spec.is_regression:
            raise FedctlError(f"{self.spec.name} is a regression task: entropy and Fisher of a class distribution do "
                              "not apply", "use a strategy without client statistics (e.g. fedavg)")
        return True

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        """The last `max_examples` examples of the client's shard (deterministic), trimmed to their longest."""
        self.supports_client_stats()
        rows = self.shard(client_id)[-max_examples:]
        inputs, labels = self.train.batch(rows, self.device)
        return {**inputs, "labels": labels}

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, C], labels [B]) — no data-dependent Python, so it runs under vmap(grad).

        The padding mask goes in already expanded to the additive [B, 1, 1, L] form: transformers passes a 4D
        mask through untouched, while from a 2D one it would test `mask.all()` (data-dependent, breaks vmap)."""
        features = {k: v for k, v in inputs.items() if k not in ("labels", "attention_mask")}
        mask = inputs["attention_mask"][:, None, None, :]
        dtype = next(model.parameters()).dtype
        features["attention_mask"] = (1.0 - mask.to(dtype)) * torch.finfo(dtype).min
        return model(**features).logits, inputs["labels"]

    # ------------------------------------------------------------------------------ artefacts

    def adapter_state(self, state: dict[str, torch.Tensor], rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(adapter_config, tensors) in peft's saved format, LoRA factors cut to `rank` (exact when the spare
        rank is zero-padded, as svd aggregation leaves it) with lora_alpha = s·rank so the scale is kept."""
        if self._peft_config is None:
            raise FedctlError("adapter export needs a LoRA model", "build the model first (task.build_model())")
        config = dict(self._peft_config)
        config.update(r=rank, lora_alpha=self.scale * rank, inference_mode=True, rank_pattern={}, alpha_pattern={},
                      base_model_name_or_path=str(self.model_dir))
        tensors = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if ".lora_A." in key:
                value = value[:rank]
            elif ".lora_B." in key:
                value = value[:, :rank]
            tensors[saved_key(key)] = value.contiguous()
        return config, tensors

    def save_adapter(self, state: dict[str, torch.Tensor], out_dir: Path, rank: int) -> Path:
        """A peft adapter dir (adapter_config.json + adapter_model.safetensors, head included); atomic."""
        from fedctl.lora.adapters import write_adapter_dir

        config, tensors = self.adapter_state(state, rank)
        with atomic_dir(out_dir) as tmp:
            write_adapter_dir(tmp, config, tensors)
        return out_dir

    def _meta(self) -> dict[str, Any]:
        return {"glue_task": self.spec.name, "num_labels": self.spec.num_labels, "finetune": self.cfg.finetune,
                "base_model": str(self.model_dir), "metrics": list(self.spec.metrics)}

    def export(self, model: nn.Module, out_dir: str | Path) -> Path:
        """The final model: LoRA → a peft adapter (rank svd_rank with svd merging) + head + tokenizer, loadable
        with PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=…), dir);
        full → a transformers model folder + tokenizer."""
        out_dir = Path(out_dir)
        with _quiet_transformers(), atomic_dir(out_dir) as tmp:
            if self.lora:
                from fedctl.lora.adapters import write_adapter_dir

                state = {k: v for k, v in model.state_dict().items() if k in set(self.shared_keys(model))}
                rank = self.svd_rank if self.cfg.merge == "svd" else self.cfg.lora_r
                write_adapter_dir(tmp, *self.adapter_state(state, rank))
            else:
                model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / META_NAME).write_text(json.dumps(self._meta(), indent=2) + "\n")
        return out_dir

    def describe(self) -> dict[str, Any]:
        sizes = [len(s) for s in self.shards]
        c = self.cfg
        steps = [self.training.steps_per_round(n) for n in sizes]
        out = {
            "glue_task": self.spec.name, "model": self.model_source, "data": self.data_source,
            "finetune": c.finetune, "num_labels": self.spec.num_labels,
            "train_examples": len(self.train), **{f"{s}_examples": len(v) for s, v in self.val.items()},
            "examples_per_client": sizes, "steps_per_round": steps, "max_length": c.max_length, "lr": self.lr,
        }
        if self.lora:
            out.update(lora_r=c.lora_r, lora_alpha=c.lora_alpha, target_modules=list(c.target_modules),
                       merge=c.merge, svd_rank=self.svd_rank if c.merge == "svd" else None)
        return out
