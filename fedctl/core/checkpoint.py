"""Checkpoints: one file per round, written atomically, readable with torch.load(weights_only=True).

A checkpoint is a dict of tensors and plain Python values:
  format, round, task, strategy, model (global state), strategy_state, client_optimizer_states,
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a fedctl checkpoint; a truncated or foreign file is a FedctlError."""
    path = Path(path)
    ckpt = torch_load(path, what="checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FedctlError(
            f"{path} is not a fedctl checkpoint (no '{FORMAT}' format marker)",
            "pass a checkpoints/round_NNN.pt file written by `fedctl train`",
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise FedctlError(f"checkpoint {path} lacks {', '.join(missing)}", "use another checkpoint of the run")
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
