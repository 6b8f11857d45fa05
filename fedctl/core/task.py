"""The contract between the engine and a workload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TaskContext:
    """What a task is built with besides its own config section."""

    num_clients: int
    seed: int
    device: torch.device
    run_dir: Path | None = None  # where the task may save artefacts it needs again (e.g. a tokenizer)
    log: Callable[[str], None] = print  # informational messages (the CLI sends them to stderr)


@dataclass
class ClientConfig:
    """What the server tells a client for one round of local training.

    `server_round` starts at 1. `strategy` holds the strategy's per-round instructions
    (e.g. `proximal_mu` for FedProx). `anchor` is the global state the client started from,
    needed for proximal terms; tasks must treat it as read-only.
    """

    server_round: int
    client_index: int
    seed: int
    strategy: dict[str, Any] = field(default_factory=dict)
    anchor: dict[str, torch.Tensor] | None = None
    keep_optimizer_state: bool = False  # when true: load `optimizer_state` (if any), return the new one
    optimizer_state: dict[str, Any] | None = None

    @property
    def proximal_mu(self) -> float:
        return float(self.strategy.get("proximal_mu", 0.0))


@dataclass
class FitResult:
    """What local training reports. `num_examples` weights the client in FedAvg-style averages."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # strategy inputs, e.g. entropy or fisher
    optimizer_state: dict[str, Any] | None = None


@runtime_checkable
class Task(Protocol):
    """A workload the engine can train federatedly.

    - `build_model()` returns the initial global model (deterministic for the task's seed).
    - `shared_keys(model)` names the state-dict entries that travel between server and clients.
    - `fit(model, client_id, cfg)` trains `model` in place on that client's data.
    - `evaluate(model, client_id=None)` returns metrics on the global validation set (or a client's).
    """

    name: str

    def build_model(self) -> nn.Module: ...

    def shared_keys(self, model: nn.Module) -> list[str]: ...

    def client_ids(self) -> list[str]: ...

    def fit(self, model: nn.Module, client_id: str, cfg: ClientConfig) -> FitResult: ...

    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]: ...


# Optional hooks, for strategies that weight clients by statistics of their trained model
# (FedEntropy, FedFisher; see fedctl.core.client_stats). Every workload should provide them:
#
#   def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]
#       Up to max_examples of the client's examples (held-out local data where the task has it),
#       each tensor with a leading example dimension; deterministic.
#   def forward_logits(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]
#       (logits [B, ..., C], labels [B, ...]) for a batch of those examples; label -100 = ignore.
#       Must be functional-friendly (no in-place updates of module state, no .item()): it runs
#       under torch.func.vmap(grad(...)) for per-example gradients.


def proximal_term(model: nn.Module, anchor: dict[str, torch.Tensor] | None, mu: float) -> torch.Tensor | float:
    """FedProx's (mu/2)·||w − w_global||² over the trainable parameters that travel (Li et al. 2020).

    Tasks add this to their local loss; it is 0.0 when mu is 0 or there is no anchor.
    """
    if mu == 0.0 or anchor is None:
        return 0.0
    total = None
    for name, p in model.named_parameters():
        if p.requires_grad and name in anchor:
            sq = (p - anchor[name].to(p.device, p.dtype)).pow(2).sum()
            total = sq if total is None else total + sq
    return 0.0 if total is None else 0.5 * mu * total


def client_seed(seed: int, server_round: int, client_index: int) -> int:
    """A deterministic seed per (run seed, round, client): makes runs and resumes reproducible."""
    return (seed * 1_000_003 + server_round * 10_007 + client_index * 101) % (2**31 - 1)
