"""The learnable parts: s3prl's Featurizer (softmax-weighted sum of hidden layers) and the SUPERB heads.

- PR: Linear(D → proj) then Linear(proj → phones + blank) per frame (s3prl `ctc/libriphone.yaml`), CTC.
- SID, KS: Linear(D → proj) per frame, mean over the real frames, Linear(proj → classes) (s3prl UtteranceLevel).
- ASR: Linear(D → proj), bidirectional LSTM layers, Linear(2·hidden → 29 characters) (s3prl `asr`), CTC.

Frames travel *packed*: the real frames of a batch's utterances concatenated in batch order ([L, N, D] hidden
states, N = Σ lengths) with their per-utterance `lengths`, never zero-padded to the longest. The per-frame maps
(layer sum, projections) then cost the real frames only (padding was about a quarter of the frames of a demo
batch); frame-level outputs are padded once, at the end, for CTC.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Featurizer(nn.Module):
    """Σ softmax(w)_l · h_l over L hidden states; w starts at zero (uniform 1/L, as s3prl). With `layer` set,
    that one hidden state only (no weights). `layer_norm`: each layer normalised (no affine) before the sum."""

    def __init__(self, num_layers: int, layer: int | None = None, layer_norm: bool = False):
        super().__init__()
        self.layer, self.layer_norm = layer, layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers)) if layer is None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """packed hidden states [L, N, D] → [N, D]."""
        if self.layer is not None:
            h = hidden[self.layer]
            return F.layer_norm(h, h.shape[-1:]) if self.layer_norm else h
        if self.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        w = torch.softmax(self.weights, dim=0).to(hidden.dtype)
        return (w @ hidden.reshape(hidden.shape[0], -1)).view(hidden.shape[1:])  # a GEMV, no permuted copy

    def layer_weights(self) -> list[float]:
        if self.weights is None:
            return []
        return torch.softmax(self.weights.detach().float(), dim=0).tolist()


def segment_ids(lengths: torch.Tensor) -> torch.Tensor:
    """[N]: the batch row of each packed frame (0 repeated lengths[0] times, then 1, ...)."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def pad_frames(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Packed frames [N, C] → zero-padded [B, max(lengths), C]."""
    return nn.utils.rnn.pad_sequence(list(x.split(lengths.tolist())), batch_first=True)


def mean_pool(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean of packed frames x [N, C] → [B, C] (an empty utterance gives zeros)."""
    sums = x.new_zeros(len(lengths), x.shape[1]).index_add(0, segment_ids(lengths), x)
    return sums / lengths.clamp_min(1)[:, None].to(x.dtype)


class FrameHead(nn.Module):
    """PR: per-frame log-probabilities [B, T, V] of packed frames [N, D] (two linear maps, as s3prl's libriphone
    config)."""

    def __init__(self, dim: int, proj: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.out = nn.Linear(proj, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return pad_frames(self.out(self.proj(x)).log_softmax(-1), lengths)


class UtteranceHead(nn.Module):
    """SID, KS: logits [B, C] of the per-utterance mean of Linear(D → proj) over packed frames [N, D]."""

    def __init__(self, dim: int, proj: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.out = nn.Linear(proj, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.out(mean_pool(self.proj(x), lengths))


class RnnHead(nn.Module):
    """ASR: per-frame log-probabilities [B, T, V] from a bidirectional LSTM over Linear(D → proj) of packed frames."""

    def __init__(self, dim: int, proj: int, hidden: int, layers: int, dropout: float, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.lstm = nn.LSTM(proj, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        padded = pad_frames(self.proj(x), lengths)
        if padded.shape[1] == 0:  # only empty utterances: the LSTM reads one zero frame each (lengths clamp to 1)
            padded = padded.new_zeros(len(lengths), 1, padded.shape[2])
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths.cpu().clamp_min(1), batch_first=True,
                                                   enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=padded.shape[1])
        return self.out(y).log_softmax(-1)


class ProbeModel(nn.Module):
    """Featurizer + head over precomputed hidden states (frozen mode: the upstream is not part of the model)."""

    def __init__(self, featurizer: Featurizer, head: nn.Module):
        super().__init__()
        self.featurizer, self.head = featurizer, head

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """hidden: packed [L, N, D] (N = Σ lengths)."""
        return self.head(self.featurizer(hidden), lengths)


class FinetuneModel(nn.Module):
    """Upstream + featurizer + head trained together (fine-tune mode). The conv feature encoder is frozen (no
    gradient, never shared: fairseq's feature_grad_mult 0); `frozen_transformer` additionally stops the gradient
    into the rest of the upstream (the head warm-up of fairseq's freeze_finetune_updates)."""

    def __init__(self, upstream: nn.Module, featurizer: Featurizer, head: nn.Module):
        super().__init__()
        self.upstream, self.featurizer, self.head = upstream, featurizer, head
        self.upstream.requires_grad_(True)
        self.upstream.feature_extractor.requires_grad_(False)
        if hasattr(self.upstream, "masked_spec_embed"):  # unused without masking: no gradient would reach it
            self.upstream.masked_spec_embed.requires_grad_(False)
        self.frozen_transformer = False

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """audio [B, samples] zero-padded (no attention mask: HuBERT Base's group norm expects none), lengths in frames."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_transformer):
            out = self.upstream(audio, output_hidden_states=True)
            hidden = torch.stack(out.hidden_states)  # [L, B, T, D]
            keep = torch.arange(hidden.shape[2], device=hidden.device)[None, :] < lengths[:, None]
            hidden = hidden[:, keep]  # packed [L, N, D], as the frozen path's cache gives
        return self.head(self.featurizer(hidden), lengths)
