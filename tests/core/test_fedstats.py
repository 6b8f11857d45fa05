"""FedEntropy and FedFisher: hand-computed weights, closed forms, vmap vs loop, and the engine path."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from fedctl.core.client_stats import (
    diagonal_fisher,
    diagonal_fisher_loop,
    predictive_entropy,
    softmax_weights,
)
from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import ClientUpdate, build_strategy
from fedctl.errors import FedctlError
from tests.core.linear_task import LinearTask
from tests.core.toy_classifier import ToyClassifier


def test_fedentropy_weights_hand_computed():
    # H = [1, 2, 3], T = 0.5, n = [10, 20, 30]: w_i ∝ n_i e^{-2 H_i}
    raw = [10 * math.exp(-2), 20 * math.exp(-4), 30 * math.exp(-6)]
    expect = [r / sum(raw) for r in raw]
    assert softmax_weights([1.0, 2.0, 3.0], [10, 20, 30], 0.5) == pytest.approx(expect, rel=1e-12)
    s = build_strategy("fedentropy", {"temperature": 0.5})
    ups = [ClientUpdate(f"c{i}", {"w": torch.tensor([float(v)], dtype=torch.float64)}, n, stats={"entropy": h})
           for i, (v, n, h) in enumerate([(1, 10, 1.0), (2, 20, 2.0), (3, 30, 3.0)])]
    agg = s.begin(1, {"w": torch.zeros(1, dtype=torch.float64)})
    for u in ups:
        agg.add(u)
    out = agg.result({"w": torch.zeros(1, dtype=torch.float64)})
    assert out["w"].item() == pytest.approx(sum(w * v for w, v in zip(expect, [1, 2, 3])), rel=1e-12)
    assert list(agg.summary()["client_weights"].values()) == pytest.approx(expect, rel=1e-12)
    # without n_i: softmax(−H/T) alone
    nw = softmax_weights([1.0, 2.0, 3.0], None, 0.5)
    z = math.exp(-2) + math.exp(-4) + math.exp(-6)
    assert nw == pytest.approx([math.exp(-2) / z, math.exp(-4) / z, math.exp(-6) / z])


def test_fedentropy_extreme_entropies_do_not_overflow():
    s = build_strategy("fedentropy", {"temperature": 0.001, "use_num_examples": False})
    ups = [ClientUpdate("a", {"w": torch.tensor([1.0])}, 1, stats={"entropy": 5.0}),
           ClientUpdate("b", {"w": torch.tensor([3.0])}, 1, stats={"entropy": 4.0})]
    out = s.aggregate_fit(1, {"w": torch.zeros(1)}, ups)
    assert out["w"].item() == pytest.approx(3.0)  # e^{-1000} relative weight for client a


def test_fisher_merge_equals_closed_form_and_fedavg_when_equal():
    gen = torch.Generator().manual_seed(0)
    thetas = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    fishers = [torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.1 for _ in range(3)]
    ns = [5, 7, 11]
    s = build_strategy("fedfisher")
    ups = [ClientUpdate(str(i), {"w": t}, n, stats={"fisher": {"w": f}}) for i, (t, f, n) in enumerate(zip(thetas, fishers, ns))]
    out = s.aggregate_fit(1, {"w": torch.zeros(3, 4, dtype=torch.float64)}, ups)["w"]
    expect = sum(n * f * t for n, f, t in zip(ns, fishers, thetas)) / sum(n * f for n, f in zip(ns, fishers))
    assert torch.allclose(out.double(), expect, rtol=1e-5)
    equal = [ClientUpdate(str(i), {"w": t}, n, stats={"fisher": {"w": torch.full((3, 4), 0.3, dtype=torch.float64)}})
             for i, (t, n) in enumerate(zip(thetas, ns))]
    fedavg = build_strategy("fedavg").aggregate_fit(1, {"w": torch.zeros(3, 4, dtype=torch.float64)},
                                                     [ClientUpdate(str(i), {"w": t}, n) for i, (t, n) in enumerate(zip(thetas, ns))])
    out_eq = build_strategy("fedfisher").aggregate_fit(1, {"w": torch.zeros(3, 4, dtype=torch.float64)}, equal)
    assert torch.allclose(out_eq["w"].double(), fedavg["w"], rtol=1e-6)


def test_fisher_below_epsilon_falls_back_to_fedavg_bitwise():
    thetas = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])]
    fishers = [torch.tensor([0.0, 5.0]), torch.tensor([1e-12, 1.0])]  # coordinate 0: no Fisher mass
    ups = [ClientUpdate(str(i), {"w": t}, n, stats={"fisher": {"w": f}}) for i, (t, f, n) in enumerate(zip(thetas, fishers, [1, 3]))]
    out = build_strategy("fedfisher", {"epsilon": 1e-8}).aggregate_fit(1, {"w": torch.zeros(2)}, ups)["w"]
    fedavg = build_strategy("fedavg").aggregate_fit(1, {"w": torch.zeros(2)}, [ClientUpdate(str(i), {"w": t}, n) for i, (t, n) in enumerate(zip(thetas, [1, 3]))])["w"]
    assert out[0].item() == fedavg[0].item()  # 1·1 + 3·3 over 4 = 2.5, from the FedAvg accumulator
    assert out[1].item() == pytest.approx((1 * 5 * 2 + 3 * 1 * 6) / (1 * 5 + 3 * 1))


@pytest.mark.parametrize("mode", ["true", "empirical"])
def test_vmap_fisher_equals_per_example_loop(mode):
    task = ToyClassifier()
    model = task.build_model()
    fast = diagonal_fisher(task, model, "client_1", mode=mode, max_examples=40, chunk=8, seed=3)
    slow = diagonal_fisher_loop(task, model, "client_1", mode=mode, max_examples=40, chunk=8, seed=3)
    assert fast.keys() == slow.keys()
    for k in fast:
        assert torch.allclose(fast[k], slow[k], atol=1e-5, rtol=1e-5), k
        assert fast[k].abs().sum() > 0


def test_predictive_entropy_matches_direct_computation():
    task = ToyClassifier()
    model = task.build_model()
    h = predictive_entropy(task, model, "client_0", max_examples=50, batch_size=7)
    with torch.no_grad():
        p = torch.softmax(model(task.x[0][-50:]), -1)
    assert h == pytest.approx(float(-(p * p.log()).sum(-1).mean()), rel=1e-5)
    assert 0 < h < math.log(4)


@pytest.mark.parametrize("name", ["fedentropy", "fedfisher"])
def test_engine_runs_stat_strategies_and_learns(name):
    res = run_federated(ToyClassifier(), build_strategy(name), FederationConfig(rounds=4, clients=3), seed=0)
    evals = [r["val_loss"] for r in res.history if r["type"] == "eval"]
    assert evals[-1] < evals[0]
    fits = [r for r in res.history if r["type"] == "fit"]
    assert fits[-1]["local_steps"] == 3 * 6
    if name == "fedentropy":
        assert sum(fits[0]["client_weights"].values()) == pytest.approx(1.0)


def test_stat_strategy_on_task_without_hooks_is_a_clear_error():
    with pytest.raises(FedctlError, match="fedfisher needs per-client statistics.*'linear' does not provide them \\(stat_examples"):
        run_federated(LinearTask(), build_strategy("fedfisher"), FederationConfig(rounds=1), seed=0)


def test_saved_deltas_are_exact_differences(tmp_path):
    fed = FederationConfig(rounds=3, clients=3, save_deltas_every=1, save_deltas_entity="all", checkpoint_every=1)
    run_federated(ToyClassifier(), build_strategy("fedavg"), fed, seed=0, run_dir=tmp_path)
    from fedctl.core.checkpoint import load_checkpoint

    g2 = load_checkpoint(tmp_path / "checkpoints" / "round_002.pt")["model"]
    g3 = load_checkpoint(tmp_path / "checkpoints" / "round_003.pt")["model"]
    d3 = load_file(str(tmp_path / "deltas" / "server" / "round_003.safetensors"))
    for k in d3:
        assert torch.allclose(d3[k], g3[k] - g2[k], atol=1e-7)
    clients = sorted(p.stem for p in (tmp_path / "deltas" / "clients" / "round_003").iterdir())
    assert clients == ["client_0", "client_1", "client_2"]
    # FedAvg: the server delta is the example-weighted mean of the client deltas
    ns = [96, 112, 128]
    cd = [load_file(str(tmp_path / "deltas" / "clients" / "round_003" / f"{c}.safetensors")) for c in clients]
    for k in d3:
        mean = sum(n * d[k] for n, d in zip(ns, cd)) / sum(ns)
        assert torch.allclose(d3[k], mean, atol=1e-6)
