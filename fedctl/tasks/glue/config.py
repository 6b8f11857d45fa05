"""The `task` section of a `glue` run: base model, GLUE task and data, LoRA, aggregation space, local training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag


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
    max_eval_examples: int = 0  # cap on validation examples (the first N of each split, and of each client's); 0 = all
    client_val_fraction: float = 0.0  # share of each client's shard held out of its training for client evaluation (--eval-clients); 0: clients are evaluated on their training shard

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
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    batch_size: int = 16  # examples per optimizer step
    eval_batch_size: int = 64  # examples per evaluation forward pass
    local_epochs: float = 1.0  # passes over the client's shard per round (when local_updates = 0)
    local_updates: int = 0  # optimizer steps per client per round; 0: use local_epochs
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


# ---- the workload command: `fedctl train lora` (shared flags: fedctl/cli/options.py)
COMMAND = "lora"
SUMMARY = "Federated LoRA on a GLUE task: adapters + head travel, the base stays frozen; svd or naive merging."
EXAMPLES = (
    "fedctl train lora   (the offline demo: MiniLM on generated sentiment data, 3 clients)",
    "fedctl data shard glue --task sst2 --clients 5 --mode iid --seed 123 --out shards/",
    "fedctl train lora --model roberta-base --task sst2 --shards shards/ --rounds 5 --local-epochs 1 "
    "--lora-r 8 --lora-alpha 8 --lora-dropout 0 --target-modules query value --merge svd --svd-rank 8",
    "fedctl train lora --task mrpc --data-dir glue_data/ --merge naive --strategy fedprox --eval-clients",
    "fedctl train lora --config lora_roberta_sst2 --init-adapter runs/prev/final/hf --save-clients",
)
FLAGS = (
    Flag("task.model", "--model", "Base model: a local folder or a HF id in the cache. Default: demo MiniLM, or roberta-base with --task."),
    Flag("task.glue_task", "--task", "GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli. Default: the demo sentiment task."),
    Flag("task.data_dir", "--data-dir", "Local GLUE files (TSV layout, csv/json/parquet). Default: the datasets cache."),
    Flag("task.shards", "--shards", "Folder from `fedctl data shard glue` (sets --clients). Default: stratified IID."),
    Flag("task.local_epochs", "--local-epochs", "Passes over each client's shard per round.", float),
    Flag("task.local_updates", "--local-updates", "Optimizer steps per client per round (overrides --local-epochs).", int),
    Flag("task.lora_r", "--lora-r", "LoRA rank the clients train at.", int),
    Flag("task.lora_alpha", "--lora-alpha", "LoRA alpha (scale = alpha / r).", float),
    Flag("task.lora_dropout", "--lora-dropout", "Dropout on the LoRA input.", float),
    Flag("task.target_modules", "--target-modules", "Linear layers to adapt: query value (several values after one flag).", list),
    Flag("task.merge", "--merge", "LoRA aggregation space: svd (mean of ΔW, refactored) or naive (average A and B)."),
    Flag("task.svd_rank", "--svd-rank", "Rank of the fused adapter with --merge svd (≤ --lora-r).", int),
    Flag("task.init_adapter", "--init-adapter", "Warm start from a peft adapter folder."),
    Flag("task.lr", "--lr", "Client AdamW learning rate.", float),
    Flag("task.batch_size", "--batch-size", "Training examples per step.", int),
    Flag("task.eval_batch_size", "--eval-batch-size", "Examples per evaluation forward pass.", int),
    Flag("task.max_length", "--max-length", "Tokens per example.", int),
    Flag("federation.eval_every", "--eval-each-round", "Evaluate the global model after every round.", bool, const=1),
    Flag("federation.eval_clients", "--eval-clients", "Also evaluate clients: the global model and each trained client's "
         "own adapter (personalised) on the client's data; --set task.client_val_fraction=0.2 holds that data out of "
         "training.", bool, const=True),
    Flag("task.save_clients", "--save-clients", "Keep every client's adapter of every round.", bool, const=True),
)


def command_flags(values: dict[str, Any], *, config_given: bool, resume: bool) -> dict[str, Any]:
    """`train lora` fine-tunes with LoRA; without a config, model or task it is the offline demo (3 clients,
    3 rounds reach ≥ 80% validation accuracy in about a minute on 2 cores); --shards sets --clients."""
    values = dict(values)
    if not resume:
        values["task.finetune"] = "lora"
        demo = not config_given and values.get("task.model") is None and values.get("task.glue_task") is None
        if demo:
            if values.get("federation.clients") is None and values.get("task.shards") is None:
                values["federation.clients"] = 3
            if values.get("federation.rounds") is None:
                values["federation.rounds"] = 3
        if values.get("task.shards") is not None and values.get("federation.clients") is None:
            from fedctl.data.glue.shard import count_shards

            values["federation.clients"] = count_shards(values["task.shards"])
    return values
