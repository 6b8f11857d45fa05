"""Differential privacy around any strategy: identity when off, clipping bound, accountant's ε, adaptive C."""

from __future__ import annotations

import math

import pytest
import torch

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import build_strategy
from fedctl.core.strategies.base import Aggregator, Strategy
from fedctl.core.strategies.dp import DifferentialPrivacy, dp_config, update_norm, wrap_dp
from fedctl.errors import FedctlError
from tests.core.linear_task import LinearTask

FED = dict(rounds=3, clients=4, fraction=1.0, min_fit_clients=1)


def train(strategy, **fed):
    res = run_federated(LinearTask(), strategy, FederationConfig(**{**FED, **fed}), seed=0)
    return res


def dp(inner, fed=None, **options):
    f = {**FED, **(fed or {})}
    return wrap_dp(inner, options, num_clients=f["clients"], fraction=f["fraction"],
                   min_fit_clients=f["min_fit_clients"], seed=0)


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedmedian"])
def test_no_noise_and_no_clipping_is_bit_identical_to_the_wrapped_strategy(name):
    plain = train(build_strategy(name)).model.state_dict()
    wrapped = train(dp(build_strategy(name), noise_multiplier=0.0, clipping_norm=math.inf)).model.state_dict()
    assert all(torch.equal(plain[k], wrapped[k]) for k in plain)


class Recorder(Strategy):
    """FedAvg that records the norm of every update it is given."""

    name = "recorder"

    def __init__(self):
        self.norms = []

    def begin(self, server_round, global_state, workspace=None) -> Aggregator:
        agg = super().begin(server_round, global_state, workspace)
        add, norms = agg.add, self.norms

        def recording_add(update):
            norms.append(update_norm(update.state, global_state))
            add(update)

        agg.add = recording_add
        return agg


def test_clipping_bounds_every_clients_update_norm():
    raw = Recorder()
    train(raw)
    clip = 0.5 * min(raw.norms)  # every update must be clipped
    seen = Recorder()
    res = train(dp(seen, clipping_norm=clip))
    assert len(seen.norms) == 12
    assert max(seen.norms) <= clip * (1 + 1e-6) and min(seen.norms) >= clip * (1 - 1e-6)
    fits = [r for r in res.history if r["type"] == "fit"]
    assert all(r["dp_clipped_fraction"] == 1.0 and r["dp_epsilon"] == math.inf for r in fits)


def test_reported_epsilon_equals_the_rdp_accountants():
    from opacus.accountants import RDPAccountant

    res = train(dp(build_strategy("fedavg"), {"fraction": 0.5}, noise_multiplier=1.1, clipping_norm=1.0, delta=1e-5),
                fraction=0.5, rounds=3)
    fits = [r for r in res.history if r["type"] == "fit"]
    for r in fits:
        acc = RDPAccountant()
        for _ in range(r["round"]):
            acc.step(noise_multiplier=1.1, sample_rate=0.5)
        assert r["dp_epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
        assert r["dp_delta"] == 1e-5
    assert fits[0]["dp_epsilon"] < fits[1]["dp_epsilon"] < fits[2]["dp_epsilon"]


def test_noise_changes_the_model_server_and_client_mode_and_is_seeded():
    a = train(dp(build_strategy("fedavg"), noise_multiplier=0.5, clipping_norm=1.0)).model.state_dict()
    b = train(dp(build_strategy("fedavg"), noise_multiplier=0.5, clipping_norm=1.0)).model.state_dict()
    c = train(dp(build_strategy("fedavg"), mode="client", noise_multiplier=0.5, clipping_norm=1.0)).model.state_dict()
    plain = train(build_strategy("fedavg")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # reproducible
    assert not torch.equal(a["weight"], plain["weight"]) and not torch.equal(c["weight"], a["weight"])


def test_adaptive_clipping_moves_the_norm_towards_the_target_quantile():
    strategy = dp(build_strategy("fedavg"), clip="adaptive", clipping_norm=1e-3, clip_norm_lr=0.5,
                  target_clipped_quantile=0.5)
    res = train(strategy, rounds=4)
    norms = [r["dp_clipping_norm"] for r in res.history if r["type"] == "fit"]
    # all updates exceed 1e-3, so b = 0 and C grows by exp(0.25) each round (noise 0: no count noise)
    assert norms == pytest.approx([1e-3 * math.exp(0.25 * i) for i in range(4)])
    assert isinstance(strategy, DifferentialPrivacy) and strategy.state_dict()["clipping_norm"] > norms[-1]


def test_bad_options_name_the_valid_ones():
    with pytest.raises(FedctlError, match="unknown federation.dp option 'sigma'"):
        dp_config({"sigma": 1.0})
    with pytest.raises(FedctlError, match="mode"):
        dp_config({"mode": "local"})
    with pytest.raises(FedctlError, match="clipping_norm"):
        dp_config({"noise_multiplier": 1.0, "clipping_norm": "inf"})
