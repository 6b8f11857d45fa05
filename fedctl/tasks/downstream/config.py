"""The `task` section of `fedctl train downstream`: upstream, probe, mode, head sizes, data, cache, local training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag

PROBES = ("pr", "sid", "asr", "ks")
MODES = ("frozen", "finetune")


@dataclass
class DownstreamConfig:
    # ---- upstream (the encoder under evaluation)
    upstream: str = "mfcc"  # a HF HubertModel/Wav2Vec2Model folder (e.g. RUN/final/hf), a hubert/distill run or its
                            # checkpoint (round_NNN.pt, best.pt), or a feature baseline: mfcc (39-dim) | fbank (80-dim)
    random_init: bool = False  # the upstream's architecture, randomly initialised (seeded by run.seed): the baseline
    mode: str = "frozen"  # frozen (SUPERB: cached hidden states, weighted layer sum + head) or finetune (+ upstream)
    layer: int | None = None  # one hidden state (0 = pre-transformer) instead of the learned weighted sum (s3prl -l)
    layer_norm: bool = False  # per-layer layer norm (no affine) before the sum (s3prl --upstream_feature_normalize)

    # ---- probe and head (SUPERB sizes: proj_dim 256; asr proj 1024, 2 x 1024 BiLSTM, dropout 0.2)
    probe: str = "pr"  # pr (phones, CTC, PER) | sid (speakers, accuracy) | asr (characters, CTC, CER/WER) | ks (keywords)
    proj_dim: int = 256  # pr/sid/ks: Linear(D -> proj_dim) before the output layer; asr: the BiLSTM's input size
    lstm_hidden: int = 1024  # asr: units per direction
    lstm_layers: int = 2  # asr: bidirectional layers
    lstm_dropout: float = 0.2  # asr: dropout between LSTM layers (training only)

    # ---- fine-tuning (mode finetune: upstream + head, the conv feature encoder frozen, as fairseq/s3prl)
    freeze_steps: int = 0  # the transformer stays frozen for the first N global optimizer steps (head warm-up)

    # ---- data
    corpus: str | None = None  # LibriSpeech-layout tree, split across the clients here (as `data partition`)
    parts: str | None = None  # or a folder from `fedctl data partition librispeech`
    keywords: str | None = None  # ks: a Speech Commands-layout folder (one folder per word, _background_noise_)
    keyword_list: str = "yes,no,up,down,left,right,on,off,stop,go"  # ks classes besides _silence_ and _unknown_
    partition_by: str = "speaker"  # --corpus / --keywords: speaker (each speaker on one client) or iid
    val_fraction: float = 0.2  # held-out share (sid: of each speaker's utterances; --corpus: of each client's)
    demo_speakers: int = 8  # synth demo corpus (without corpus/parts)
    demo_utterances: int = 12  # utterances per demo speaker
    cache_dir: str | None = None  # hidden-state cache; None: $FEDCTL_CACHE_DIR or ~/.cache/fedctl/downstream

    # ---- local training (per client, per round)
    batch_size: int = 8  # utterances per micro-batch (zero-padded to the longest)
    lr: float = 1e-3  # AdamW learning rate (s3prl ships 1e-2 for PR, 1e-4 elsewhere; its authors sweep per model)
    weight_decay: float = 0.0
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    warmup_steps: int = 0  # linear warmup over the global step
    local_updates: int = 8  # optimizer steps per client per round; 0: local_epochs instead
    local_epochs: float = 1.0  # passes over the client's utterances per round when local_updates = 0
    grad_clip: float = 1.0  # max global gradient norm (s3prl: 1); 0 disables clipping

    # ---- evaluation
    eval_batch_size: int = 16  # utterances per evaluation batch
    eval_batches: int = 0  # cap on validation batches per evaluation (0 = all)
    eval_samples: int = 3  # ctc probes: decoded hypotheses logged next to their references at each evaluation


# ---- the workload command: `fedctl train downstream` (shared flags: fedctl/cli/options.py)
COMMAND = "downstream"
SUMMARY = "Downstream evaluation of a speech encoder: SUPERB probes (PR, SID, ASR, KS) on frozen features, or CTC fine-tuning."
EXAMPLES = (
    "fedctl train downstream --config downstream_tiny",
    "fedctl train downstream --upstream runs/hubert-tiny/final/hf --probe pr",
    "fedctl train downstream --upstream runs/hubert-tiny/final/hf --probe pr --random-init",
    "fedctl train downstream --upstream fbank --probe sid --rounds 20",
    "fedctl train downstream --upstream runs/hubert-tiny --probe asr --mode finetune --freeze-steps 50",
    "fedctl train central --task downstream --config downstream_tiny",
)
FLAGS = (
    Flag("task.upstream", "--upstream", "HF HubertModel/Wav2Vec2Model folder, a hubert/distill run or checkpoint, mfcc or fbank."),
    Flag("task.probe", "--probe", "pr, sid, asr or ks."),
    Flag("task.mode", "--mode", "frozen (SUPERB, cached) or finetune (upstream + head, CNN frozen)."),
    Flag("task.random_init", "--random-init", "The upstream's architecture, randomly initialised (seeded).", bool, const=True),
    Flag("task.corpus", "--corpus", "LibriSpeech-layout tree, split across the clients. Default: synth demo."),
    Flag("task.parts", "--parts", "Partition folder (`fedctl data partition librispeech`)."),
    Flag("task.keywords", "--keywords", "ks: a Speech Commands-layout folder."),
    Flag("task.freeze_steps", "--freeze-steps", "finetune: global steps with the transformer frozen (head warm-up).", int),
    Flag("task.local_updates", "--local-updates", "Optimizer steps per client per round.", int),
    Flag("task.lr", "--lr", "Client AdamW learning rate.", float),
    Flag("task.batch_size", "--batch-size", "Utterances per step.", int),
    Flag("federation.eval_clients", "--eval-clients", "Also evaluate on each client's held-out utterances.", bool),
)
