"""HuBERT for masked-prediction pretraining: transformers' HubertModel plus fairseq's pretraining head.

transformers ships HubertModel but no pretraining head, so the head is hand-written after fairseq's
`HubertModel` (Hsu et al. 2021): `final_proj` (hidden → final_dim) and `label_embs_concat` (one embedding
per cluster); logits = cosine(projection, embedding) / logit_temp; cross-entropy on masked frames
(+ an optional unmasked-frame term) and an L2 penalty on the conv features.

`encode()` runs HubertModel's own submodules in HubertModel.forward's order, with two differences:
masking uses `torch.where` instead of boolean index assignment (so it runs under torch.func.vmap for
FedFisher), and it returns the conv features' penalty, which HubertModel.forward does not expose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedctl.data.speech.features import HUBERT_HOP, WINDOW
from fedctl.utils.io import atomic_dir, write_json

IGNORE = -100
CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)  # HuBERT's 7-layer extractor: 400-sample receptive field, 320-sample hop
CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)


def hubert_config(arch: dict, attn_implementation: str = "sdpa"):
    """A transformers HubertConfig for the resolved architecture (post-LN, group-norm extractor = HuBERT Base)."""
    from transformers import HubertConfig

    return HubertConfig(
        hidden_size=arch["hidden_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        intermediate_size=arch["ffn_size"],
        conv_dim=(arch["conv_dim"],) * len(CONV_KERNELS),
        conv_kernel=CONV_KERNELS,
        conv_stride=CONV_STRIDES,
        num_conv_pos_embeddings=arch["conv_pos"],
        num_conv_pos_embedding_groups=arch["conv_pos_groups"],
        hidden_dropout=arch["dropout"],
        attention_dropout=arch["dropout"],
        activation_dropout=0.0,
        feat_proj_dropout=arch["dropout"],
        layerdrop=arch["layerdrop"],
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        mask_time_prob=0.05,  # HF's fine-tuning SpecAugment default; > 0 so the mask embedding exists
        attn_implementation=attn_implementation,
    )


class _GradMultiply(torch.autograd.Function):
    """fairseq's GradMultiply: identity forward, gradient scaled by `scale` (feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


@dataclass
class Encoded:
    last_hidden_state: torch.Tensor  # [B, T, hidden]
    feature_pen: torch.Tensor  # scalar: mean squared conv feature (fairseq features_pen)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # [0] = input to layer 1, [i] = output of layer i


def encode(hubert: nn.Module, audio: torch.Tensor, mask: torch.Tensor | None = None,
           output_hidden_states: bool = False, feature_grad_mult: float = 1.0) -> Encoded:
    """HubertModel's forward on `audio` [B, samples] with masked frames `mask` [B, T] replaced by the mask embedding."""
    feats = hubert.feature_extractor(audio).transpose(1, 2)
    pen = feats.float().pow(2).mean()
    if feature_grad_mult != 1.0 and hubert.training:  # training only: autograd.Function does not run under vmap
        feats = _GradMultiply.apply(feats, feature_grad_mult)
    x = hubert.feature_projection(feats)
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), hubert.masked_spec_embed.to(x.dtype), x)
    if not output_hidden_states:
        return Encoded(hubert.encoder(x).last_hidden_state, pen)
    # the encoder's own loop, keeping every layer's output (HubertEncoder records them only via HubertModel)
    enc = hubert.encoder
    x = enc.dropout(enc.layer_norm(x + enc.pos_conv_embed(x)))
    states = [x]
    for layer in enc.layers:
        if not (enc.training and enc.config.layerdrop > 0 and torch.rand([]) < enc.config.layerdrop):
            x = layer(x)
        states.append(x)
    return Encoded(x, pen, tuple(states))


class HubertPretrainModel(nn.Module):
    """`hubert` (transformers HubertModel) + fairseq's pretraining head (`final_proj`, `label_embs_concat`)."""

    def __init__(self, config, num_classes: int, final_dim: int, logit_temp: float = 0.1, feature_grad_mult: float = 1.0):
        from transformers import HubertModel

        super().__init__()
        self.hubert = HubertModel(config)
        self.final_proj = nn.Linear(config.hidden_size, final_dim)
        self.label_embs_concat = nn.Parameter(torch.empty(num_classes, final_dim).uniform_())  # fairseq: uniform_
        self.logit_temp = logit_temp
        self.feature_grad_mult = feature_grad_mult

    @property
    def num_classes(self) -> int:
        return self.label_embs_concat.shape[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden] → [B, T, clusters]: cosine(final_proj(x), label embedding) / logit_temp, in fp32."""
        proj = F.normalize(self.final_proj(hidden).float(), dim=-1, eps=1e-8)
        embs = F.normalize(self.label_embs_concat.float(), dim=-1, eps=1e-8)
        return proj @ embs.t() / self.logit_temp

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, T, clusters], feature penalty) for `audio` [B, samples] with `mask` [B, T] applied."""
        enc = encode(self.hubert, audio, mask, feature_grad_mult=self.feature_grad_mult)
        return self.logits(enc.last_hidden_state), enc.feature_pen


def num_frames(num_samples: int) -> int:
    """HuBERT frames for `num_samples` samples (20 ms hop, 25 ms receptive field)."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HUBERT_HOP + 1


def samples_for_frames(frames: int) -> int:
    """The fewest samples that give exactly `frames` frames."""
    return (frames - 1) * HUBERT_HOP + WINDOW


def span_mask(batch: int, frames: int, mask_prob: float, mask_length: int, min_spans: int, seed: int) -> torch.Tensor:
    """fairseq's span mask [batch, frames] (bool) via transformers' `_compute_mask_indices`, reproducibly.

    That function draws from NumPy's global RNG; we seed it for the call and restore it afterwards.
    """
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    state = np.random.get_state()
    try:
        np.random.seed(seed % (2**32))
        length = min(mask_length, frames)
        mask = _compute_mask_indices((batch, frames), mask_prob, length, attention_mask=None, min_masks=min_spans)
    finally:
        np.random.set_state(state)
    return torch.from_numpy(mask)


def masked_prediction_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean cross-entropy and accuracy on masked and unmasked frames (tensors; `*_n` are frame counts)."""
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    correct = (logits.argmax(-1) == labels).float()
    out = {}
    for name, sel in (("masked", mask), ("unmasked", ~mask)):
        n = sel.sum()
        denom = n.clamp_min(1)
        out[f"{name}_loss"] = (ce * sel).sum() / denom
        out[f"{name}_acc"] = (correct * sel).sum() / denom
        out[f"{name}_n"] = n
    return out


HEAD_FILE = "pretrain_head.safetensors"
HEAD_META = "fedctl_hubert.json"


def export_pretrained(model: HubertPretrainModel, out_dir: Path, label_rate: int = 50) -> Path:
    """HubertModel.save_pretrained into `out_dir`, plus the pretraining head (safetensors) and its sizes (json)."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_dir(out_dir) as tmp:
            model.hubert.save_pretrained(tmp)
            head = {"final_proj.weight": model.final_proj.weight, "final_proj.bias": model.final_proj.bias,
                    "label_embs_concat": model.label_embs_concat}
            save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp / HEAD_FILE))
            write_json(tmp / HEAD_META, {"num_classes": model.num_classes, "final_dim": model.final_proj.out_features,
                                         "logit_temp": model.logit_temp, "label_rate": label_rate})
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out_dir
