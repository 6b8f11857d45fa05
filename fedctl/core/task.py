"""The contract between the engine and a workload.

A workload supplies its model, its clients' data as schedulable items, a batch maker, a loss and an
evaluation; the one client trainer (`fedctl.core.local`) runs the loop. Optional capabilities are
methods of `Task` with a default that either declares the capability absent (an error naming it) or
says the workload has nothing to add (no export, no description) — never a silent `hasattr`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedctl.core.client import ClientSpec
from fedctl.core.instructions import ClientInstructions
from fedctl.errors import FedctlError

if TYPE_CHECKING:
    from fedctl.core.rundir import RunDir
    from fedctl.core.strategies.base import Strategy


@dataclass
class TaskContext:
    """What a task is built with besides its own config section."""

    num_clients: int
    seed: int
    device: torch.device
    run_dir: RunDir | None = None  # the run's directory; tasks write through it (adapters, tokenizer, demo data)
    log: Callable[[str], None] = print  # informational messages (the CLI sends them to stderr)

    def __post_init__(self) -> None:
        from fedctl.core.rundir import RunDir

        if self.run_dir is not None and not isinstance(self.run_dir, RunDir):  # a plain path
            self.run_dir = RunDir(self.run_dir)

    @property
    def root(self) -> Path | None:
        """The run directory's path, or None for a run kept in memory."""
        return None if self.run_dir is None else self.run_dir.path


# How a client trains in one round: the one client spec of training and attacks (fedctl.core.client).
LocalTraining = ClientSpec


@dataclass
class ClientConfig:
    """What the server tells a client for one round of local training.

    `server_round` starts at 1. `anchor` is the global state the client started from (FedProx's proximal
    term needs it); tasks must treat it as read-only.
    """

    server_round: int
    client_index: int
    seed: int
    instructions: ClientInstructions = field(default_factory=ClientInstructions)
    anchor: dict[str, torch.Tensor] | None = None
    keep_optimizer_state: bool = False  # when true: load `optimizer_state` (if any), return the new one
    optimizer_state: dict[str, Any] | None = None
    client_state: dict[str, torch.Tensor] | None = None  # what the client kept from its last round (client_state)
    server_payload: dict[str, torch.Tensor] | None = None  # Strategy.broadcast(): e.g. SCAFFOLD's c
    # called after each step's gradients are final (unscaled, clipped), before the optimizer step, with the step's
    # lr: a strategy's gradient correction (SCAFFOLD adds c − c_i)
    on_gradients: Callable[[float], None] | None = field(default=None, repr=False, compare=False)
    # called after each optimizer step with (step, steps); progress display only, never affects training
    on_step: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class FitResult:
    """What local training reports. `num_examples` weights the client in FedAvg-style averages."""

    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # strategy inputs, e.g. entropy or fisher
    optimizer_state: dict[str, Any] | None = None
    client_state: dict[str, torch.Tensor] | None = None  # what the client keeps for its next round


# ------------------------------------------------------------------------------------------- task


