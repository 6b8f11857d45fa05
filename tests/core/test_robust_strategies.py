"""Bulyan and q-FedAvg against Flower 1.41's own implementations, on the same client updates over 3 rounds, and
against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedctl.core.aggregate import bulyan
from fedctl.core.strategies import ClientUpdate, build_strategy
from fedctl.errors import FedctlError

SHAPES = [(3, 4), (5,), (2, 2, 2)]


def _client_arrays(global_arrays, server_round, num_clients, num_byzantine, seed=0):
    """Each client's trained arrays: the global ones plus a client- and round-specific step; the first
    `num_byzantine` clients send large opposite steps (the attackers Bulyan must filter out)."""
    rng = np.random.default_rng(seed * 1000 + server_round)
    out = []
    for k in range(num_clients):
        scale = 25.0 if k < num_byzantine else 0.3
        out.append([g + scale * rng.normal(size=g.shape) + (0.1 * k if k >= num_byzantine else -5.0)
                    for g in global_arrays])
    return out


def _state(arrays):
    return {f"t{i}": torch.tensor(a, dtype=torch.float64) for i, a in enumerate(arrays)}


def _max_diff(state, arrays):
    return max(float(np.abs(state[f"t{i}"].numpy() - a).max()) for i, a in enumerate(arrays))


@pytest.mark.parametrize("num_clients,f", [(7, 1), (11, 2), (8, 1), (5, 0)])
def test_bulyan_equals_flower_legacy_bulyan_over_three_rounds(num_clients, f):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Bulyan as FlowerBulyan
    from flwr.server.strategy.aggregate import aggregate_krum

    rng = np.random.default_rng(42)
    ours_global = flower_global = [rng.normal(size=s) for s in SHAPES]
    flower = FlowerBulyan(num_malicious_clients=f, first_aggregation_rule=aggregate_krum, to_keep=0)
    ours = build_strategy("bulyan", {"num_malicious_clients": f})
    for server_round in (1, 2, 3):
        clients = _client_arrays(flower_global, server_round, num_clients, f)
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), 10 + k, {}))
                   for k, a in enumerate(clients)]
        params, _ = flower.aggregate_fit(server_round, results, [])
        flower_global = parameters_to_ndarrays(params)
        updates = [ClientUpdate(f"client_{k}", _state(a), 10 + k) for k, a in enumerate(clients)]
        new = ours.aggregate_fit(server_round, _state(ours_global), updates)
        assert _max_diff(new, flower_global) <= 1e-6
        ours_global = [new[f"t{i}"].numpy() for i in range(len(SHAPES))]
        assert not set(ours.last_selected) & {f"client_{k}" for k in range(f)}  # the attackers are never chosen


def test_bulyan_hand_computed():
    """n = 7, f = 1: θ = 5 chosen by iterative Krum, β = 3 values closest to their median averaged."""
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 100.0, -50.0]
    states = [{"w": torch.tensor([v], dtype=torch.float64)} for v in values]
    out, chosen = bulyan(states, 1)
    # Krum (n − f − 2 = 4 nearest): 2 wins (1+1+4+4 = 10); the attackers 100 and −50 are never among the 5 kept
    assert sorted(values[i] for i in chosen) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # median 2; the 3 values closest to it: 1, 2, 3 → mean 2
    assert float(out["w"]) == 2.0
    # Iterative: scores are recomputed on the shrinking set. [0, 1, 1.5, 4, 4.5, 9, 10], f = 1:
    #   k=7, 4 nearest: 1.5 wins (0.25+2.25+6.25+9 = 17.75); k=6, 3 nearest: 1 (1+9+12.25 = 22.25);
    #   k=5, 2 nearest: 4 (0.25+16 = 16.25); k=4, 1 nearest: 9 and 10 tie at 1, the first (9) wins;
    #   k=3: 0 and 4.5 tie at 20.25, the first (0) wins.  Chosen {0, 1, 1.5, 4, 9}, median 1.5,
    #   the β = 3 closest to it: 1.5, 1, 0 → 2.5 / 3.
    values = [0.0, 1.0, 1.5, 4.0, 4.5, 9.0, 10.0]
    out, chosen = bulyan([{"w": torch.tensor([v], dtype=torch.float64)} for v in values], 1)
    assert [values[i] for i in chosen] == [1.5, 1.0, 4.0, 9.0, 0.0]
    assert float(out["w"]) == pytest.approx(2.5 / 3, abs=1e-15)


def test_bulyan_refuses_too_few_clients():
    s = build_strategy("bulyan", {"num_malicious_clients": 1})
    s.check_clients(7)
    with pytest.raises(FedctlError, match="4·f \\+ 3 = 7"):
        s.check_clients(6)
    with pytest.raises(ValueError, match="4f \\+ 3"):
        bulyan([{"w": torch.zeros(1)}] * 6, 1)


@pytest.fixture
def flower_task_identity(monkeypatch):
    """Flower's message API stamps every Message with the run it belongs to; outside a ServerApp there is none.
    Its ArrayRecord also calls gc.collect() after every conversion (0.7 s each in a test process holding torch and
    transformers): a no-op here, it frees memory and changes no value."""
    import types

    from flwr.app.message import arrayrecord
    from flwr.supercore.task_identity import TaskIdentity

    for key in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)
    monkeypatch.setattr(arrayrecord, "gc", types.SimpleNamespace(collect=lambda *args: 0))


class _Grid:
    def __init__(self, n):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


@pytest.mark.parametrize("q", [0.0, 0.1, 1.0, 2.5])
def test_qfedavg_equals_flower_message_api_qfedavg_over_three_rounds(q, flower_task_identity):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import QFedAvg as FlowerQFedAvg

    num_clients, lr = 5, 0.05
    rng = np.random.default_rng(7)
    ours_global = flower_global = [rng.normal(size=s) for s in SHAPES]
    flower = FlowerQFedAvg(client_learning_rate=lr, q=q, min_train_nodes=num_clients)
    ours = build_strategy("qfedavg", {"client_learning_rate": lr, "q": q})
    for server_round in (1, 2, 3):
        clients = _client_arrays(flower_global, server_round, num_clients, 0)
        losses = [0.2 + 0.7 * k + 0.1 * server_round for k in range(num_clients)]
        instructions = list(flower.configure_train(server_round, ArrayRecord(flower_global), ConfigRecord(),
                                                   _Grid(num_clients)))
        replies = [Message(RecordDict({"arrays": ArrayRecord([a.copy() for a in clients[m.metadata.dst_node_id - 1]]),
                                       "metrics": MetricRecord({"train_loss": losses[m.metadata.dst_node_id - 1],
                                                                "num-examples": 10})}), reply_to=m)
                   for m in instructions]
        arrays, _ = flower.aggregate_train(server_round, replies)
        flower_global = arrays.to_numpy_ndarrays()
        updates = [ClientUpdate(f"client_{k}", _state(a), 10, {"train_loss": losses[k]}) for k, a in enumerate(clients)]
        new = ours.aggregate_fit(server_round, _state(ours_global), updates)
        assert _max_diff(new, flower_global) <= 1e-6
        ours_global = [new[f"t{i}"].numpy() for i in range(len(SHAPES))]


def test_qfedavg_hand_computed():
    """w = 1, two clients w_1 = 0.5 (F = 1), w_2 = 0 (F = 4); lr 0.5 so L = 2."""
    s = build_strategy("qfedavg", {"client_learning_rate": 0.5, "q": 1.0})
    w = {"w": torch.tensor([1.0], dtype=torch.float64)}
    ups = [ClientUpdate("a", {"w": torch.tensor([0.5], dtype=torch.float64)}, 3, {"train_loss": 1.0}),
           ClientUpdate("b", {"w": torch.tensor([0.0], dtype=torch.float64)}, 9, {"train_loss": 4.0})]
    # Δw = L(w − w_k) = 1, 2; Δ = F·Δw = 1, 8; h = q·F^0·Δw² + L·F = 1 + 2 = 3, 4 + 8 = 12 (1e-10 aside)
    out = s.aggregate_fit(1, w, ups)
    assert float(out["w"]) == pytest.approx(1.0 - 9.0 / 15.0, abs=1e-9)
    # q = 0: Δ_k = Δw_k, h_k = L, so w − Σ L(w − w_k) / (K·L) = the unweighted mean of the clients (num_examples unused)
    out = build_strategy("qfedavg", {"client_learning_rate": 0.5, "q": 0.0}).aggregate_fit(1, w, ups)
    assert float(out["w"]) == pytest.approx(0.25, abs=1e-12)


def test_qfedavg_without_a_client_learning_rate_uses_each_clients_reported_lr():
    """client_learning_rate None: L_k = 1 / (the lr client k reports). Equal lrs give Flower's single-L result."""
    w = {"w": torch.tensor([1.0], dtype=torch.float64)}
    ups = [ClientUpdate("a", {"w": torch.tensor([0.5], dtype=torch.float64)}, 3, {"train_loss": 1.0, "lr": 0.5}),
           ClientUpdate("b", {"w": torch.tensor([0.0], dtype=torch.float64)}, 9, {"train_loss": 4.0, "lr": 0.5})]
    out = build_strategy("qfedavg", {"q": 1.0}).aggregate_fit(1, w, ups)
    assert float(out["w"]) == pytest.approx(1.0 - 9.0 / 15.0, abs=1e-9)  # as test_qfedavg_hand_computed
    ups[1].metrics["lr"] = 0.25  # L_b = 4: Δw_b = 4, Δ_b = 16, h_b = 16 + 16 = 32
    out = build_strategy("qfedavg", {"q": 1.0}).aggregate_fit(1, w, ups)
    assert float(out["w"]) == pytest.approx(1.0 - 17.0 / 35.0, abs=1e-9)
    del ups[0].metrics["lr"]
    with pytest.raises(FedctlError, match="'lr'"):
        build_strategy("qfedavg", {"q": 1.0}).aggregate_fit(1, w, ups)


