"""DeepSpeech 1 and DeepSpeech 2 as the reference gradient-inversion victims instantiated them.

Sources: takakhoo/10s_FL_DeepSpeech @2e67c65 `src/models/ds1.py`, `src/models/ds2.py` (Myrtle's networks);
see /work/shared/reference/gradient-inversion.md §2.1-2.2.

DS1 (`DeepSpeech1`, ~122.7M parameters at preset "reference"): 26 MFCCs with 9 context frames either side
stacked inside the model (494 inputs), fc1 494→2048, fc2 2048→2048, fc3 2048→4096, a bidirectional LSTM of
2048 per direction (outputs concatenated, 4096; forget-gate slice of bias_ih = 1, of bias_hh = 0), fc4
4096→2048, out 2048→29 with bias. `activation="none"` is what the reference attack ran (a constructor bug
left `use_relu=False`); "clipped_relu" is Myrtle's design, min(max(x, 0), 20) after fc1-fc4.

DS2 (`DeepSpeech2`, ~41.7M parameters): a 257-bin spectrogram through Conv2d(1→32, kernel 41 freq × 11 time,
stride (2, 2), padding (0, 10)), BatchNorm2d, Hardtanh(0, 20), Conv2d(32→32, 21 × 11, stride (2, 1)),
BatchNorm2d, Hardtanh(0, 20); frequency 257 → 109 → 45, × 32 channels = 1440 features; five bidirectional
GRUs of 800 without bias, directions summed, BatchNorm1d on the input of GRUs 2-5 (the reference's
`batch_norm=i > 0`); BatchNorm1d(800) and Linear 800→29 without bias. Output frames
T' = floor((T + 9) / 2) + 1 - 10 (conv 1: floor((T + 2·10 - 11) / 2) + 1; conv 2: - 10).

Both: `model(features [T, B, F], lengths [B]) -> (log_probs [T', B, 29], out_lengths [B])`, time-major like
the reference. Padded batches give each utterance exactly the outputs it gets alone: input padding is zeroed
(so the edge context of DS1 and conv 1's time padding see zeros either way), RNNs run on packed sequences,
and in train mode BatchNorm takes its statistics over valid frames only (`masked_batch_norm`; the
statistics are still over the whole batch, as any BatchNorm's are). Output frames t >= out_lengths[b] are
padding with unspecified values.

Dropout (`model.dropout`, default 0, training forward passes only): DS1 on the outputs of fc1-fc4 (before
the activation; Dang's dense layers 1, 2, 3, 5), DS2 on the outputs of both convolutions (before BatchNorm)
and on the output layer's input. A training setting, not part of the architecture (neither in the config nor
in exports): `task.dropout` sets it for federated training, and the attack's client
(`fedctl.attacks.case.client_dropout`) sets it with its own generator around the forward pass whose gradient
it shares, so that both measure the same mechanism.

cuDNN pitfalls (why `double_backward_safe` exists; both only on CUDA):
1. cuDNN RNNs have no double backward ("Double backwards is not supported for CuDNN RNNs", pytorch#5261,
   #25315). Matching the output layer's gradient only needs a first-order backward through the RNN, but
   matching any RNN or earlier gradient, or differentiating ||∇θL||² w.r.t. the input, needs it.
2. cuDNN RNN backward refuses eval mode ("cudnn RNN backward can only be called in training mode",
   pytorch#15788, #5878): the reference attack therefore ran in train() mode, which for DS2 means batch
   statistics and updated running stats on every step.
Disabling cuDNN (`with double_backward_safe(model):`) switches RNNs to PyTorch's native kernels, which
support both, at a cost in speed (convolutions lose cuDNN too inside the block). On CPU it does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fedctl.errors import FedctlError
from fedctl.tasks.asr.features import DS1_CONTEXT, DS1_NUM_CEP, DS2_BINS, stack_context
from fedctl.tasks.asr.text import NUM_CLASSES

ACTIVATIONS = ("none", "clipped_relu")


@dataclass(frozen=True)
class DS1Config:
    n_mfcc: int = DS1_NUM_CEP  # MFCCs per frame
    n_context: int = DS1_CONTEXT  # frames each side stacked onto each frame (reference: 9, whatever its flag said)
    n_hidden: int = 2048  # fc1, fc2, fc4 width and LSTM units per direction; fc3 is 2 × this
    activation: str = "none"  # "none" as the reference attack ran it, or "clipped_relu" (Myrtle's design)
    relu_clip: float = 20.0  # clip of "clipped_relu"
    forget_gate_bias: float = 1.0  # initial LSTM forget-gate bias (bias_ih slice; bias_hh slice = 0)
    num_classes: int = NUM_CLASSES


@dataclass(frozen=True)
class DS2Config:
    n_freq: int = DS2_BINS  # spectrogram bins (257 for a 512-point FFT)
    conv_channels: int = 32
    n_hidden: int = 800  # GRU units per direction (directions are summed)
    rnn_layers: int = 5
    relu_clip: float = 20.0  # Hardtanh(0, relu_clip) after each conv
    num_classes: int = NUM_CLASSES


# tiny: tests (a forward + backward well under a second on CPU); small: minutes of CPU training;
# reference: the sizes the reference attack used.
PRESETS: dict[str, dict[str, dict]] = {
    "ds1": {"tiny": {"n_hidden": 16}, "small": {"n_hidden": 256}, "reference": {}},
    "ds2": {
        "tiny": {"conv_channels": 2, "n_hidden": 16, "rnn_layers": 2},
        "small": {"conv_channels": 8, "n_hidden": 128, "rnn_layers": 3},
        "reference": {},
    },
}


def time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[steps, B] bool, True where frame t < lengths[b]."""
    return torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :]


