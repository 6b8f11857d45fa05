"""Read and write peft LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`).

Key naming follows `peft.utils.save_and_load`: a saved file holds `base_model.model.<module>.lora_A.weight`
(the adapter name is stripped), a live model's `state_dict()` holds `<module>.lora_A.<adapter>.weight`.
Both spellings are understood; everything that is not a LoRA factor (a `modules_to_save` head, biases)
is an "extra" tensor that merging averages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedctl.errors import FedctlError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
_PEFT_PREFIX = "base_model.model."

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
# LoRA variants whose tensors are not a plain ΔW = s·B·A: merging them by the math here would be wrong.
_UNSUPPORTED = re.compile(r"\.(lora_magnitude_vector|lora_embedding_[AB]|lora_B\.(?:[^.]+\.)?bias)\b")


@dataclass
class LoraFactors:
    """One client's LoRA tensors, split by module: `lora[module] = (B, A)` and the other tensors."""

    name: str  # for error messages: the adapter directory, or "client 3"
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    keys: dict[str, tuple[str, str]]  # module -> (B key, A key) as spelled in the state dict
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def split_state_dict(state_dict: Mapping[str, torch.Tensor], name: str) -> LoraFactors:
    """Group a peft adapter state dict into per-module (B, A) pairs and extra tensors; validate shapes."""
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    extra: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _UNSUPPORTED.search(key):
            raise FedctlError(
                f"adapter {name}: tensor {key} belongs to a LoRA variant (DoRA, embedding LoRA, lora_bias) "
                "that fedctl cannot merge",
                "train the clients with plain LoRA on Linear layers (use_dora=False, lora_bias=False)",
            )
        match = _LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["side"]] = (key, tensor)
        else:
            extra[key] = tensor
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    keys: dict[str, tuple[str, str]] = {}
    for module, sides in pairs.items():
        if set(sides) != {"A", "B"}:
            missing = "lora_B" if "B" not in sides else "lora_A"
            raise FedctlError(
                f"adapter {name}: module {module} has no {missing} tensor",
                "the adapter file is incomplete; re-save it with PeftModel.save_pretrained",
            )
        (kb, b), (ka, a) = sides["B"], sides["A"]
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
            raise FedctlError(
                f"adapter {name}: module {module} has lora_B {tuple(b.shape)} and lora_A {tuple(a.shape)}, "
                "which do not form a product B·A",
                "only LoRA on Linear layers is supported; re-save the adapter with peft",
            )
        lora[module] = (b, a)
        keys[module] = (kb, ka)
    if not lora:
        raise FedctlError(
            f"adapter {name} holds no LoRA tensors (no *.lora_A.weight / *.lora_B.weight keys)",
            "pass a peft LoRA adapter directory, as written by PeftModel.save_pretrained",
        )
    for key, tensor in [
        *((k, t) for m in lora for k, t in zip(keys[m], lora[m], strict=True)),
        *extra.items(),
    ]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FedctlError(
                f"adapter {name}: tensor {key} contains NaN or Inf",
                "that client's training diverged; drop the adapter or retrain it with a lower learning rate",
            )
    return LoraFactors(name=name, lora=lora, keys=keys, extra=extra)


def module_scale(config: Mapping[str, Any], module: str, r: int) -> float:
    """The LoRA output scale s for `module` (rank `r`): lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.

    `alpha_pattern` is matched the way peft matches it (`peft.utils.other.get_pattern_key`), on the module
    path inside the base model.
    """
    alpha = config.get("lora_alpha", 8)
    alpha_pattern = config.get("alpha_pattern") or {}
    if alpha_pattern:
        from peft.utils.other import get_pattern_key  # importing peft costs ~3 s: only when needed

        path = module.removeprefix(_PEFT_PREFIX)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), path), alpha)
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_adapter_config(config: Mapping[str, Any], where: str | Path) -> None:
    """The fields merging reads must have peft's types: r a positive int, lora_alpha a finite number > 0,
    use_rslora a bool, rank_pattern / alpha_pattern mappings of module patterns to such numbers."""
    fix = "edit the field or re-save the adapter with PeftModel.save_pretrained"
    r = config.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise FedctlError(f"{where}: r = {r!r} is not a positive integer", fix)
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha) or alpha <= 0:
        raise FedctlError(f"{where}: lora_alpha = {alpha!r} is not a positive number", fix)
    if not isinstance(config.get("use_rslora", False), bool):
        raise FedctlError(f"{where}: use_rslora = {config.get('use_rslora')!r} is not true or false", fix)
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(key) or {}
        if not isinstance(pattern, Mapping) or not all(
            isinstance(k, str) and _is_number(v) and v > 0 for k, v in pattern.items()
        ):
            raise FedctlError(f"{where}: {key} must map module names to positive numbers, got {pattern!r:.80}", fix)


def read_adapter_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load (config, state dict) from a peft adapter directory; any defect is a FedctlError naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise FedctlError(
            f"adapter directory not found: {path}", "pass directories written by save_pretrained"
        )
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FedctlError(f"adapter {path}: {CONFIG_NAME} is missing", "is this a peft adapter directory?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise FedctlError(
            f"adapter {path}: {CONFIG_NAME} is not valid JSON ({exc})", "re-save the adapter with peft"
        ) from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise FedctlError(
            f"adapter {path} is not a LoRA adapter (peft_type={kind})", "merge LoRA adapters only"
        )
    if config.get("use_dora"):
        raise FedctlError(f"adapter {path} is a DoRA adapter", "fedctl merges plain LoRA (use_dora=False)")
    check_adapter_config(config, config_path)
    weights = path / WEIGHTS_NAME
    try:
        if weights.is_file():
            from safetensors.torch import load_file

            state_dict = load_file(weights)
        elif (path / LEGACY_WEIGHTS_NAME).is_file():
            from fedctl.utils.io import torch_load

            state_dict = torch_load(path / LEGACY_WEIGHTS_NAME, what="adapter weights")  # weights_only=True
        else:
            raise FedctlError(
                f"adapter {path}: {WEIGHTS_NAME} is missing",
                "re-save the adapter with PeftModel.save_pretrained",
            )
    except FedctlError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or corrupt files
        raise FedctlError(
            f"adapter {path}: {WEIGHTS_NAME} is unreadable or truncated ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})",
            "re-save or re-download that adapter",
        ) from None
    return config, dict(state_dict)


def write_adapter_dir(
    path: str | Path, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Write config + safetensors into an (already created, usually temporary) directory."""
    from safetensors.torch import save_file

    path = Path(path)
    (path / CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    save_file(
        {k: v.contiguous() for k, v in state_dict.items()},
        str(path / WEIGHTS_NAME),
        metadata={"format": "pt"},
    )