def test_qfedavg_reads_the_configured_loss_key():
    s = build_strategy("qfedavg", {"client_learning_rate": 0.5, "q": 1.0, "train_loss_key": "train_initial_loss"})
    w = {"w": torch.tensor([1.0])}
    with pytest.raises(FedctlError, match="train_initial_loss"):
        s.aggregate_fit(1, w, [ClientUpdate("a", {"w": torch.tensor([0.0])}, 1, {"train_loss": 1.0})])


@pytest.mark.parametrize("args,match", [
    ({"client_learning_rate": 0.1, "q": -0.5}, "q = -0.5 must be >= 0"),
    ({"client_learning_rate": 0.0}, "client_learning_rate = 0.0"),
])
def test_qfedavg_refuses_bad_options(args, match):
    with pytest.raises(FedctlError, match=match):
        build_strategy("qfedavg", args)


def test_dp_refuses_bulyan_and_qfedavg_by_name():
    from fedctl.core.strategies.dp import check_strategy, dp_config

    server, client = dp_config({"mode": "server"}), dp_config({"mode": "client"})
    with pytest.raises(FedctlError, match="cannot wrap strategy bulyan: it keeps the clients"):
        check_strategy(build_strategy("bulyan"), server)
    check_strategy(build_strategy("bulyan"), client)  # noised updates in: Bulyan only post-processes them
    q = build_strategy("qfedavg", {"client_learning_rate": 0.1})
    with pytest.raises(FedctlError, match="cannot wrap strategy qfedavg: it weighs each client by the loss"):
        check_strategy(q, server)
    with pytest.raises(FedctlError, match=r"mode: client\) cannot wrap strategy qfedavg: its server step uses the training loss each client reports"):
        check_strategy(q, client)


