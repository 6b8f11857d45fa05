"""Teacher loading and the two students.

- distilhubert (Chang et al. 2022, "DistilHuBERT"): the teacher's conv extractor and feature projection, its
  first `student_layers` transformer layers, and one linear prediction head per target teacher layer; loss
  per head = L1 + λ·(−log σ(cos(pred, target))), averaged over heads. transformers has no DistilHuBERT, so
  the student is a HubertModel with fewer layers plus a hand-written head (as in s3prl's distiller).
- kd: a smaller HubertModel + fairseq pretraining head (`HubertPretrainModel`), its conv extractor copied
  from the teacher, trained on masked frames against the teacher's tempered distribution and the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedctl.errors import FedctlError
from fedctl.tasks.hubert.model import HEAD_FILE, HEAD_META, HubertPretrainModel, encode

TEACHER_HINT = "pass --teacher RUN/final/hf from `fedctl train hubert` (a folder with a HubertModel config.json)"


def load_teacher(path: str | Path, attn_implementation: str = "sdpa", need_head: bool = False):
    """(HubertModel, pretraining head or None) from a `final/hf` folder; refuses anything that is not HuBERT."""
    from transformers import HubertModel

    path = Path(path).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FedctlError(f"teacher {path} is not a model folder (no config.json)", TEACHER_HINT)
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise FedctlError(f"teacher {config_file} is unreadable ({exc})", TEACHER_HINT) from exc
    if model_type != "hubert":
        raise FedctlError(f"teacher {path} is a '{model_type}' model, not a HuBERT model", TEACHER_HINT)
    try:
        hubert = HubertModel.from_pretrained(str(path), local_files_only=True, attn_implementation=attn_implementation)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise FedctlError(f"teacher {path} does not load as HubertModel ({type(exc).__name__}: {first})", TEACHER_HINT) from exc
    head = None
    if (path / HEAD_FILE).is_file() and (path / HEAD_META).is_file():
        from safetensors.torch import load_file

        meta = json.loads((path / HEAD_META).read_text(encoding="utf-8"))
        head = HubertPretrainModel.__new__(HubertPretrainModel)
        nn.Module.__init__(head)
        head.hubert = hubert
        head.final_proj = nn.Linear(hubert.config.hidden_size, meta["final_dim"])
        head.label_embs_concat = nn.Parameter(torch.empty(meta["num_classes"], meta["final_dim"]))
        head.logit_temp, head.feature_grad_mult = float(meta["logit_temp"]), 1.0
        head.load_state_dict({f"hubert.{k}": v for k, v in hubert.state_dict().items()} | load_file(str(path / HEAD_FILE)))
    elif need_head:
        raise FedctlError(f"teacher {path} has no pretraining head ({HEAD_FILE}): kd needs the teacher's cluster predictions",
                          "use a teacher exported by `fedctl train hubert`, or --recipe distilhubert (hidden states only)")
    hubert.eval().requires_grad_(False)
    return hubert, head


def default_target_layers(num_layers: int) -> list[int]:
    """Thirds of the teacher's depth: 4, 8, 12 for HuBERT Base."""
    return sorted({max(1, round(num_layers * k / 3)) for k in (1, 2, 3)})


def parse_target_layers(text: str, num_layers: int) -> list[int]:
    if not text.strip():
        return default_target_layers(num_layers)
    try:
        layers = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise FedctlError(f"task.target_layers = {text!r} is not a list of layer numbers", "e.g. --set task.target_layers=4,8,12") from None
    bad = [n for n in layers if not 1 <= n <= num_layers]
    if bad or not layers:
        raise FedctlError(f"task.target_layers {text!r}: the teacher has layers 1..{num_layers}",
                          f"choose among 1..{num_layers} (default: {','.join(map(str, default_target_layers(num_layers)))})")
    return layers