def masked_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`bn(x)` for x [N, C, ...] whose statistics (in train mode) come from positions where `mask` is True.

    `mask` is bool, broadcastable to x, of size 1 along C. Eval mode and unpadded batches use `bn` itself;
    otherwise this computes what `bn` would on the valid positions alone (biased variance to normalize,
    unbiased for the running estimate, the same momentum rule).
    """
    if not (bn.training or bn.running_mean is None) or bool(mask.all()):
        return bn(x)
    dims = [d for d in range(x.dim()) if d != 1]
    weight = mask.to(x.dtype)
    count = weight.expand_as(x).sum(dim=dims)  # [C], equal across channels
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = (x * weight).sum(dim=dims) / count
    centered = x - mean.view(shape)
    var = (centered.square() * weight).sum(dim=dims) / count
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = count[0]
            bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=factor)
    y = centered * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def _packed_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run `rnn` on time-major padded `x` [T, B, H] so that padding frames never reach a valid output."""
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    out, _ = rnn(packed)
    out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    return out


def _check_inputs(name: str, features: torch.Tensor, lengths: torch.Tensor, n_features: int) -> torch.Tensor:
    if features.dim() != 3 or features.shape[-1] != n_features:
        raise FedctlError(f"{name} expects features [T, B, {n_features}], got {tuple(features.shape)}",
                          "features are time-major: stack utterances with data.collate")
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=features.device).reshape(-1)
    if lengths.numel() != features.shape[1] or int(lengths.max()) > features.shape[0] or int(lengths.min()) < 1:
        raise FedctlError(f"{name}: lengths {lengths.tolist()} do not fit features of {features.shape[0]} frames "
                          f"× {features.shape[1]} utterances", "one length per utterance, each 1..T")
    return lengths


