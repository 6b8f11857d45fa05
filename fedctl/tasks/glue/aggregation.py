"""The LoRA aggregation space, as a wrapper around any fedctl strategy.

- `naive`: the wrapped strategy averages lora_A and lora_B (and the head) as it averages any tensor.
- `svd`: the wrapped strategy's *weights* are kept, but the mean is taken over ΔW = s·B·A per module and
  refactored to rank `svd_rank` from the stacked factors (`fedctl.lora.merge.merge_state_dicts`, exact when
  svd_rank ≥ Σ client ranks, the Eckart–Young best rank-svd_rank approximation otherwise); the head and other
  non-LoRA shared tensors get the same weighted mean. The strategy's `step()` (server momentum, FedAdam …)
  then runs on the refactored state.

Weights in svd space: strategies whose aggregate is a weighted mean — FedAvg, FedProx, FedAvgM, FedAdam,
FedYogi, FedAdagrad (num_examples) and FedEntropy (n_i·softmax(−H/T)). Robust aggregates (FedMedian,
FedTrimmedAvg, Krum) and FedFisher's per-coordinate weights have no ΔW-space meaning: they need --merge naive.

Memory: svd keeps each client's shared tensors (LoRA factors + head: K × a few MB) until the round ends.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedctl.core.aggregate import State
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy
from fedctl.core.task import client_seed
from fedctl.errors import FedctlError

MERGES = ("svd", "naive")


def check_svd_space(strategy: Strategy) -> None:
    """Fail fast when the strategy's aggregate is not a weighted mean (it has no ΔW-space equivalent)."""
    if not strategy.begin(1, {}, None).weighted_mean:
        raise FedctlError(
            f"strategy {strategy.name} does not aggregate by a weighted mean, so it has no LoRA ΔW-space (svd) form",
            "use --merge naive with it (A and B aggregated directly), or a weighted-mean strategy: "
            "fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad, fedentropy",
        )


class SvdSpaceAggregator(Aggregator):
    """Collects the clients' shared tensors; `result()` merges them in ΔW space with the wrapped weights."""

    def __init__(self, inner: Aggregator, svd_rank: int, scale: float, seed: int = 0) -> None:
        self.inner = inner  # only consulted for the client weights (its log_weight)
        self.svd_rank = svd_rank
        self.scale = scale
        self.seed = seed
        self.states: list[State] = []
        self.log_weights: list[float] = []
        self.client_ids: list[str] = []

    @property
    def count(self) -> int:
        return len(self.states)

    def add(self, update: ClientUpdate) -> None:
        self.log_weights.append(self.inner.log_weight(update))
        self.states.append({k: v.detach().clone() for k, v in update.state.items()})
        self.client_ids.append(update.client_id)

    def weights(self) -> list[float]:
        top = max(self.log_weights)
        w = [math.exp(v - top) for v in self.log_weights]
        return [x / sum(w) for x in w]

    def result(self, global_state: State) -> State:
        return svd_space_mean(self.states, self.weights(), self.svd_rank, self.scale, global_state,
                              names=self.client_ids, seed=self.seed)


def svd_space_mean(
    states: list[State], weights: list[float], svd_rank: int, scale: float, like: State,
    names: list[str] | None = None, seed: int = 0,
) -> State:
    """Weighted mean of the clients' ΔW = scale·B·A per module, refactored to rank svd_rank with the same
    scale; other tensors: the weighted mean.

    When the clients train at a higher rank r than svd_rank, the spare rank is re-initialised the way LoRA
    starts (B columns zero, A rows uniform ±1/√k, seeded by `seed`): ΔW stays exactly the truncated mean and
    the spare directions can learn next round (zero A rows and B columns would get zero gradients forever)."""
    from fedctl.lora.merge import merge_state_dicts

    merged, _ = merge_state_dicts(states, weights, method="svd", svd_rank=svd_rank, scales=scale,
                                  out_scale=scale, names=names)
    gen = torch.Generator().manual_seed(seed)
    out: State = {}
    for key, ref in like.items():
        value = merged[key]
        if value.shape != ref.shape:  # lora_B (d, svd_rank) → (d, r), lora_A (svd_rank, k) → (r, k)
            padded = torch.zeros(ref.shape, dtype=value.dtype)
            padded[tuple(slice(0, n) for n in value.shape)] = value
            if ".lora_A." in key:
                bound = ref.shape[1] ** -0.5
                spare = torch.rand(ref.shape[0] - value.shape[0], ref.shape[1], generator=gen, dtype=value.dtype)
                padded[value.shape[0]:] = (2 * spare - 1) * bound
            value = padded
        out[key] = value.to(device=ref.device, dtype=ref.dtype)
    return out


class LoraSpaceStrategy(Strategy):
    """Wraps a strategy: aggregates in the chosen LoRA space; the server step is the wrapped strategy's."""

    def __init__(
        self,
        inner: Strategy,
        *,
        merge: str = "svd",
        svd_rank: int = 8,
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        if merge not in MERGES:
            raise FedctlError(f"unknown task.merge '{merge}'", "use --merge svd or --merge naive")
        if merge == "svd":
            check_svd_space(inner)
        self.inner, self.merge, self.svd_rank, self.scale = inner, merge, svd_rank, scale
        self.seed = seed
        self.name = inner.name

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return self.inner.configure_fit(server_round)

    def not_a_mean(self) -> str | None:
        if self.merge == "svd":
            return "merges in ΔW = s·B·A space (svd), which is not linear in each client's update"
        return self.inner.not_a_mean()

    def check_model(self, model, shared_keys: list[str]) -> None:
        self.inner.check_model(model, shared_keys)

    def check_clients(self, num_sampled: int) -> None:
        self.inner.check_clients(num_sampled)

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        aggregator = self.inner.begin(server_round, global_state, workspace)
        if self.merge == "naive":
            return aggregator
        return SvdSpaceAggregator(aggregator, self.svd_rank, self.scale, seed=client_seed(self.seed, server_round, 7919))

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        return self.inner.step(server_round, global_state, aggregated)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