class Task(ABC):
    """A workload the engine can train federatedly.

    Training (run by `fedctl.core.local.train_client`, never by the task):
    - `training` — the resolved loop settings (`LocalTraining`: lr, schedule, accumulation, clipping, AMP);
    - `train_items(client_id)` — how many schedulable items a client holds (examples, text blocks, or
      prebuilt length batches; `training.batch_size` items make one micro-batch);
    - `num_examples(client_id)` — the client's weight in example-weighted averages;
    - `make_batch(client_id, items, gen)` — the micro-batch of those item positions (`gen` seeds crops
      and masks);
    - `loss(model, batch)` — (scalar loss to minimise, metrics of the batch as floats or 0-d tensors).
    """

    name: ClassVar[str]
    vmap_safe: ClassVar[bool] = True  # forward_logits runs under torch.func.vmap (else: per-example Fisher loop)
    training: LocalTraining

    # -- the model and its clients
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The initial global model, identical for the same seed; leaves the global RNG untouched."""

    @abstractmethod
    def shared_keys(self, model: nn.Module) -> list[str]:
        """The state-dict entries that travel between server and clients."""

    @abstractmethod
    def client_ids(self) -> list[str]: ...

    # -- local training
    @abstractmethod
    def train_items(self, client_id: str) -> int: ...

    @abstractmethod
    def num_examples(self, client_id: str) -> int: ...

    @abstractmethod
    def make_batch(self, client_id: str, items: torch.Tensor, gen: torch.Generator) -> Any: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]: ...

    def item_costs(self, client_id: str) -> list[float]:
        """Each training item's size (e.g. seconds of audio), for `training.bucket_batches` and
        `training.max_pass_cost`; a forward pass over k items costs k × the largest."""
        raise FedctlError(f"task '{self.name}' has no item sizes",
                          "leave bucket_batches and max_pass_cost at 0 for this workload")

    # -- evaluation
    @abstractmethod
    def evaluate(self, model: nn.Module, client_id: str | None = None) -> dict[str, float]:
        """Metrics on the global validation set, or on one client's held-out data."""

    def eval_examples(self, client_id: str) -> int:
        """How many examples `evaluate(model, client_id)` scores: the client's weight in the example-weighted
        aggregate of client evaluations (`federation.evaluate_aggregation: weighted`, Flower's num_examples)."""
        raise FedctlError(f"task '{self.name}' does not say how many examples its client evaluation scores",
                          "--set federation.evaluate_aggregation=mean (or median)")

    # -- optional capabilities ------------------------------------------------------------------
    # Client statistics for FedEntropy / FedFisher (see fedctl.core.client_stats).
    def supports_client_stats(self) -> bool:
        """True when `stat_examples` and `forward_logits` are implemented; raise FedctlError to explain why not."""
        return False

    def stat_examples(self, client_id: str, max_examples: int) -> dict[str, torch.Tensor]:
        """Up to max_examples of the client's examples (held-out where the task has them), each tensor with a
        leading example dimension; deterministic."""
        raise self._missing("client statistics (stat_examples)")

    def forward_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, ..., C], labels [B, ...]) of those examples; label −100 = ignore. Must run under
        torch.func.vmap(grad(...)): no in-place updates of module state, no .item()."""
        raise self._missing("client statistics (forward_logits)")

    # The aggregation space (LoRA: ΔW-space merging around any strategy).
    def wrap_strategy(self, strategy: Strategy) -> Strategy:
        return strategy

    # Throughput in the workload's own unit (tokens, seconds of audio), for the resource record.
    throughput_units: ClassVar[tuple[str, ...]] = ()  # the keys `throughput` returns, e.g. ("tokens",)

    def throughput(self, batch: Any) -> dict[str, float]:
        """Amounts of the workload's units in one training micro-batch (cheap: shapes only), keyed by
        `throughput_units`; the engine reports `<unit>_per_s` per round. Default: none."""
        return {}

    # Schedules the workload owns (e.g. a frozen-encoder warm-up counted in global optimizer steps).
    def step_begins(self, model: nn.Module, global_step: int) -> None:
        """Called before each optimizer step's micro-batches with the global step (round offset + local step)."""
        return None

    # Artefacts and reporting.
    def client_trained(self, model: nn.Module, client_id: str, server_round: int) -> None:
        """Called after a client's local training, before its update is taken (e.g. to save its adapter)."""
        return None

    def personal_evaluate(self, model: nn.Module, client_id: str) -> dict[str, float] | None:
        """The client's own locally trained model on its own held-out data (personalised evaluation, asked for with
        `federation.eval_clients`), with `num_examples`; None: the workload has no personal model to evaluate
        (its clients' models are the global one plus one round of drift). Runs on the client, before pruning or
        DP noise touch the update."""
        return None

    def round_end(self, server_round: int, global_state: dict[str, torch.Tensor]) -> None:
        """Called with the new global state after each round's server step (e.g. to save the fused adapter)."""
        return None

    def export(self, model: nn.Module, out_dir: Path) -> Path | None:
        """Write the final model in its field's format; None when the workload has no export."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the CLI prints before training (sizes, data)."""
        return {}

    def eval_samples(self, model: nn.Module) -> list[dict[str, str]]:
        """A few decoded validation samples, {"id", "ref", "hyp"} (CTC workloads: the reference and the model's
        greedy decoding), logged on each global evaluation row of metrics.jsonl as `samples` and shown by
        `fedctl train` and `fedctl eval`, so a low error rate that emits only frequent symbols is visible.
        Default: none."""
        return []

    def sample(self, model: nn.Module) -> str | None:
        """A short qualitative sample of the final model (e.g. generated text)."""
        return None

    def _missing(self, capability: str) -> FedctlError:
        return FedctlError(f"task '{self.name}' does not provide {capability}",
                           "choose a strategy that needs no client statistics (e.g. fedavg)")


def proximal_term(model: nn.Module, anchor: dict[str, torch.Tensor] | None, mu: float) -> torch.Tensor | float:
    """FedProx's (mu/2)·||w − w_global||² over the trainable parameters that travel (Li et al. 2020).

    0.0 when mu is 0 or there is no anchor.
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
