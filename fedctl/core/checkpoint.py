"""Checkpoints: one file per round, written atomically, readable with torch.load(weights_only=True).

A checkpoint is a dict of tensors and plain Python values:
  format, round, task, strategy, model (global state), strategy_state, client_state (None, or {"dir":
  "client_state_NNN", "clients": [ids]}: the per-client state snapshot beside it, fedctl.core.client_state),
  rng (torch, python), config (resolved, nested dict), metrics (history of metrics.jsonl records).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from fedctl.errors import FedctlError
from fedctl.utils.io import torch_load, torch_save

FORMAT = "fedctl-checkpoint/1"
REQUIRED = ("format", "round", "task", "model", "config")
_NAME = re.compile(r"round_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round_{server_round:03d}.pt"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate((3, tuple(state["python"]), None))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    return torch_save({"format": FORMAT, **payload}, path)


_ALTERED = "the file was not written by `fedctl train` or was altered; use another checkpoint of the run"


def checked_field(obj: dict, key: str, kind: type, path: Path, default: Any) -> Any:
    """obj[key] if it has the expected type (default when absent); a crafted or damaged checkpoint is a FedctlError."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FedctlError(f"checkpoint {path}: field '{key}' is a {type(value).__name__}, expected a {kind.__name__}",
                          _ALTERED)
    return value


def check_tensors(tensors: dict, path: Path, what: str) -> None:
    """Every entry of a state dict is a tensor under a string name."""
    for name, value in tensors.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise FedctlError(f"checkpoint {path}: {what} entry {name!r} is a {type(value).__name__}, expected a tensor",
                              _ALTERED)


def checked_round(ckpt: dict, path: Path) -> int | None:
    """The checkpoint's round as an int (a one-element integer tensor counts); anything else is a FedctlError."""
    value = ckpt.get("round")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise FedctlError(f"checkpoint {path}: field 'round' = {value!r:.60} is not a round number", _ALTERED)
    return value


def check_checkpoint(ckpt: dict, path: Path) -> None:
    """The field types every reader of a fedctl checkpoint relies on (one check for `fedctl eval`, `inspect ckpt`,
    `--resume`, warm starts and the attack's victim): model a dict of tensors, config / strategy_state dicts,
    metrics a list, round a whole number."""
    check_tensors(checked_field(ckpt, "model", dict, path, {}), path, "model")
    for key in ("config", "strategy_state"):
        checked_field(ckpt, key, dict, path, {})
    checked_field(ckpt, "metrics", list, path, [])
    checked_round(ckpt, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a fedctl checkpoint; a truncated, foreign or altered file is a FedctlError."""
    path = Path(path)
    ckpt = torch_load(path, what="checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FedctlError(
            f"{path} is not a fedctl checkpoint (no '{FORMAT}' format marker)",
            "pass a checkpoints/round_NNN.pt file written by `fedctl train`",
        )
    missing = [k for k in REQUIRED if ckpt.get(k) is None]
    if missing:
        raise FedctlError(f"checkpoint {path} lacks {', '.join(missing)}", "use another checkpoint of the run")
    check_checkpoint(ckpt, path)
    ckpt["round"] = checked_round(ckpt, path)
    return ckpt


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FedctlError(
            f"no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}",
            "check --out points at an existing run, or start it without --resume",
        )
    return ckpts[-1]
