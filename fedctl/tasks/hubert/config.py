"""The `task` section of `fedctl train hubert`: model preset and overrides, masking and loss, data, local training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag


@dataclass
class HubertPretrainConfig:
    # ---- model (a preset, then optional per-field overrides; None keeps the preset's value)
    preset: str = "base"  # base (HuBERT Base, 95M: 768 x 12 layers) or tiny (the CPU demo)
    init: str | None = None  # warm start: a HF folder, a final/ export, a run or a fedctl checkpoint of the same architecture
    hidden_size: int | None = None  # transformer width (encoder_embed_dim)
    num_layers: int | None = None  # transformer layers
    num_heads: int | None = None  # attention heads; must divide hidden_size
    ffn_size: int | None = None  # feed-forward width
    conv_dim: int | None = None  # channels of each of the 7 conv extractor layers (kernels and strides stay HuBERT's)
    conv_pos: int | None = None  # kernel of the convolutional positional embedding
    conv_pos_groups: int | None = None  # groups of that convolution; must divide hidden_size
    final_dim: int | None = None  # projection size the label embeddings live in (fairseq final_dim)
    dropout: float | None = None  # hidden and attention dropout
    layerdrop: float | None = None  # probability of skipping a transformer layer in training
    feature_grad_mult: float | None = None  # gradient scale into the conv extractor (fairseq: 0.1)

    # ---- masked prediction (fairseq HuBERT semantics)
    mask_prob: float = 0.8  # fraction of frames that start a span, × T / span length = spans per utterance
    mask_length: int = 10  # span length in frames (20 ms each)
    mask_min_spans: int = 2  # at least this many spans per utterance
    logit_temp: float = 0.1  # logits = cosine(projection, label embedding) / logit_temp
    unmasked_weight: float = 0.0  # weight of the unmasked-frame loss (fairseq pred_nomask_weight)
    feature_pen_weight: float = 10.0  # weight of the L2 penalty on conv features (fairseq loss_weights)

    # ---- data
    parts: str | None = None  # folder from `fedctl data partition librispeech`; None with labels=None: synth demo
    labels: str | None = None  # folder from `fedctl data kmeans` for the same partition
    clusters: int | None = None  # expected cluster count; None: take it from the labels (dict.km.txt)
    label_tolerance: int = 2  # frames a label sequence may differ from the audio's frame count (trimmed)
    max_sample_seconds: float = 15.625  # longer utterances are randomly cropped (fairseq max_sample_size 250k)
    demo_speakers: int = 8  # synth demo corpus (used without parts/labels)
    demo_utterances: int = 10  # utterances per demo speaker
    demo_clusters: int = 50  # k-means clusters of the demo labels (MFCC, global)

    # ---- local training (per client, per round)
    max_batch_seconds: float | None = None  # audio per micro-batch, in seconds (fairseq max_tokens / 16k)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    adam_beta2: float = 0.98  # fairseq HuBERT: betas (0.9, 0.98), eps 1e-6
    warmup_steps: int | None = None  # linear warmup over the global step (round-1)*steps_per_round + step
    local_updates: int | None = None  # optimizer steps per client per round; 0: local_epochs instead
    local_epochs: float = 1.0  # passes over the client's batches per round when local_updates = 0
    grad_clip: float = 10.0  # max global gradient norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; fp32 on CPU), fp32, bf16, fp16
    gradient_checkpointing: bool = False  # true saves activation memory, costs ~30% speed
    attn_implementation: str = "sdpa"  # sdpa (PyTorch fused attention) or eager

    # ---- evaluation and client statistics
    eval_batches: int = 0  # cap on validation batches per evaluation (0 = all)
    stat_seconds: float = 2.0  # crop of each held-out utterance used for FedEntropy/FedFisher statistics


# ---- the workload command: `fedctl train hubert` (shared flags: fedctl/cli/options.py)
COMMAND = "hubert"
SUMMARY = "Federated HuBERT pretraining: masked prediction of k-means labels (transformers HubertModel)."
EXAMPLES = (
    "fedctl train hubert --preset tiny",
    "fedctl train hubert --config hubert_tiny",
    "fedctl train hubert --parts parts/ --labels labels/ --rounds 100 --strategy fedadam",
    "fedctl train hubert --config hubert-base --parts parts/ --labels labels/ --eval-clients",
    "fedctl train hubert --out runs/hubert --resume --rounds 200",
)
SPEECH_FLAGS = (
    Flag("task.parts", "--parts", "Partition folder (`fedctl data partition librispeech`). Default: synth demo."),
    Flag("task.labels", "--labels", "k-means label folder (`fedctl data kmeans`) for the same partition."),
    Flag("task.local_updates", "--local-updates", "Optimizer steps per client per round.", int),
    Flag("task.lr", "--lr", "Client AdamW peak learning rate.", float),
    Flag("task.max_batch_seconds", "--max-batch-seconds", "Audio seconds per micro-batch.", float),
    Flag("federation.eval_clients", "--eval-clients", "Also evaluate on each client's held-out audio.", bool),
)
FLAGS = (
    Flag("task.preset", "--preset", "base (HuBERT Base, default) or tiny (CPU demo)."),
    Flag("task.init", "--init", "Warm start: a HF folder, a final/ export, a run or a checkpoint of the same architecture."),
    *SPEECH_FLAGS,
)
