"""The round loop: sampling, faults, checkpoints, resume, and equality with a plain training loop."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fedctl.core.checkpoint import list_checkpoints, load_checkpoint
from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated, sample_clients
from fedctl.core.events import ClientFailed, RoundFinished
from fedctl.core.strategies import build_strategy
from fedctl.core.task import client_seed
from fedctl.errors import FedctlError
from tests.core.linear_task import LinearTask


def fed(**kw):
    base = dict(rounds=4, clients=4, fraction=1.0, min_fit_clients=1, checkpoint_every=1)
    base.update(kw)
    return FederationConfig(**base)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sampling_is_seeded_and_respects_min_clients():
    a = sample_clients(10, 0.3, 1, seed=0, server_round=1)
    assert len(a) == 3 and a == sorted(a)
    assert a == sample_clients(10, 0.3, 1, seed=0, server_round=1)
    rounds = {tuple(sample_clients(10, 0.3, 1, seed=0, server_round=r)) for r in range(1, 20)}
    assert len(rounds) > 5  # varies across rounds
    assert len(sample_clients(10, 0.1, 4, seed=0, server_round=1)) == 4
    assert sample_clients(4, 1.0, 1, 0, 1) == [0, 1, 2, 3]


def test_validation_loss_falls():
    res = run_federated(LinearTask(), build_strategy("fedavg"), fed(rounds=6), seed=0)
    evals = [r["val_loss"] for r in res.history if r["type"] == "eval"]
    assert len(evals) == 6
    assert evals[-1] < 0.2 * evals[0]


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox",
                                  "fedmedian", "fedtrimmedavg", "krum"])
def test_every_strategy_runs_and_learns(name):
    args = {"fedavgm": {"server_momentum": 0.5}, "fedadam": {"eta": 0.05}, "fedyogi": {"eta": 0.05},
            "fedadagrad": {"eta": 0.05}, "krum": {"num_clients_to_keep": 2}}.get(name, {})
    res = run_federated(LinearTask(), build_strategy(name, args), fed(rounds=5), seed=0)
    evals = [r["val_loss"] for r in res.history if r["type"] == "eval"]
    assert evals[-1] < evals[0]


def test_raising_and_nan_clients_are_left_out_and_logged(tmp_path):
    events = []
    task = LinearTask(fail={"client_1"}, nan={"client_2"})
    res = run_federated(task, build_strategy("fedavg"), fed(rounds=3, min_fit_clients=2), seed=0,
                        run_dir=tmp_path, on_event=events.append)
    failures = [e for e in events if isinstance(e, ClientFailed)]
    assert {(e.client_id, "NaN" in e.reason or "raised" in e.reason) for e in failures} == {
        ("client_1", True), ("client_2", True)}
    assert len(failures) == 6  # both, every round
    fits = [r for r in res.history if r["type"] == "fit"]
    assert all(r["clients"] == 2 and r["failed"] == ["client_1", "client_2"] for r in fits)
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["failed"] == ["client_1", "client_2"]


def test_too_few_clients_stops_with_error_after_saving(tmp_path):
    task = LinearTask(fail={"client_1", "client_2", "client_3"})
    with pytest.raises(FedctlError, match="only 1 of 4 clients.*min_fit_clients = 2"):
        run_federated(task, build_strategy("fedavg"), fed(rounds=3, min_fit_clients=2), seed=0, run_dir=tmp_path)
    assert (tmp_path / "config.yaml").exists()


def test_resume_after_kill_is_bitwise_identical(tmp_path):
    full = run_federated(LinearTask(), build_strategy("fedadam", {"eta": 0.05}), fed(rounds=5), seed=3,
                         run_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_after_round_2(event):
        if isinstance(event, RoundFinished) and event.server_round == 2:
            raise Killed

    with pytest.raises(Killed):
        run_federated(LinearTask(), build_strategy("fedadam", {"eta": 0.05}), fed(rounds=5), seed=3,
                      run_dir=tmp_path / "b", on_event=kill_after_round_2)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["round_001.pt", "round_002.pt"]
    resumed = run_federated(LinearTask(), build_strategy("fedadam", {"eta": 0.05}), fed(rounds=5), seed=3,
                            run_dir=tmp_path / "b", resume=True)
    for k, v in weights(full.model).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == (tmp_path / "b" / "metrics.jsonl").read_text().count("\n")
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert ckpt["round"] == 5 and ckpt["strategy"] == "fedadam" and "m_t" in ckpt["strategy_state"]


def test_one_client_equals_plain_training_loop():
    """Central = the engine with one client; with kept optimizer state it is exactly a plain loop."""
    steps, rounds = 5, 3
    task = LinearTask(num_clients=1, steps=steps)
    res = run_federated(task, build_strategy("fedavg"), fed(rounds=rounds, clients=1, keep_optimizer_state=True),
                        seed=7)

    # a plain loop written out: one AdamW throughout; each round, batches of 16 from back-to-back seeded
    # permutations of the client's examples (the trainer's documented schedule)
    plain = LinearTask(num_clients=1, steps=steps)
    model = plain.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=plain.lr, weight_decay=0.0)
    n = plain.x[0].shape[0]
    for r in range(1, rounds + 1):
        gen = torch.Generator().manual_seed(client_seed(7, r, 0))
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * 16 // n))])
        for s in range(steps):
            idx = order[16 * s : 16 * (s + 1)]
            nn.functional.mse_loss(model(plain.x[0][idx]), plain.y[0][idx]).backward()
            opt.step()
            opt.zero_grad()
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_fedprox_mu_pulls_clients_towards_global():
    far = run_federated(LinearTask(steps=20, lr=0.2), build_strategy("fedavg"), fed(rounds=1), seed=0)
    near = run_federated(LinearTask(steps=20, lr=0.2), build_strategy("fedprox", {"proximal_mu": 100.0}),
                         fed(rounds=1), seed=0)
    init = LinearTask().build_model().weight
    assert (near.model.weight - init).norm() < 0.5 * (far.model.weight - init).norm()


def test_checkpoint_retention_and_contents(tmp_path):
    run_federated(LinearTask(), build_strategy("fedavgm", {"server_momentum": 0.9}),
                  fed(rounds=4, keep_checkpoints=2), seed=0, run_dir=tmp_path, config={"k": 1})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round_003.pt", "round_004.pt"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "round_004.pt")
    assert ckpt["config"] == {"k": 1}
    assert set(ckpt["strategy_state"]["momentum"]) == {"weight", "bias"}
    assert len([m for m in ckpt["metrics"] if m["type"] == "fit"]) == 4


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    run_federated(LinearTask(), build_strategy("fedavg"), fed(rounds=2), seed=0, run_dir=tmp_path)
    path = tmp_path / "checkpoints" / "round_002.pt"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FedctlError, match="round_002.pt is unreadable or truncated"):
        run_federated(LinearTask(), build_strategy("fedavg"), fed(rounds=3), seed=0, run_dir=tmp_path, resume=True)
