"""The `task` section of a `glue` run: base model, GLUE task and data, LoRA, aggregation space, local training."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GlueConfig:
    # ---- model
    model: str | None = None  # a local model dir or a HF id in the local cache; None: demo MiniLM (no glue_task) else roberta-base
    finetune: str = "lora"  # lora (adapters + head travel, base frozen) or full (every weight trains and travels)

    # ---- data
    glue_task: str | None = None  # cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli; None: the built-in sentiment demo
    data_dir: str | None = None  # local GLUE files (TSV layout or csv/json/parquet); None: the datasets cache
    shards: str | None = None  # folder of client_<k>.json from `fedctl data shard glue`; None: stratified IID in memory
    demo_train_examples: int = 900  # size of the demo's training split (fixed seed: runs stay comparable)
    demo_val_examples: int = 300  # size of the demo's validation split
    max_length: int = 128  # tokens per example (pair tasks: both texts together); batches are trimmed to their longest
    max_train_examples: int = 0  # cap on each client's training examples (its first N); 0 = all
    max_eval_examples: int = 0  # cap on validation examples (the first N of each split); 0 = all

    # ---- LoRA (peft)
    lora_r: int = 8  # rank every client trains at
    lora_alpha: float = 8.0  # scale s = lora_alpha / lora_r
    lora_dropout: float = 0.0  # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])  # Linear layers that get adapters
    init_adapter: str | None = None  # warm start: a peft adapter dir (e.g. a previous run's final/hf)
    merge: str = "svd"  # LoRA aggregation space: svd (weighted mean of ΔW=s·B·A, refactored) or naive (average A and B)
    svd_rank: int | None = None  # rank of the fused adapter (≤ lora_r); None: lora_r (exact for one client)
    save_clients: bool = False  # also save every client's adapter every round (adapters/round_NNN/clients/)

    # ---- local training (per client, per round)
    lr: float | None = None  # AdamW learning rate; None: 5e-3 LoRA on the demo MiniLM, 5e-4 LoRA, 2e-5 full fine-tuning
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    batch_size: int = 16  # examples per optimizer step
    eval_batch_size: int = 64  # examples per evaluation forward pass
    local_epochs: float = 1.0  # passes over the client's shard per round (when local_updates = 0)
    local_updates: int = 0  # optimizer steps per client per round; 0: use local_epochs
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
