"""Each strategy's server update against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fedctl.core.aggregate import WeightedMean, coordinate_median, krum_scores, trimmed_mean
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies import ClientUpdate, build_strategy
from fedctl.errors import FedctlError


def upd(cid, values, n):
    return ClientUpdate(cid, {"w": torch.tensor(values, dtype=torch.float32)}, n)


def test_fedavg_weights_by_num_examples():
    s = build_strategy("fedavg")
    out = s.aggregate_fit(1, {"w": torch.zeros(2)}, [upd("a", [1.0, 2.0], 1), upd("b", [4.0, 8.0], 3)])
    # (1·[1,2] + 3·[4,8]) / 4 = [3.25, 6.5]
    assert torch.allclose(out["w"], torch.tensor([3.25, 6.5]))


def test_fedavg_single_client_is_bit_exact():
    x = torch.randn(1000)
    out = build_strategy("fedavg").aggregate_fit(1, {"w": torch.zeros(1000)}, [ClientUpdate("a", {"w": x}, 37)])
    assert torch.equal(out["w"], x)


def test_weighted_mean_streaming_matches_closed_form_in_float64():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(50, dtype=torch.float64, generator=gen) for _ in range(7)]
    ws = [3.0, 1.0, 7.0, 2.0, 5.0, 1.0, 4.0]
    acc = WeightedMean()
    for x, w in zip(xs, ws):
        acc.add({"w": x}, w)
    expect = sum(w * x for w, x in zip(ws, xs)) / sum(ws)
    assert torch.allclose(acc.result()["w"], expect, atol=1e-12)


def test_fedavgm_momentum_two_rounds():
    s = build_strategy("fedavgm", {"server_learning_rate": 0.5, "server_momentum": 0.9})
    x0 = {"w": torch.tensor([1.0, 1.0])}
    # round 1: mean = [0, 2]; g = x − mean = [1, −1]; v = g; x1 = x0 − 0.5·v = [0.5, 1.5]
    x1 = s.aggregate_fit(1, x0, [upd("a", [0.0, 2.0], 1)])
    assert torch.allclose(x1["w"], torch.tensor([0.5, 1.5]))
    # round 2: mean = [0.5, 0.5]; g = [0, 1]; v = 0.9·[1, −1] + [0, 1] = [0.9, 0.1]; x2 = x1 − 0.5·v
    x2 = s.aggregate_fit(2, x1, [upd("a", [0.5, 0.5], 1)])
    assert torch.allclose(x2["w"], torch.tensor([0.05, 1.45]))


def test_fedadam_moments_over_two_rounds():
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-9
    s = build_strategy("fedadam", {"eta": eta, "beta_1": b1, "beta_2": b2, "tau": tau})
    x0 = {"w": torch.tensor([0.0, 1.0])}
    # round 1: Δ = [1, −2]; m = 0.1Δ = [0.1, −0.2]; v = 0.01Δ² = [0.01, 0.04]
    eta1 = eta * math.sqrt(1 - b2**2) / (1 - b1**2)
    x1 = s.aggregate_fit(1, x0, [upd("a", [1.0, -1.0], 1)])
    m1 = torch.tensor([0.1, -0.2])
    v1 = torch.tensor([0.01, 0.04])
    expect1 = x0["w"] + eta1 * m1 / (v1.sqrt() + tau)
    assert torch.allclose(x1["w"], expect1, atol=1e-6)
    assert torch.allclose(s.m_t["w"], m1) and torch.allclose(s.v_t["w"], v1)
    # round 2: client returns x1 + [0.5, 0.5] → Δ = [0.5, 0.5]
    target = x1["w"] + torch.tensor([0.5, 0.5])
    x2 = s.aggregate_fit(2, x1, [ClientUpdate("a", {"w": target}, 1)])
    m2 = 0.9 * m1 + 0.1 * torch.tensor([0.5, 0.5])
    v2 = 0.99 * v1 + 0.01 * torch.tensor([0.25, 0.25])
    eta2 = eta * math.sqrt(1 - b2**3) / (1 - b1**3)
    assert torch.allclose(s.m_t["w"], m2) and torch.allclose(s.v_t["w"], v2)
    assert torch.allclose(x2["w"], x1["w"] + eta2 * m2 / (v2.sqrt() + tau), atol=1e-6)


def test_fedyogi_and_fedadagrad_second_moments():
    x0 = {"w": torch.tensor([0.0])}
    y = build_strategy("fedyogi", {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3})
    out = y.aggregate_fit(1, x0, [upd("a", [2.0], 1)])
    # Δ=2: m = 0.2; v = 0 − 0.01·4·sign(0 − 4) = 0.04; x = 0.01·0.2/(0.2+1e-3)
    assert torch.allclose(y.v_t["w"], torch.tensor([0.04]))
    assert torch.allclose(out["w"], torch.tensor([0.01 * 0.2 / (0.2 + 1e-3)]))
    a = build_strategy("fedadagrad", {"eta": 0.1, "tau": 1e-9})
    a.aggregate_fit(1, x0, [upd("a", [2.0], 1)])
    out2 = a.aggregate_fit(2, {"w": torch.tensor([0.0])}, [upd("a", [1.0], 1)])
    # v = 4 + 1 = 5; m = Δ = 1 (β₁ = 0); x = 0.1·1/√5
    assert torch.allclose(a.v_t["w"], torch.tensor([5.0]))
    assert torch.allclose(out2["w"], torch.tensor([0.1 / math.sqrt(5.0)]), atol=1e-7)


def test_fedprox_sends_mu_and_averages_like_fedavg():
    s = build_strategy("fedprox", {"proximal_mu": 0.3})
    assert s.configure_fit(1) == ClientInstructions(proximal_mu=0.3)
    out = s.aggregate_fit(1, {"w": torch.zeros(1)}, [upd("a", [1.0], 1), upd("b", [3.0], 1)])
    assert torch.allclose(out["w"], torch.tensor([2.0]))


def test_median_odd_and_even():
    states = [{"w": torch.tensor([v, -v])} for v in (1.0, 5.0, 2.0)]
    assert torch.equal(coordinate_median(states)["w"], torch.tensor([2.0, -2.0]))
    states.append({"w": torch.tensor([10.0, -10.0])})
    # sorted 1,2,5,10 → (2+5)/2
    assert torch.equal(coordinate_median(states)["w"], torch.tensor([3.5, -3.5]))
    s = build_strategy("fedmedian")
    out = s.aggregate_fit(1, {"w": torch.zeros(2)}, [ClientUpdate(str(i), st, 100 * i + 1) for i, st in enumerate(states)])
    assert torch.equal(out["w"], torch.tensor([3.5, -3.5]))  # unweighted


def test_trimmed_mean_drops_extremes():
    states = [{"w": torch.tensor([v])} for v in (-100.0, 1.0, 2.0, 3.0, 100.0)]
    # beta 0.2 of 5 → cut 1 each side → mean(1,2,3) = 2
    assert torch.equal(trimmed_mean(states, 0.2)["w"], torch.tensor([2.0]))
    assert torch.equal(trimmed_mean(states, 0.0)["w"], torch.tensor([1.2]))
    with pytest.raises(FedctlError):
        build_strategy("fedtrimmedavg", {"beta": 0.5})


def test_krum_rejects_outlier_and_multikrum_averages():
    pts = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [50.0, 50.0]]
    updates = [upd(f"c{i}", p, 10) for i, p in enumerate(pts)]
    scores = krum_scores([u.state for u in updates], num_malicious_clients=1)
    # K=5, f=1 → sum of the 2 nearest squared distances. c0: 1 (c1) + 1 (c2) = 2; likewise c1..c3.
    assert scores.tolist()[:4] == [2.0, 2.0, 2.0, 2.0]
    # outlier (50,50): nearest (1,1) at 49²+49² = 4802, then (1,0) at 49²+50² = 4901
    assert scores[4].item() == 4802 + 4901
    s = build_strategy("krum", {"num_malicious_clients": 1})
    out = s.aggregate_fit(1, {"w": torch.zeros(2)}, updates)
    assert torch.equal(out["w"], torch.tensor([0.0, 0.0]))  # ties → lowest index
    m = build_strategy("krum", {"num_malicious_clients": 1, "num_clients_to_keep": 4})
    out = m.aggregate_fit(1, {"w": torch.zeros(2)}, updates)
    assert torch.allclose(out["w"], torch.tensor([0.5, 0.5]))
    assert "c4" not in m.last_selected


def test_state_dict_round_trip_continues_identically():
    a = build_strategy("fedadam")
    x = {"w": torch.tensor([0.0, 1.0])}
    x = a.aggregate_fit(1, x, [upd("a", [1.0, -1.0], 1)])
    b = build_strategy("fedadam")
    b.load_state_dict({k: {kk: vv.clone() for kk, vv in v.items()} for k, v in a.state_dict().items()})
    ya = a.aggregate_fit(2, x, [upd("a", [2.0, 2.0], 1)])
    yb = b.aggregate_fit(2, x, [upd("a", [2.0, 2.0], 1)])
    assert torch.equal(ya["w"], yb["w"])


def test_bad_strategy_name_and_option():
    with pytest.raises(FedctlError, match="unknown strategy 'fedavgg'.*fedavg"):
        build_strategy("fedavgg")
    with pytest.raises(FedctlError, match="unknown option 'momentum'.*server_momentum"):
        build_strategy("fedavgm", {"momentum": 0.9})
    with pytest.raises(FedctlError, match="not a valid float"):
        build_strategy("fedadam", {"eta": "fast"})
