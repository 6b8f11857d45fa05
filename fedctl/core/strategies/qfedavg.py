"""q-FedAvg — Li, Sanjabi, Beirami and Smith 2020, "Fair Resource Allocation in Federated Learning" (ICLR), the
q-FFL objective, as Flower 1.41's message-API `flwr.serverapp.strategy.QFedAvg` computes it.

With w the global state, w_k client k's trained state, F_k the loss client k reports under `train_loss_key`,
L = 1 / client_learning_rate (the Lipschitz estimate) and powers taken of F_k + 1e-10:
    Δw_k = L·(w − w_k);   Δ_k = F_k^q·Δw_k;   h_k = q·F_k^(q−1)·‖Δw_k‖² + L·F_k^q
    w ← w − Σ_k Δ_k / Σ_k h_k
Clients with a higher loss weigh more as q grows; q = 0 is the unweighted mean of the client states.
Streams: Σ Δ_k and Σ h_k are folded in one client at a time, memory O(model).

Flower's two APIs differ: the legacy `flwr.server.strategy.QFedAvg` (q_param, qffl_learning_rate) uses one
server-side loss of the old global model for every client; the message API (client_learning_rate, q,
train_loss_key) uses each client's own reported loss. fedctl follows the message API, names and defaults included
except one: Flower requires client_learning_rate, fedctl defaults it to None, which reads each client's learning
rate from its reply (its `lr` metric, the rate its last local step used), so L_k = 1/lr_k is the rate the client
really trained with; a number gives Flower's one L for every client. fedctl clients report `train_loss`, the mean
loss over their local steps (Flower's default key); the paper's F_k(w), the loss of the received model, is the mean
loss of the first local step: `train_loss_key: train_initial_loss`. fedctl clients train with AdamW, so L is a
heuristic there, as it is in Flower for any optimizer but SGD.
"""

from __future__ import annotations

import math
from typing import Any

from fedctl.core.aggregate import QfflSum, State
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy
from fedctl.errors import FedctlError


def _metric(update: ClientUpdate, key: str, hint: str) -> float:
    value = update.metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise FedctlError(
            f"strategy qfedavg: client {update.client_id} reported no finite non-negative '{key}' "
            f"(its metrics: {', '.join(sorted(update.metrics)) or 'none'})", hint)
    return float(value)


class QfflAggregator(Aggregator):
    def __init__(self, global_state: State, q: float, client_learning_rate: float | None, train_loss_key: str) -> None:
        self.sums = QfflSum(global_state, q)
        self.client_learning_rate = client_learning_rate
        self.train_loss_key = train_loss_key
        self.h: dict[str, float] = {}

    @property
    def count(self) -> int:
        return self.sums.count

    def add(self, update: ClientUpdate) -> None:
        loss = _metric(update, self.train_loss_key,
                       "set federation.strategy_args.train_loss_key to a loss the clients report, e.g. train_loss")
        lr = self.client_learning_rate
        if lr is None:
            lr = _metric(update, "lr", "set federation.strategy_args.client_learning_rate to the clients' learning rate")
            if lr <= 0:
                raise FedctlError(f"strategy qfedavg: client {update.client_id} reported learning rate {lr}",
                                  "set federation.strategy_args.client_learning_rate to the clients' learning rate")
        self.h[update.client_id] = self.sums.add(update.state, loss, 1.0 / lr)

    def result(self, global_state: State) -> State:
        return self.sums.result()

    def summary(self) -> dict[str, Any]:
        return {"qffl_h": dict(self.h)}


class QFedAvg(Strategy):
    name = "qfedavg"
    aggregation_rule = ("weighs each client by the loss it reports raised to q and by the norm of its own update "
                        "(q-FFL), neither of which the noise covers")
    # Under client-side DP the updates are noised, but the reported losses steer the released model un-noised.
    uses_client_reports = "the training loss each client reports (q-FFL weighs clients by it)"

    def __init__(self, *, client_learning_rate: float | None = None, q: float = 0.1,
                 train_loss_key: str = "train_loss") -> None:
        if client_learning_rate is not None and not (math.isfinite(client_learning_rate) and client_learning_rate > 0):
            raise ValueError(f"client_learning_rate = {client_learning_rate} must be a finite number > 0")
        if not (math.isfinite(q) and q >= 0):
            raise ValueError(f"q = {q} must be >= 0 (0 is the unweighted mean; the paper uses 0.1 to 15)")
        if not train_loss_key:
            raise ValueError("train_loss_key must name a client metric, e.g. train_loss")
        self.client_learning_rate = client_learning_rate
        self.q = q
        self.train_loss_key = train_loss_key

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        return QfflAggregator(global_state, self.q, self.client_learning_rate, self.train_loss_key)
