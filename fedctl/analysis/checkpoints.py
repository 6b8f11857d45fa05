"""Summaries of saved artefacts for `fedctl inspect`: checkpoints (.pt) and safetensors files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedctl.core.checkpoint import FORMAT, check_checkpoint, check_tensors, checked_field, checked_round
from fedctl.core.rundir import RunDir
from fedctl.errors import FedctlError
from fedctl.utils.io import torch_load


def _tensor_rows(tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    rows = []
    for name, t in tensors.items():
        norm = float(t.detach().double().norm()) if (t.is_floating_point() and t.numel()) else None
        rows.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                     "numel": t.numel(), "norm": norm})
    return rows


def _scalar(value: Any) -> Any:
    """A value fit for a table cell: numbers and strings as they are, anything else as short text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return repr(value)[:60]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FedctlError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0][:120]})",
            "the file may be truncated; re-export it or use another file",
        ) from None


def summarize_checkpoint(path: str | Path) -> dict[str, Any]:
    """Round, task, strategy, last metrics, parameter count/bytes and a per-tensor table."""
    path = Path(path)
    if not path.exists():
        raise FedctlError(f"file not found: {path}", "give a checkpoints/round_NNN.pt or a .safetensors file")
    if path.is_dir():
        found = sorted(path.glob("*.safetensors")) or RunDir(path).list_checkpoints()
        if not found:
            raise FedctlError(f"{path} is a directory without checkpoints or .safetensors files", "pass a file")
        path = found[-1]
    info: dict[str, Any] = {"path": str(path)}
    if path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)
        info.update(kind="safetensors", metadata=metadata)
    else:
        obj = torch_load(path, what="checkpoint")
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            check_checkpoint(obj, path)  # the same field checks as every other reader of checkpoints
            tensors = checked_field(obj, "model", dict, path, {})
            metrics = [m for m in checked_field(obj, "metrics", list, path, []) if isinstance(m, dict)]
            fits = [m for m in metrics if m.get("type") == "fit"]
            evals = [m for m in metrics if m.get("type") == "eval" and m.get("scope") == "global"]
            cfg = checked_field(obj, "config", dict, path, {})
            fed = cfg.get("federation") if isinstance(cfg.get("federation"), dict) else {}
            strategy_state = checked_field(obj, "strategy_state", dict, path, {})
            info.update(
                kind="fedctl checkpoint",
                round=checked_round(obj, path),
                task=_scalar(obj.get("task")),
                strategy=_scalar(obj.get("strategy")),
                strategy_state=sorted(str(k) for k in strategy_state),
                rounds_planned=_scalar(fed.get("rounds")),
                clients=_scalar(fed.get("clients")),
                last_fit={str(k): _scalar(v) for k, v in (fits[-1] if fits else {}).items() if k != "type"},
                last_eval={str(k): _scalar(v) for k, v in (evals[-1] if evals else {}).items()
                           if k not in ("type", "scope")},
                config=cfg,
            )
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            tensors = obj
            check_tensors(tensors, path, "state dict")
            info.update(kind="state dict")
        else:
            raise FedctlError(
                f"{path} holds neither a fedctl checkpoint nor a state dict of tensors",
                "pass a checkpoints/round_NNN.pt, a saved state_dict, or a .safetensors file",
            )
    rows = _tensor_rows(tensors)
    info["num_tensors"] = len(rows)
    info["num_parameters"] = sum(r["numel"] for r in rows)
    info["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    info["tensors"] = rows
    return info
