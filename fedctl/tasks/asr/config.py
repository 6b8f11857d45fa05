"""The `task` section of `fedctl train asr`: DeepSpeech architecture and size, speech data, local training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedctl.core.client import check_momentum, check_optimizer, check_scope
from fedctl.core.config import Flag, check_dropout


@dataclass
class AsrConfig:
    # ---- model (a preset, then optional per-field overrides; None keeps the preset's value)
    arch: str = "ds1"  # ds1 (MFCC + context, 3 Linear, BiLSTM, 2 Linear) or ds2 (2 conv, 5 BiGRU)
    preset: str = "tiny"  # tiny (tests), small (minutes on CPU), reference (the attacked models: 122.7M / 41.7M)
    activation: str | None = None  # ds1: none (as the reference attack ran it) or clipped_relu (DeepSpeech's design)
    n_hidden: int | None = None  # ds1: hidden width and LSTM units per direction; ds2: GRU units per direction
    rnn_layers: int | None = None  # ds2: bidirectional GRU layers (reference: 5)
    conv_channels: int | None = None  # ds2: channels of both convolutions (reference: 32)
    init: str | None = None  # initial weights: a fedctl checkpoint (.pt) or an `final/hf` export of the same arch

    # ---- data
    parts: str | None = None  # folder from `fedctl data partition` (by speaker); None: the synth demo
    min_dur: int = 0  # keep utterances of at least this many milliseconds
    max_dur: int | None = None  # ... and shorter than this (ms); None: no upper bound
    text_norm: str = "strict"  # transcripts to a-z ' and space: strict (anything else is an error), fold (accents
    # and case folded, punctuation to spaces, digits and other scripts removed), fold-spell-numbers (as fold,
    # numbers spelled in English with num2words first). The same mode is used by `fedctl attack --text-norm`.
    min_chars_per_second: float = 1.0  # leave out (and list) utterances with fewer transcript characters per
    # second of audio (read speech has 12-16; 0 disables). Empty transcripts are always left out and listed.
    skip_too_short: bool = True  # leave out (and list) utterances too short for their transcript; false: an error
    demo_speakers: int = 8  # synth demo corpus (used without parts)
    demo_utterances: int = 24  # utterances per demo speaker

    # ---- local training (per client, per round)
    batch_size: int = 8  # utterances per micro-batch (zero-padded to the longest)
    bucket_batches: int = 4  # length buckets: each shuffled pass over a client's utterances is cut into runs of
                             # this many micro-batches, each run sorted by duration (less padding); 0: none
    max_batch_seconds: float = 0.0  # cap on padded audio (utterances x longest, seconds) per forward pass: a
                                    # micro-batch over it runs as several passes, gradients summed (same step,
                                    # less memory; an utterance longer than the cap runs alone); 0: no cap
    lr: float = 1e-3  # client learning rate (peak, after warmup)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    optimizer: str = field(default="adamw", metadata={"check": check_optimizer})  # adamw, or sgd (L2 weight decay)
    momentum: float = field(default=0.0, metadata={"check": check_momentum})  # sgd: heavy-ball momentum; 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = field(default="all", metadata={"check": check_scope})  # all, or matrices (>= 2-D only)
    warmup_steps: int = 0  # linear warmup over the global step (round-1)*steps_per_round + step
    local_updates: int = 8  # optimizer steps per client per round; 0: local_epochs instead
    local_epochs: float = 1.0  # passes over the client's utterances per round when local_updates = 0
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: str = "fp32"  # fp32; fp64 (model and features in float64: exact attack reproduction, tests);
    # bf16 / fp16 (autocast; fp16 needs CUDA); auto (bf16/fp16 on CUDA, fp32 on CPU)
    dropout: float = field(default=0.0, metadata={"check": check_dropout})  # dropout in training forward passes, in [0, 1): ds1 after fc1-fc4, ds2 after both convs
                          # and on the output layer's input (where `fedctl attack --defense-dropout` puts it)

    # ---- evaluation
    eval_batch_size: int = 16  # utterances per evaluation forward pass
    eval_batches: int = 0  # cap on validation batches per evaluation (0 = all)
    eval_samples: int = 3  # validation utterances whose greedy decoding each evaluation logs beside its
                            # reference (metrics.jsonl `examples`, shown at the end of training); 0: none


# ---- the workload command: `fedctl train asr` (shared flags: fedctl/cli/options.py)
COMMAND = "asr"
SUMMARY = "Federated speech recognition: DeepSpeech 1 or 2 with CTC, greedy decoding, CER and WER."
EXAMPLES = (
    "fedctl train asr --config asr_ds1_tiny",
    "fedctl train asr --config asr_ds2_tiny --strategy fedadam",
    "fedctl train asr --model ds2 --preset small --parts parts/ --rounds 50",
    "fedctl train central --task asr --config asr_ds1_tiny",
)
FLAGS = (
    Flag("task.arch", "--model", "ds1 or ds2."),
    Flag("task.preset", "--preset", "tiny, small or reference."),
    Flag("task.parts", "--parts", "Partition folder (`fedctl data partition librispeech --by speaker`). Default: synth demo."),
    Flag("task.text_norm", "--text-norm", "Transcripts: strict, fold (accents/case folded, digits and other scripts "
         "removed) or fold-spell-numbers."),
    Flag("task.init", "--init", "Initial weights: a fedctl checkpoint or final/hf of the same architecture."),
    Flag("task.local_updates", "--local-updates", "Optimizer steps per client per round.", int),
    Flag("task.lr", "--lr", "Client AdamW learning rate.", float),
    Flag("task.batch_size", "--batch-size", "Utterances per step.", int),
    Flag("federation.eval_clients", "--eval-clients", "Also evaluate on each client's held-out utterances.", bool),
)