class DeepSpeech(nn.Module):
    """What DS1 and DS2 share: their dropout (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = 0.0  # probability, in training forward passes only
        self.dropout_generator: torch.Generator | None = None  # None: torch's RNG (the engine seeds it per client)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout
        if p <= 0 or not self.training:  # draws nothing: with dropout 0 a forward is what it was without it
            return x
        gen = self.dropout_generator
        keep = torch.rand(x.shape, generator=gen, device=x.device if gen is None else gen.device) >= p
        return x * keep.to(x.device, x.dtype) / (1 - p)


class DeepSpeech1(DeepSpeech):
    """DS1 with its context layer inside (see module docstring)."""

    def __init__(self, config: DS1Config = DS1Config()):
        super().__init__()
        self.config = config
        h = config.n_hidden
        self.fc1 = nn.Linear(config.n_mfcc * (2 * config.n_context + 1), h)
        self.fc2 = nn.Linear(h, h)
        self.fc3 = nn.Linear(h, 2 * h)
        self.bi_lstm = nn.LSTM(input_size=2 * h, hidden_size=h, bidirectional=True)
        with torch.no_grad():  # forget gate (PyTorch gate order i, f, g, o): as the reference initializes it
            for suffix in ("", "_reverse"):
                getattr(self.bi_lstm, f"bias_ih_l0{suffix}")[h : 2 * h].fill_(config.forget_gate_bias)
                getattr(self.bi_lstm, f"bias_hh_l0{suffix}")[h : 2 * h].fill_(0.0)
        self.fc4 = nn.Linear(2 * h, h)
        self.out = nn.Linear(h, config.num_classes)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.activation == "none" else F.hardtanh(x, 0.0, self.config.relu_clip)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames per utterance: DS1 keeps every input frame."""
        return torch.as_tensor(lengths, dtype=torch.long).clone()

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MFCC frames [T, B, 26] and frames per utterance [B] -> (log_probs [T, B, 29], lengths [B])."""
        lengths = _check_inputs("DS1", features, lengths, self.config.n_mfcc)
        valid = time_mask(lengths, features.shape[0])[..., None]
        x = stack_context(torch.where(valid, features, torch.zeros_like(features)), self.config.n_context)
        h = self._act(self._drop(self.fc1(x)))
        h = self._act(self._drop(self.fc2(h)))
        h = self._act(self._drop(self.fc3(h)))
        h = _packed_rnn(self.bi_lstm, h, lengths)
        h = self._act(self._drop(self.fc4(h)))
        return self.out(h).log_softmax(dim=-1), lengths


class DeepSpeech2(DeepSpeech):
    """DS2 with the Myrtle conv front end, bias-free bidirectional GRUs and BatchNorm (see module docstring)."""

    def __init__(self, config: DS2Config = DS2Config()):
        super().__init__()
        self.config = config
        c, h = config.conv_channels, config.n_hidden
        self.conv1 = nn.Conv2d(1, c, kernel_size=(41, 11), stride=(2, 2), padding=(0, 10))
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=(21, 11), stride=(2, 1), padding=(0, 0))
        self.bn2 = nn.BatchNorm2d(c)
        freq = ((config.n_freq - 41) // 2 + 1 - 21) // 2 + 1
        if freq < 1:
            raise FedctlError(f"DS2 n_freq={config.n_freq} is too few bins for its 41 × 21 frequency kernels",
                              "use n_freq >= 103 (the reference uses 257)")
        self.rnns = nn.ModuleList(
            nn.GRU(input_size=freq * c if i == 0 else h, hidden_size=h, bidirectional=True, bias=False)
            for i in range(config.rnn_layers)
        )
        self.rnn_norms = nn.ModuleList(nn.BatchNorm1d(h) for _ in range(config.rnn_layers - 1))  # before GRU 2..L
        self.fc_norm = nn.BatchNorm1d(h)
        self.fc = nn.Linear(h, config.num_classes, bias=False)

    @staticmethod
    def conv1_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(lengths, dtype=torch.long) + 2 * 10 - 11) // 2 + 1

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames per utterance: floor((T + 9) / 2) + 1 - 10 (<= 0 for inputs under 11 frames)."""
        return self.conv1_lengths(lengths) - 10

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectrogram frames [T, B, 257] and frames per utterance [B] -> (log_probs [T', B, 29], T' [B])."""
        lengths = _check_inputs("DS2", features, lengths, self.config.n_freq)
        out_lengths = self.output_lengths(lengths)
        if int(out_lengths.min()) < 1:
            raise FedctlError(f"DS2 inputs of {lengths.tolist()} frames give {out_lengths.tolist()} output frames",
                              "DS2 needs at least 11 input frames (200 ms); leave shorter utterances out")
        clip = self.config.relu_clip
        valid = time_mask(lengths, features.shape[0])[..., None]
        x = torch.where(valid, features, torch.zeros_like(features)).permute(1, 2, 0).unsqueeze(1)  # [B, 1, F, T]
        x = self._drop(self.conv1(x))
        x = F.hardtanh(masked_batch_norm(self.bn1, x, _conv_mask(self.conv1_lengths(lengths), x.shape[-1])), 0.0, clip)
        x = self._drop(self.conv2(x))
        x = F.hardtanh(masked_batch_norm(self.bn2, x, _conv_mask(out_lengths, x.shape[-1])), 0.0, clip)
        batch, channels, freq, steps = x.shape
        x = x.reshape(batch, channels * freq, steps).permute(2, 0, 1)  # [T', B, C·F], channel-major as the reference
        rows = time_mask(out_lengths, steps).reshape(-1, 1)  # [T'·B, 1] for BatchNorm1d over all frames
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x = masked_batch_norm(self.rnn_norms[i - 1], x.reshape(steps * batch, -1), rows).view(steps, batch, -1)
            x = _packed_rnn(rnn, x, out_lengths)
            x = x.view(steps, batch, 2, -1).sum(dim=2)  # forward + backward direction
        x = masked_batch_norm(self.fc_norm, x.reshape(steps * batch, -1), rows).view(steps, batch, -1)
        return self.fc(self._drop(x)).log_softmax(dim=-1), out_lengths


def _conv_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, 1, 1, steps] mask of valid time steps of a conv feature map."""
    return time_mask(lengths.to(torch.long), steps).T[:, None, None, :]


ARCHITECTURES = {"ds1": (DS1Config, DeepSpeech1), "ds2": (DS2Config, DeepSpeech2)}


def build_asr_model(arch: str, preset: str = "tiny", **overrides) -> DeepSpeech1 | DeepSpeech2:
    """A randomly initialized DS1 or DS2 of `preset` ("tiny", "small", "reference") with `overrides` applied.

    Unknown keys, wrong types and bad values are errors naming what is valid. Build under
    `with torch.device("meta"):` to count parameters without allocating them.
    """
    if arch not in ARCHITECTURES:
        raise FedctlError(f"unknown ASR architecture {arch!r}", f"use one of: {', '.join(ARCHITECTURES)}")
    if preset not in PRESETS[arch]:
        raise FedctlError(f"unknown {arch} preset {preset!r}", f"use one of: {', '.join(PRESETS[arch])}")
    config_cls, model_cls = ARCHITECTURES[arch]
    defaults = asdict(config_cls())
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise FedctlError(f"unknown {arch} model setting(s): {', '.join(unknown)}",
                          f"valid keys: {', '.join(f.name for f in fields(config_cls))}")
    for key, value in overrides.items():
        want = type(defaults[key])
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise FedctlError(f"{arch} model setting {key} must be {want.__name__}, got {value!r}",
                              f"e.g. {key}={defaults[key]!r}")
    values = {**defaults, **PRESETS[arch][preset], **overrides}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "forget_gate_bias" and value <= 0:
            raise FedctlError(f"{arch} model setting {key} must be positive, got {value}", f"e.g. {key}={defaults[key]!r}")
    if values.get("activation", "none") not in ACTIVATIONS:
        raise FedctlError(f"ds1 activation {values['activation']!r} is not supported", f"use one of: {', '.join(ACTIVATIONS)}")
    return model_cls(config_cls(**{k: (float(v) if isinstance(defaults[k], float) else v) for k, v in values.items()}))


def output_lengths(arch: str, lengths: torch.Tensor) -> torch.Tensor:
    """Output frames of `arch` for input frames `lengths` (DS1: unchanged; DS2: floor((T+9)/2) + 1 - 10)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if arch == "ds1":
        return lengths.clone()
    if arch == "ds2":
        return (lengths + 9) // 2 + 1 - 10
    raise FedctlError(f"unknown ASR architecture {arch!r}", f"use one of: {', '.join(ARCHITECTURES)}")


@contextlib.contextmanager
def double_backward_safe(model: nn.Module) -> Iterator[None]:
    """Disable cuDNN while the block runs if `model` is on CUDA, so RNN double backward (and backward in
    eval mode) work; restores the previous setting afterwards. A no-op for CPU models."""
    if not any(p.is_cuda for p in model.parameters()):
        yield
        return
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before
