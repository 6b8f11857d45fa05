"""What every strategy shares: collect client updates, then take one server step.

A round is two stages so that a failed round leaves the server untouched:
`begin()` returns an aggregator the engine feeds client updates one by one;
only when enough clients arrived does the engine call `step()`, which may update
server optimizer state (momentum, Adam moments) and returns the new global state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedctl.core.aggregate import State, WeightedMean
from fedctl.core.instructions import ClientInstructions


@dataclass
class ClientUpdate:
    """One client's result: its trained shared tensors and how much data it trained on."""

    client_id: str
    state: State
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


class Aggregator(ABC):
    """Receives client updates of one round; `result()` is the aggregated client state.

    An aggregator whose result is a weighted mean Σ w_i θ_i / Σ w_i declares it (`weighted_mean = True`) and
    gives each client's weight as `log_weight(update)` (log space: weights like exp(−H/T) neither overflow nor
    underflow). Wrappers that average in another space (LoRA's ΔW space) reuse exactly those weights.
    """

    weighted_mean: ClassVar[bool] = False
    # Fewest updates this aggregator can reduce (Bulyan: 4f + 3); the engine fails a round with fewer, like
    # one below federation.min_fit_clients.
    min_count: int = 1

    @property
    @abstractmethod
    def count(self) -> int:
        """Clients added so far."""

    @abstractmethod
    def add(self, update: ClientUpdate) -> None: ...

    @abstractmethod
    def result(self, global_state: State) -> State: ...

    def log_weight(self, update: ClientUpdate) -> float:
        """log of this client's weight in a weighted-mean aggregate."""
        raise TypeError(f"{type(self).__name__} does not aggregate by a weighted mean")

    def summary(self) -> dict[str, Any]:
        """Round-level facts for metrics.jsonl (e.g. the client weights used)."""
        return {}


class ExampleWeightedMean(Aggregator):
    """FedAvg's aggregate: mean of client states weighted by num_examples, streamed."""

    weighted_mean = True

    def __init__(self, workspace: State | None = None) -> None:
        self._mean = WeightedMean(workspace)

    @property
    def count(self) -> int:
        return self._mean.count

    def log_weight(self, update: ClientUpdate) -> float:
        return math.log(update.num_examples)

    def add(self, update: ClientUpdate) -> None:
        self._mean.add(update.state, float(update.num_examples))

    def result(self, global_state: State) -> State:
        return self._mean.result(like=global_state)


class Collect(Aggregator):
    """Keeps a copy of every update: for statistics that need all clients at once."""

    def __init__(self, reduce) -> None:
        self.updates: list[ClientUpdate] = []
        self._reduce = reduce

    @property
    def count(self) -> int:
        return len(self.updates)

    def add(self, update: ClientUpdate) -> None:
        state = {k: v.detach().clone() for k, v in update.state.items()}
        self.updates.append(ClientUpdate(update.client_id, state, update.num_examples, update.metrics, update.stats))

    def result(self, global_state: State) -> State:
        out = self._reduce(self.updates)
        return {k: v.to(global_state[k].dtype) for k, v in out.items()}


def innermost(strategy: Strategy) -> Strategy:
    """The strategy a wrapper (DP, LoRA space) wraps, all the way down: it owns the client-side hooks."""
    while getattr(strategy, "inner", None) is not None:
        strategy = strategy.inner
    return strategy


class Strategy:
    """Base strategy: FedAvg's aggregate and no server optimizer. Subclasses override the hooks."""

    name = "strategy"
    # What a strategy whose round is not "a mean of the client states, then step() on it" does instead (a wrapper
    # that replaces the mean, like DP, cannot serve it): "takes the coordinate-wise median of ...".
    aggregation_rule: ClassVar[str | None] = None

    def not_a_mean(self) -> str | None:
        """None when a round is a (weighted) mean of the client states followed by `step()` on that mean alone, so
        a wrapper may replace the mean and the step only post-processes it; otherwise what the strategy does."""
        if self.aggregation_rule is not None:
            return self.aggregation_rule
        if self.configure_fit(1).wants_stats:
            return "weighs clients by statistics they report"
        if type(self).begin is not Strategy.begin:
            return f"aggregates by its own rule ({type(self).__name__}.begin)"
        return None

    def check_model(self, model, shared_keys: list[str]) -> None:
        """Called once by the engine with the model and the tensors that travel; refuse what this strategy cannot
        serve (FedctlError). Default: nothing to check."""

    # -- per-client state (fedctl.core.client_state); wrappers (DP, LoRA space) leave these to the wrapped
    # strategy, which the engine reaches through `innermost()`.
    # What the strategy keeps on every client between rounds, in words ("a control variate c_i"); None: nothing.
    # Backends that cannot keep client state (Flower, for now) refuse such a strategy by this name.
    client_state: ClassVar[str | None] = None
    # Client-reported values the server step uses besides the update itself (FedNova's local step counts);
    # DP in client mode refuses what its noise does not cover.
    uses_client_reports: ClassVar[str | None] = None

    def local_keys(self, model, shared_keys: list[str], patterns: list[str]) -> list[str]:
        """Shared tensors that stay on each client instead of travelling (FedBN: BatchNorm; FedPer: `patterns`,
        i.e. federation.local_keys, which the engine applies for every strategy). Default: none of its own."""
        return []

    def bind(self, *, num_clients: int) -> None:
        """Called once by the engine with the number of clients N (SCAFFOLD's server variate uses |S|/N)."""

    def broadcast(self, server_round: int) -> State:
        """Tensors every sampled client receives besides the global state (SCAFFOLD's c). Default: none."""
        return {}

    def check_clients(self, num_sampled: int) -> None:
        """Called before the run with the number of clients sampled per round; refuse (FedctlError) a count this
        strategy cannot aggregate (Bulyan: fewer than 4f + 3). Default: nothing to check."""

    def configure_fit(self, server_round: int) -> ClientInstructions:
        """Per-round instructions sent to every sampled client (e.g. FedProx's proximal_mu)."""
        return ClientInstructions()

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        """An aggregator for this round. `workspace`: spare buffers shaped like the global state
        that the aggregator may overwrite (the engine recycles the previous round's state)."""
        return ExampleWeightedMean(workspace)

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        """Server update from the aggregated client state; default: take it as the new global."""
        return aggregated

    def aggregate_fit(
        self, server_round: int, global_state: State, updates: Iterable[ClientUpdate], workspace: State | None = None
    ) -> State:
        """One round in one call: fold every update in, then take the server step."""
        agg = self.begin(server_round, global_state, workspace)
        for update in updates:
            agg.add(update)
        return self.step(server_round, global_state, agg.result(global_state))

    def state_dict(self) -> dict[str, Any]:
        """Server optimizer state, saved in checkpoints (tensors and plain Python values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

