"""The `task` section of `fedctl train distill`: teacher, recipe, student sizes, loss, data, local training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag
from fedctl.tasks.hubert.config import SPEECH_FLAGS


@dataclass
class DistillConfig:
    # ---- teacher and recipe
    teacher: str | None = None  # RUN/final/hf of `fedctl train hubert` (HubertModel dir; kd also needs its head)
    recipe: str = "distilhubert"  # distilhubert (Chang et al. 2022) or kd (smaller HuBERT on soft labels)
    init: str | None = None  # warm start: a HF folder, a final/ export, a run or a fedctl checkpoint of the same architecture

    # ---- distilhubert: teacher CNN + first student_layers transformer layers, one head per target layer
    student_layers: int = 2  # transformer layers, initialised from the teacher's first ones
    target_layers: str = ""  # teacher layers to predict, comma-separated; "" = thirds (4,8,12 for 12 layers)
    cos_weight: float = 1.0  # λ in L1 + λ·(−log σ(cos))

    # ---- kd: a smaller HuBERT (conv extractor initialised from the teacher) trained on masked frames
    kd_hidden_size: int = 384  # student width
    kd_num_layers: int = 6  # student transformer layers
    kd_num_heads: int = 6  # must divide kd_hidden_size
    kd_ffn_size: int = 1536  # student feed-forward width
    kd_final_dim: int | None = None  # None: the teacher's final_dim
    temperature: float = 2.0  # T: softmax temperature of teacher and student (loss scaled by T²)
    alpha: float = 0.5  # weight of the soft (teacher) loss; 1 − alpha on the k-means labels
    mask_prob: float = 0.8  # fairseq HuBERT span masking, as in `train hubert`
    mask_length: int = 10  # span length in frames
    mask_min_spans: int = 2  # at least this many spans per utterance

    # ---- data (as in `train hubert`; distilhubert needs audio only, kd needs the teacher's labels)
    parts: str | None = None  # partition folder; None with labels=None: the synth demo corpus
    labels: str | None = None  # k-means labels of that partition (kd: same cluster count as the teacher)
    label_tolerance: int = 2  # frames a label sequence may differ from the audio's frame count
    max_sample_seconds: float = 15.625  # longer utterances are randomly cropped
    demo_speakers: int = 8  # synth demo corpus (used without parts/labels)
    demo_utterances: int = 12  # utterances per demo speaker
    demo_clusters: int = 50  # must equal the teacher's cluster count for kd

    # ---- local training (per client, per round)
    max_batch_seconds: float = 24.0  # audio per micro-batch (DistilHuBERT: 24 utterances ≈ 300 s on a GPU)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4  # AdamW peak learning rate (DistilHuBERT: 2e-4)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    adam_beta2: float = 0.98  # AdamW beta2
    warmup_steps: int = 0  # linear warmup over the global step (DistilHuBERT: 7% of 200k)
    local_updates: int = 8  # optimizer steps per client per round; 0: local_epochs instead
    local_epochs: float = 1.0  # passes over the client's batches per round when local_updates = 0
    grad_clip: float = 10.0  # max global gradient norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16
    gradient_checkpointing: bool = False  # student only; true saves memory, costs ~30% speed
    attn_implementation: str = "sdpa"  # sdpa or eager (teacher and student)

    # ---- evaluation and client statistics
    eval_batches: int = 0  # cap on validation batches per evaluation (0 = all)
    stat_seconds: float = 2.0  # crop of held-out utterances for FedEntropy/FedFisher (kd only)


# ---- the workload command: `fedctl train distill` (shared flags: fedctl/cli/options.py)
COMMAND = "distill"
SUMMARY = "Federated distillation of a HuBERT teacher into a student; only the student travels."
EXAMPLES = (
    "fedctl train distill --teacher runs/hubert-tiny/final/hf --config distill_distilhubert",
    "fedctl train distill --teacher runs/hubert/final/hf --recipe kd --parts parts/ --labels labels/",
    "fedctl train distill --teacher runs/hubert/final/hf --recipe distilhubert --rounds 50 --strategy fedavgm",
)
FLAGS = (
    Flag("task.teacher", "--teacher", "Teacher: RUN/final/hf of `fedctl train hubert` (a HubertModel dir)."),
    Flag("task.recipe", "--recipe", "distilhubert (2-layer student, layer-prediction heads) or kd (smaller HuBERT, soft labels)."),
    Flag("task.init", "--init", "Warm start the student: a HF folder, a final/ export, a run or a checkpoint of the same architecture."),
    *SPEECH_FLAGS,
)