def test_fedavgm_defaults_to_momentum_0_9_not_fedavg():
    """Flower's FedAvgM defaults to server_momentum 0 (= FedAvg); fedctl's to 0.9. x = 1; client means 0.5, 0.25:
    round 1 v = 0.5, x = 0.5; round 2 v = 0.9·0.5 + 0.25 = 0.7, x = 0.5 − 0.7 = −0.2 (FedAvg: 0.25)."""
    s = build_strategy("fedavgm")
    assert s.server_momentum == 0.9
    x = {"w": torch.tensor([1.0], dtype=torch.float64)}
    for server_round, mean in ((1, 0.5), (2, 0.25)):
        x = s.aggregate_fit(server_round, x, [ClientUpdate("a", {"w": torch.tensor([mean], dtype=torch.float64)}, 1)])
    assert float(x["w"]) == pytest.approx(-0.2, abs=1e-6)  # FedAvgM steps in float32


def test_qfedavg_equals_flower_legacy_qfedavg_when_every_client_reports_the_server_loss():
    """Flower's legacy QFedAvg uses one server-side loss (its evaluate_fn on the old global model) for every client;
    fedctl (as the message API) reads each client's own. With that one loss reported by every client they agree."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import QFedAvg as LegacyQFedAvg

    rng = np.random.default_rng(3)
    ours_global = flower_global = [rng.normal(size=s) for s in SHAPES]
    server_loss = lambda w: float(sum(np.square(a).sum() for a in w)) / 10  # noqa: E731
    flower = LegacyQFedAvg(q_param=0.2, qffl_learning_rate=0.1,
                           evaluate_fn=lambda rnd, weights, config: (server_loss(weights), {}))
    ours = build_strategy("qfedavg", {"client_learning_rate": 0.1, "q": 0.2})
    for server_round in (1, 2, 3):
        clients = _client_arrays(flower_global, server_round, 4, 0)
        flower.pre_weights = flower_global  # what its configure_fit stores (it needs a live ClientManager)
        results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), 10, {})) for a in clients]
        params, _ = flower.aggregate_fit(server_round, results, [])
        loss = server_loss(flower_global)
        flower_global = parameters_to_ndarrays(params)
        updates = [ClientUpdate(f"client_{k}", _state(a), 10, {"train_loss": loss}) for k, a in enumerate(clients)]
        new = ours.aggregate_fit(server_round, _state(ours_global), updates)
        assert _max_diff(new, flower_global) <= 1e-6
        ours_global = [new[f"t{i}"].numpy() for i in range(len(SHAPES))]


def test_bulyan_selects_like_the_paper_not_like_flowers_single_multikrum_pass(flower_task_identity):
    """Flower's message-API Bulyan keeps the θ best scores of one multi-Krum pass; the paper and Flower's legacy API
    (and fedctl) recompute the scores after each pick. On [0, 1, 1.5, 4, 4.5, 9, 10] (f = 1, θ = 5) the single pass
    keeps 4.5 where the iterative rule keeps 9 (see test_bulyan_hand_computed)."""
    from flwr.app import ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum

    values = [0.0, 1.0, 1.5, 4.0, 4.5, 9.0, 10.0]
    contents = [RecordDict({"arrays": ArrayRecord([np.array([v])])}) for v in values]
    single_pass = sorted(float(c["arrays"].to_numpy_ndarrays()[0][0]) for c in select_multikrum(contents, 1, 5))
    _, chosen = bulyan([{"w": torch.tensor([v], dtype=torch.float64)} for v in values], 1)
    assert single_pass == [0.0, 1.0, 1.5, 4.0, 4.5]
    assert sorted(values[i] for i in chosen) == [0.0, 1.0, 1.5, 4.0, 9.0]
