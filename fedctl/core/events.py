"""What the engine reports while it runs. The CLI renders these; tests can collect them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunStarted:
    task: str
    strategy: str
    rounds: int
    start_round: int  # 1, or the round after the checkpoint a resumed run starts from
    num_clients: int
    num_parameters: int
    shared_bytes: int  # bytes of the tensors that travel, per client and direction
    run_dir: Path | None


@dataclass
class ClientFailed:
    server_round: int
    client_id: str
    reason: str


@dataclass
class ClientProgress:
    """Inside a round: client `client` of `clients` (1-based, in training order) finished optimizer step
    `step` of `steps`. Emitted after every local step; renderers throttle."""

    server_round: int
    client: int
    clients: int
    step: int
    steps: int


@dataclass
class RoundFinished:
    server_round: int
    metrics: dict[str, Any]  # clients, train_loss, val_loss, val_ppl, mb_down, mb_up, seconds, ...
    records: list[dict[str, Any]] = field(default_factory=list)  # the round's metrics.jsonl records (fit, evals)


@dataclass
class CheckpointSaved:
    server_round: int
    path: Path


@dataclass
class Message:
    text: str
    level: str = "info"  # info or warning


@dataclass
class RunFinished:
    rounds_done: int
    metrics: dict[str, Any] = field(default_factory=dict)
