"""The learnable parts: s3prl's Featurizer (softmax-weighted sum of hidden layers) and the SUPERB heads.

- PR: Linear(D → proj) then Linear(proj → phones + blank) per frame (s3prl `ctc/libriphone.yaml`), CTC.
- SID, KS: Linear(D → proj) per frame, mean over the real frames, Linear(proj → classes) (s3prl UtteranceLevel).
- ASR: Linear(D → proj), bidirectional LSTM layers, Linear(2·hidden → 29 characters) (s3prl `asr`), CTC.
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
        """hidden [B, L, T, D] → [B, T, D]."""
        if self.layer is not None:
            h = hidden[:, self.layer]
            return F.layer_norm(h, h.shape[-1:]) if self.layer_norm else h
        if self.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        w = torch.softmax(self.weights, dim=0).to(hidden.dtype)
        return torch.einsum("l,bltd->btd", w, hidden)

    def layer_weights(self) -> list[float]:
        if self.weights is None:
            return []
        return torch.softmax(self.weights.detach().float(), dim=0).tolist()


def mean_pool(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T, C] over each row's first `lengths[b]` frames (padding never enters)."""
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    return (x * mask[..., None]).sum(1) / lengths.clamp_min(1)[:, None].to(x.dtype)


class FrameHead(nn.Module):
    """PR: per-frame log-probabilities [B, T, V] (two linear maps, as s3prl's libriphone config)."""

    def __init__(self, dim: int, proj: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.out = nn.Linear(proj, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(x)).log_softmax(-1)


class UtteranceHead(nn.Module):
    """SID, KS: logits [B, C] of the mean over real frames of Linear(D → proj)."""

    def __init__(self, dim: int, proj: int, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.out = nn.Linear(proj, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.out(mean_pool(self.proj(x), lengths))


class RnnHead(nn.Module):
    """ASR: per-frame log-probabilities [B, T, V] from a bidirectional LSTM over Linear(D → proj)."""

    def __init__(self, dim: int, proj: int, hidden: int, layers: int, dropout: float, classes: int):
        super().__init__()
        self.proj = nn.Linear(dim, proj)
        self.lstm = nn.LSTM(proj, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.proj(x), lengths.cpu().clamp_min(1), batch_first=True,
                                                   enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(y).log_softmax(-1)


class ProbeModel(nn.Module):
    """Featurizer + head over precomputed hidden states (frozen mode: the upstream is not part of the model)."""

    def __init__(self, featurizer: Featurizer, head: nn.Module):
        super().__init__()
        self.featurizer, self.head = featurizer, head

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
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
            hidden = torch.stack(out.hidden_states, dim=1)
        return self.head(self.featurizer(hidden), lengths)
