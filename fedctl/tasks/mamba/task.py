"""Federated Mamba2 language modelling: transformers' Mamba2ForCausalLM on WikiText-2 or local text.

On CPU transformers runs Mamba2's pure-torch path; on CUDA it uses the mamba-ssm kernels when that package
is installed (`pip install fedctl[cuda]`). The full model travels between server and clients.

Local training is the engine's one client trainer (fedctl.core.local); this task supplies blocks and the loss.
"""

from __future__ import annotations

import math
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
from fedctl.core.weights import warm_start
from fedctl.errors import FedctlError
from fedctl.tasks.mamba import data as mdata
from fedctl.tasks.mamba.config import MambaConfig
from fedctl.tasks.mamba.presets import PRESETS
from fedctl.utils.io import atomic_dir

ARCH_KEYS = ("hidden_size", "num_layers", "state_size", "head_dim", "expand", "n_groups", "chunk_size")


def resolve_architecture(cfg: MambaConfig) -> dict[str, int]:
    """The preset's Mamba2 sizes with cfg's overrides applied, checked against what Mamba2 accepts."""
    if cfg.preset not in PRESETS:
        raise FedctlError(f"unknown task.preset {cfg.preset!r}", f"valid presets: {', '.join(PRESETS)}")
    arch = dict(PRESETS[cfg.preset])
    for key in ARCH_KEYS:
        value = getattr(cfg, key)
        if value is not None:
            arch[key] = value
    for key in ARCH_KEYS:
        if arch[key] < 1:
            raise FedctlError(f"mamba.{key} = {arch[key]} must be at least 1", f"the {cfg.preset} preset uses {PRESETS[cfg.preset][key]}")
    inner = arch["expand"] * arch["hidden_size"]
    if inner % arch["head_dim"]:
        raise FedctlError(
            f"task.head_dim = {arch['head_dim']} does not divide expand*hidden_size = "
            f"{arch['expand']}*{arch['hidden_size']} = {inner}",
            "Mamba2 needs num_heads = expand*hidden_size/head_dim to be whole; pick a head_dim that divides it",
        )
    num_heads = inner // arch["head_dim"]
    if num_heads % arch["n_groups"]:
        raise FedctlError(
            f"task.n_groups = {arch['n_groups']} does not divide the {num_heads} heads",
            f"choose n_groups among the divisors of {num_heads} (1 always works)",
        )
    arch["num_heads"] = num_heads
    return arch


def _check_training_config(cfg: MambaConfig) -> None:
    checks = [
        ("seq_len", cfg.seq_len >= 1, "e.g. 128"),
        ("batch_size", cfg.batch_size >= 1, "e.g. 8"),
        ("lr", cfg.lr > 0, "e.g. 3e-3"),
        ("weight_decay", cfg.weight_decay >= 0, "0 disables it"),
        ("warmup_steps", cfg.warmup_steps >= 0, "0 disables warmup"),
        ("local_updates", cfg.local_updates >= 0, "0 switches to local_epochs"),
        ("local_epochs", cfg.local_updates > 0 or cfg.local_epochs > 0, "set local_epochs > 0 or local_updates > 0"),
        ("grad_clip", cfg.grad_clip >= 0, "0 disables clipping"),
        ("eval_batches", cfg.eval_batches >= 0, "0 evaluates the whole validation set"),
        ("sample_tokens", cfg.sample_tokens >= 0, "e.g. 40"),
    ]
    require_in_range(checks, lambda key: getattr(cfg, key))
    if cfg.shard not in ("contiguous", "interleaved"):
        raise FedctlError(f"task.shard = {cfg.shard!r} is not a sharding mode", "use contiguous or interleaved")


