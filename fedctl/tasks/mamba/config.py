"""The `mamba` section of a run's config: model preset and overrides, text data, local training, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag


@dataclass
class MambaConfig:
    # ---- model (a preset, then optional per-field overrides; None keeps the preset's value)
    preset: str = "tiny"  # tiny (CPU demo), pure_ssm_1_layer, pure_ssm_2_layer, pure_ssm_4_layer (width 768)
    init: str | None = None  # warm start: a HF folder, a final/ export, a run or a fedctl checkpoint of the same architecture
    hidden_size: int | None = None  # model width d_model
    num_layers: int | None = None  # Mamba2 blocks
    state_size: int | None = None  # SSM state dimension N per head
    head_dim: int | None = None  # must divide expand*hidden_size; heads = expand*hidden_size/head_dim
    expand: int | None = None  # inner width = expand * hidden_size
    n_groups: int | None = None  # B/C groups; must divide the number of heads
    chunk_size: int | None = None  # scan chunk length; seq_len below it is padded up (costs time, not accuracy)

    # ---- data
    data: str | None = None  # None: built-in demo corpus; a text file, a directory, or "wikitext-2" (local HF cache only)
    val_fraction: float = 0.1  # share of lines held out for validation when the data has no validation split
    demo_sentences: int = 6000  # size of the built-in demo corpus (fixed seed, so runs stay comparable)
    tokenizer: str | None = None  # tokenizer.json or a HF tokenizer directory; None: train byte-level BPE on train text
    vocab_size: int = 2048  # vocabulary of the trained tokenizer (ignored with tokenizer=...)
    seq_len: int = 128  # tokens per training sequence (each block holds seq_len+1 tokens: inputs and next-token labels)
    shard: str = "contiguous"  # how training blocks go to clients: contiguous (client k: k-th slice) or interleaved (i mod K)

    # ---- local training (per client, per round)
    batch_size: int = 8  # sequences per optimizer step
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    warmup_steps: int = 0  # linear warmup over the global step count (round-1)*steps_per_round + step
    local_updates: int = 8  # optimizer steps per client per round; 0: use local_epochs instead
    local_epochs: float = 1.0  # passes over the client's shard per round when local_updates = 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    # ---- evaluation and samples
    eval_batches: int = 16  # cap on validation batches per evaluation (0 = the whole validation set)
    sample_tokens: int = 40  # length of the generated sample printed at the end
    sample_prompt: str = "the"  # prompt of that sample


# ---- the workload command: `fedctl train mamba` (shared flags: fedctl/cli/options.py)
COMMAND = "mamba"
SUMMARY = "Federated Mamba2 language model (transformers Mamba2ForCausalLM)."
EXAMPLES = (
    "fedctl train mamba",
    "fedctl train mamba --config pure_ssm_2_layer --data wikitext-2 --rounds 50",
    "fedctl train mamba --strategy fedavgm --set federation.strategy_args.server_momentum=0.9",
    "fedctl train mamba --out runs/mamba --resume --rounds 20",
)
FLAGS = (
    Flag("task.init", "--init", "Warm start: a HF folder, a final/ export, a run or a checkpoint of the same architecture."),
    Flag("task.data", "--data", "Text file, directory (wiki.train.raw / train.txt …) or 'wikitext-2'. Default: demo corpus."),
    Flag("task.preset", "--preset", "tiny, pure_ssm_1_layer, pure_ssm_2_layer, pure_ssm_4_layer."),
    Flag("task.local_updates", "--local-updates", "Optimizer steps per client per round.", int),
    Flag("task.lr", "--lr", "Client learning rate.", float),
    Flag("task.batch_size", "--batch-size", "Sequences per step.", int),
    Flag("task.seq_len", "--seq-len", "Tokens per sequence.", int),
    Flag("task.tokenizer", "--tokenizer", "tokenizer.json or a HF tokenizer dir."),
)
