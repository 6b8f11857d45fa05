"""FedNova — Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization" (NeurIPS 2020): normalised averaging.

Clients that take different numbers of local steps τ_i pull plain FedAvg towards the objective of the ones that
step most. FedNova divides each client's update by its local normaliser a_i and rescales by an effective τ:
    d_i = (x − y_i) / a_i,   τ_eff = Σ_i p_i · a_i,   x ← x − τ_eff · Σ_i p_i · d_i
with p_i = n_i / Σ_j n_j (num_examples) and a_i = ‖a_i‖₁ reported by the client for the steps it took
(fedctl.core.stateful.fednova_normaliser):
  plain SGD                      a_i = τ_i
  SGD with momentum ρ            a_i = [τ_i − ρ(1 − ρ^{τ_i})/(1 − ρ)] / (1 − ρ)
  FedProx term μ (lr η, SGD)     a_i = [1 − (1 − ημ)^{τ_i}] / (ημ)      (option `proximal_mu`)
  AdamW (fedctl's default)       a_i = τ_i: Adam's bias-corrected first moment gives every gradient total weight 1,
                                 so there is no momentum inflation to undo (the paper defines a_i for SGD only).
Momentum and a proximal term together have no a_i in the paper and are refused. With equal a_i on every client
the rule is FedAvg exactly. Buffers (BatchNorm statistics) and integer tensors get FedAvg's mean.

Composition: `federation.dp` is refused in both modes — the server step uses each client's a_i (its step count,
which in epoch mode reveals its data size) that the noise does not cover. `federation.prune` prunes y_i − x before
it leaves the client; FedNova rescales what arrives. Options as in Flower Baselines' fednova: `proximal_mu`.
"""

from __future__ import annotations

from fedctl.core.aggregate import State, WeightedMean
from fedctl.core.instructions import ClientInstructions
from fedctl.core.stateful import FEDNOVA_A
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy
from fedctl.errors import FedctlError


class _NormalisedMean(Aggregator):
    """Streams Σ p_i d_i (as a weighted mean of d_i), the plain mean for buffers, and Σ p_i a_i."""

    def __init__(self, global_state: State, float_keys: set[str], workspace: State | None) -> None:
        self.global_state = global_state
        self.float_keys = float_keys
        self.d = WeightedMean()
        self.plain = WeightedMean(workspace)
        self.weight = 0.0
        self.tau = 0.0  # Σ n_i a_i

    @property
    def count(self) -> int:
        return self.plain.count

    def add(self, update: ClientUpdate) -> None:
        a = update.stats.get(FEDNOVA_A)
        if a is None or not a > 0:
            raise FedctlError(f"client {update.client_id} reported no FedNova normaliser a_i (or a_i <= 0)",
                              "the client side must run fedctl.core.stateful.train and take at least one step")
        n = float(update.num_examples)
        d = {k: (self.global_state[k].double() - update.state[k].double()) / a for k in self.float_keys}
        self.d.add(d, n)
        self.plain.add(update.state, n)
        self.weight += n
        self.tau += n * a

    def result(self, global_state: State) -> State:
        out = dict(self.plain.result(like=global_state))
        tau_eff = self.tau / self.weight
        mean_d = self.d.result()
        for k in self.float_keys:
            out[k] = (global_state[k].double() - tau_eff * mean_d[k]).to(global_state[k].dtype)
        return out

    def summary(self) -> dict:
        return {"fednova_tau_eff": self.tau / self.weight} if self.weight else {}


class FedNova(Strategy):
    name = "fednova"
    aggregation_rule = "rescales each update by the client's local step count a_i"
    uses_client_reports = "each client's local step count a_i"

    def __init__(self, *, proximal_mu: float = 0.0) -> None:
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        self.proximal_mu = proximal_mu
        self.float_keys: set[str] = set()

    def check_model(self, model, shared_keys: list[str]) -> None:
        params = dict(model.named_parameters())
        self.float_keys = {k for k in shared_keys if k in params and params[k].is_floating_point()}

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return ClientInstructions(proximal_mu=self.proximal_mu, fednova=True)

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return _NormalisedMean(global_state, self.float_keys, workspace)