def lm_loss(model: nn.Module, blocks: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of `[B, T+1]` blocks: inputs block[:, :-1], labels block[:, 1:].

    We shift ourselves and do not pass `labels` (HF's Mamba2 would shift again internally).
    """
    logits = model(input_ids=blocks[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), blocks[:, 1:].flatten(), reduction=reduction)


class MambaTask(Task):
    """The `mamba` workload. Build with `MambaTask(cfg, ctx)`; the engine drives it through the Task protocol."""

    name = "mamba"

    def __init__(self, cfg: MambaConfig, ctx: TaskContext):
        self.cfg = cfg
        self.ctx = ctx
        self.device = torch.device(ctx.device)
        _check_training_config(cfg)
        self.arch = resolve_architecture(cfg)  # fail fast, before any text is read
        self.training = LocalTraining(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                      grad_clip=cfg.grad_clip, batch_size=cfg.batch_size,
                                      local_updates=cfg.local_updates, local_epochs=cfg.local_epochs, **optimizer_keys(cfg))
        check_client_spec(self.training)
        self.data = mdata.load_data(cfg, ctx.num_clients, ctx.run_dir.tokenizer_path if ctx.run_dir else None, ctx.log)
        self.tokenizer = self.data.tokenizer
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.pad_token_id = mdata.pad_token_id(self.tokenizer)
        if self.device.type == "cpu" and cfg.seq_len < self.arch["chunk_size"] // 2:
            ctx.log(
                f"note: seq_len {cfg.seq_len} is far below chunk_size {self.arch['chunk_size']}; "
                "the pure-torch scan pads every sequence up to a chunk (set task.chunk_size to save time)"
            )

    # ------------------------------------------------------------------------------ model

    def hf_config(self):
        from transformers import Mamba2Config

        a = self.arch
        try:
            return Mamba2Config(
                vocab_size=self.vocab_size,
                hidden_size=a["hidden_size"],
                num_hidden_layers=a["num_layers"],
                state_size=a["state_size"],
                head_dim=a["head_dim"],
                num_heads=a["num_heads"],
                expand=a["expand"],
                n_groups=a["n_groups"],
                chunk_size=a["chunk_size"],
                pad_token_id=self.pad_token_id,
                bos_token_id=None,
                eos_token_id=None,  # the ids of HF's defaults mean nothing in our vocabulary
                tie_word_embeddings=False,
            )
        except (ValueError, TypeError) as exc:
            raise FedctlError(f"Mamba2 rejects the model sizes {a}: {exc}", "adjust task.hidden_size/head_dim/expand/n_groups") from exc

    def build_model(self) -> nn.Module:
        """A freshly initialised Mamba2ForCausalLM, identical for the same ctx.seed; the global RNG is left untouched."""
        from transformers import Mamba2ForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            model = Mamba2ForCausalLM(self.hf_config())
        if self.cfg.init is not None:
            warm_start(model, self.cfg.init, self.ctx.log)
        model.train()  # Mamba2 has no dropout; train mode only selects the fused kernel on CUDA
        return model.to(self.device)

    def shared_keys(self, model: nn.Module) -> list[str]:
        """Every state-dict entry, once per storage (tied tensors travel once)."""
        keys, seen = [], set()
        for key, tensor in model.state_dict().items():
            ptr = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if ptr in seen:
                continue
            seen.add(ptr)
            keys.append(key)
        return keys

    def client_ids(self) -> list[str]:
        return [f"client_{k}" for k in range(self.ctx.num_clients)]

    def shard(self, client_id: str) -> torch.Tensor:
        """Indices (into data.train_blocks) of the blocks a client holds."""
        try:
            return self.data.shards[self.client_ids().index(client_id)]
        except ValueError:
            raise FedctlError(f"unknown client {client_id!r}", f"clients are client_0 … client_{self.ctx.num_clients - 1}") from None

    # ------------------------------------------------------------------------------ training

    def train_items(self, client_id: str) -> int:
        return len(self.shard(client_id))

    def num_examples(self, client_id: str) -> int:
        return len(self.shard(client_id))

    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The `[B, seq_len + 1]` blocks at shard positions `items`."""
        return self.data.train_blocks[self.shard(client_id)[items]].to(self.device)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        return lm_loss(model, batch), {}

    throughput_units = ("tokens",)

    def throughput(self, batch: torch.Tensor) -> dict[str, float]:
        """Predicted tokens: each block of seq_len + 1 ids predicts seq_len."""
        return {"tokens": float(batch.shape[0] * (batch.shape[1] - 1))}

    # ------------------------------------------------------------------------------ evaluation

    def eval_examples(self, client_id: str) -> int:
        """Text blocks `evaluate(model, client_id)` scores (the first eval_batches × batch_size; 0: all)."""
        n = len(self.shard(client_id))
        cap = self.cfg.eval_batches * self.cfg.batch_size
        return min(n, cap) if cap > 0 else n

    @torch.no_grad()
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """Mean token cross-entropy and perplexity over the first `eval_batches` batches, in order.

        With no client: the global validation blocks. With a client: that client's training shard
        (there is no held-out client data; this measures fit to local data, e.g. for client drift).
        Keys are `val_loss` / `val_ppl` either way.
        """
        blocks = self.data.val_blocks if client_id is None else self.data.train_blocks[self.shard(client_id)]
        bs = self.cfg.batch_size
        n_batches = math.ceil(len(blocks) / bs)
        if self.cfg.eval_batches > 0:
            n_batches = min(n_batches, self.cfg.eval_batches)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for b in range(n_batches):
                batch = blocks[b * bs : (b + 1) * bs].to(self.device)
                total += lm_loss(model, batch, reduction="sum").item()
                count += batch[:, 1:].numel()
        finally:
            model.train(was_training)
        val_loss = total / count
        return {"val_loss": val_loss, "val_ppl": math.exp(val_loss)}

    # ------------------------------------------------------------------------------ client statistics

    def supports_client_stats(self) -> bool:
        return True

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        """The last `max_examples` blocks of the client's shard (deterministic), for FedEntropy/FedFisher.

        A language-model client has no labelled held-out split: its own text is what it can measure on.
        """
        shard = self.shard(client_id)
        return {"blocks": self.data.train_blocks[shard[-max_examples:]].to(self.device)}

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits [B, T, V] and labels [B, T] of blocks (functional: safe under vmap)."""
        blocks = inputs["blocks"]
        logits = model(input_ids=blocks[:, :-1], use_cache=False).logits
        return logits, blocks[:, 1:]

    def sample(self, model: nn.Module) -> str:
        return self.generate_sample(model)

    @torch.no_grad()
    def generate_sample(self, model: nn.Module, prompt: str | None = None, max_new_tokens: int | None = None) -> str:
        """Greedy continuation of `prompt` (default cfg.sample_prompt), decoded to text, prompt included."""
        prompt = self.cfg.sample_prompt if prompt is None else prompt
        max_new_tokens = self.cfg.sample_tokens if max_new_tokens is None else max_new_tokens
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids or [self.pad_token_id]
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad_token_id,
                eos_token_id=None,
            )
        finally:
            model.train(was_training)
        return self.tokenizer.decode(out[0].tolist())

    # ------------------------------------------------------------------------------ artefacts

    def export(self, model: nn.Module, out_dir: str | Path) -> Path:
        """Write a loadable Hugging Face model dir: config + safetensors weights + tokenizer files."""
        from transformers import PreTrainedTokenizerFast
        from transformers.utils import logging as hf_logging

        out_dir = Path(out_dir)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a shard progress bar for one small file is noise on stderr
        try:
            with atomic_dir(out_dir) as tmp:
                model.save_pretrained(tmp)
                pad = self.tokenizer.id_to_token(self.pad_token_id)
                PreTrainedTokenizerFast(tokenizer_object=self.tokenizer, pad_token=pad).save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return out_dir

    def describe(self) -> dict[str, Any]:
        """What the CLI prints before training: model size, data sizes, shard sizes."""
        model_params = self._count_params()
        shard_sizes = [len(s) for s in self.data.shards]
        return {
            "preset": self.cfg.preset,
            **{k: self.arch[k] for k in ("hidden_size", "num_layers", "state_size", "head_dim", "num_heads", "expand", "n_groups", "chunk_size")},
            "parameters": model_params,
            "vocab_size": self.vocab_size,
            "tokenizer": self.data.tokenizer_source,
            "data": self.data.source,
            "train_tokens": self.data.train_tokens,
            "val_tokens": self.data.val_tokens,
            "seq_len": self.cfg.seq_len,
            "train_blocks": len(self.data.train_blocks),
            "val_blocks": len(self.data.val_blocks),
            "blocks_per_client": shard_sizes,
            "steps_per_round": [self.training.steps_per_round(n) for n in shard_sizes],
            "shard": self.cfg.shard,
        }

    def _count_params(self) -> int:
        # Built on the meta device: counts without allocating (a 768-wide model is ~100 MB of floats).
        from transformers import Mamba2ForCausalLM

        with torch.device("meta"):
            model = Mamba2ForCausalLM(self.hf_config())
        return sum(p.numel() for p in model.parameters())