class DistilHubertStudent(nn.Module):
    """HubertModel with few layers + a linear head predicting each target teacher layer's hidden states."""

    def __init__(self, config, teacher_hidden: int, target_layers: list[int]):
        from transformers import HubertModel

        super().__init__()
        self.hubert = HubertModel(config)
        self.target_layers = list(target_layers)
        self.pred_heads = nn.Linear(config.hidden_size, teacher_hidden * len(target_layers))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, samples] → predictions [B, T, targets, teacher hidden]."""
        hidden = encode(self.hubert, audio).last_hidden_state
        pred = self.pred_heads(hidden)
        return pred.view(*pred.shape[:2], len(self.target_layers), -1)


def distilhubert_config(teacher_config, student_layers: int, attn_implementation: str):
    config = teacher_config.__class__(**{**teacher_config.to_dict(), "num_hidden_layers": student_layers,
                                         "layerdrop": 0.0, "attn_implementation": attn_implementation})
    return config


def build_distilhubert(teacher: nn.Module, student_layers: int, target_layers: list[int], attn_implementation: str = "sdpa"):
    """The DistilHuBERT student: teacher's CNN, projection, positional conv and first layers copied; new heads."""
    config = distilhubert_config(teacher.config, student_layers, attn_implementation)
    student = DistilHubertStudent(config, teacher.config.hidden_size, target_layers)
    keep = {k: v for k, v in teacher.state_dict().items()
            if not k.startswith("encoder.layers.") or int(k.split(".")[2]) < student_layers}
    missing, unexpected = student.hubert.load_state_dict(keep, strict=False)
    if missing or unexpected:
        raise FedctlError(f"student init from the teacher failed (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "the teacher is not a standard HubertModel")
    return student


def kd_config(teacher_config, hidden: int, layers: int, heads: int, ffn: int, attn_implementation: str):
    import math

    if hidden % heads:
        raise FedctlError(f"task.kd_num_heads = {heads} does not divide kd_hidden_size = {hidden}", "e.g. 384 / 6")
    groups = math.gcd(teacher_config.num_conv_pos_embedding_groups, hidden)
    return teacher_config.__class__(**{**teacher_config.to_dict(), "hidden_size": hidden, "num_hidden_layers": layers,
                                       "num_attention_heads": heads, "intermediate_size": ffn,
                                       "num_conv_pos_embedding_groups": groups, "layerdrop": 0.0,
                                       "attn_implementation": attn_implementation})


def build_kd_student(teacher: nn.Module, num_classes: int, final_dim: int, logit_temp: float, hidden: int, layers: int,
                     heads: int, ffn: int, attn_implementation: str = "sdpa") -> HubertPretrainModel:
    """A smaller HuBERT with the teacher's conv extractor (copied) and a fresh transformer and head."""
    config = kd_config(teacher.config, hidden, layers, heads, ffn, attn_implementation)
    student = HubertPretrainModel(config, num_classes, final_dim, logit_temp)
    student.hubert.feature_extractor.load_state_dict(teacher.feature_extractor.state_dict())
    return student


def distilhubert_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float) -> dict[str, torch.Tensor]:
    """DistilHuBERT: L1 + λ·(−log σ(cos)) over [B, T, heads, D], each term averaged (so over heads too)."""
    l1 = (pred.float() - target.float()).abs().mean()
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    sim = -F.logsigmoid(cos).mean()
    return {"loss": l1 + cos_weight * sim, "l1": l1, "cos": cos.mean()}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
            temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE(student, labels), both over masked frames."""
    s, t = student_logits[mask].float(), teacher_logits[mask].float()
    y = labels[mask]
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature**2
    ce = F.cross_entropy(s, y) if y.numel() else s.sum() * 0
    return {"loss": alpha * kl + (1 - alpha) * ce, "kl": kl, "ce": ce,
            "masked_acc": (s.argmax(-1) == y).float().mean(), "agreement": (s.argmax(-1) == t.argmax(-1)).float().mean()}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
