"""Differential privacy: what DP accepts runs the mechanism its ε is for, what it refuses it names, buffers, JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.rundir import RunDir
from fedctl.core.strategies import STRATEGIES, build_strategy
from fedctl.core.strategies.base import ClientUpdate, Strategy
from fedctl.core.strategies.dp import DifferentialPrivacy, dp_config, update_norm, wrap_dp
from fedctl.errors import FedctlError
from tests.core.bn_task import BatchNormTask
from tests.core.linear_task import LinearTask
from tests.core.toy_classifier import ToyClassifier

FED = dict(rounds=3, clients=4, fraction=1.0, min_fit_clients=1)
MEAN_STRATEGIES = {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "fedbn", "fedper"}
STATS_STRATEGIES = {"fedentropy", "fedfisher"}
REPORTS_STRATEGIES = {"fednova", "qfedavg"}  # the server step uses client reports the noise does not cover


def train(strategy, task=None, **fed):
    return run_federated(task or LinearTask(), strategy, FederationConfig(**{**FED, **fed}), seed=0)


def dp(inner, fed=None, **options):
    f = {**FED, **(fed or {})}
    return wrap_dp(inner, options, num_clients=f["clients"], fraction=f["fraction"],
                   min_fit_clients=f["min_fit_clients"], seed=0)


def opacus_epsilon(noise_multiplier, steps, delta=1e-5):
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return acc.get_epsilon(delta)


class StepRecorder(Strategy):
    """FedAvg's round that records what its server step is given."""

    name = "steprecorder"

    def __init__(self):
        self.aggregated = []

    def step(self, server_round, global_state, aggregated):
        self.aggregated.append({k: v.clone() for k, v in aggregated.items()})
        return aggregated


# -- server mode: the release is θ + Σ clip(Δ_i) / m + N(0, (zC/m)²) -----------------------------------------------

def test_server_mode_releases_the_uniform_mean_of_clipped_updates_with_a_fixed_denominator():
    g = {"w": torch.zeros(2), "n": torch.tensor(5)}
    strategy = DifferentialPrivacy(build_strategy("fedavg"), dp_config({"clipping_norm": 1.0}),
                                   num_clients=3, num_sampled=3, seed=0)
    agg = strategy.begin(1, g)
    # norm 5 → clipped to (0.6, 0.8); norm 0.3 → unchanged; weights 10 vs 1000 examples play no part
    agg.add(ClientUpdate("a", {"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(9)}, 10))
    agg.add(ClientUpdate("b", {"w": torch.tensor([0.3, 0.0]), "n": torch.tensor(7)}, 1000))
    out = agg.result(g)  # the third sampled client failed: it adds 0, the denominator stays m = 3
    assert torch.allclose(out["w"], torch.tensor([0.9 / 3, 0.8 / 3]), rtol=1e-7, atol=0)
    assert out["n"].item() == 5  # integer tensors keep the global value
    s = agg.summary()
    assert s["dp_clipped_fraction"] == 0.5 and s["dp_update_norm"] == pytest.approx(2.65) and s["dp_epsilon"] == math.inf


def test_server_mode_noise_has_std_z_c_over_m_and_is_seeded():
    g = {"w": torch.zeros(4000)}
    cfg = dp_config({"clipping_norm": 2.0, "noise_multiplier": 1.5})
    strategy = DifferentialPrivacy(build_strategy("fedavg"), cfg, num_clients=4, num_sampled=2, seed=3)
    agg = strategy.begin(7, g)
    agg.add(ClientUpdate("a", {"w": torch.zeros(4000)}, 1))
    out = agg.result(g)["w"]
    expected = torch.randn(4000, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7)) * (1.5 * 2.0 / 2)
    assert torch.equal(out, expected)
    assert float(out.std()) == pytest.approx(1.5, rel=0.05)


def test_inner_server_step_only_post_processes_the_privatised_mean():
    inner = StepRecorder()
    strategy = DifferentialPrivacy(inner, dp_config({"clipping_norm": 0.05, "noise_multiplier": 0.7}),
                                   num_clients=4, num_sampled=4, seed=0)
    res = train(strategy, rounds=2)
    assert len(inner.aggregated) == 2  # the inner strategy never aggregated: its step got the DP release
    assert all(torch.equal(res.model.state_dict()[k], inner.aggregated[-1][k]) for k in inner.aggregated[-1])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("mode", ["server", "client"])
def test_every_strategy_is_accepted_with_the_accountants_epsilon_or_refused_by_name(name, mode):
    accepted = name in MEAN_STRATEGIES if mode == "server" else name not in STATS_STRATEGIES | REPORTS_STRATEGIES
    options = dict(mode=mode, noise_multiplier=1.1, clipping_norm=0.5, delta=1e-5)
    if not accepted:
        with pytest.raises(FedctlError, match=f"federation.dp \\(mode: {mode}\\) cannot wrap strategy {name}: ") as exc:
            dp(build_strategy(name), **options)
        reason = (STRATEGIES[name].aggregation_rule if mode == "server" else
                  STRATEGIES[name].uses_client_reports or "statistics of their data")
        assert reason in exc.value.message and "no guarantee" in exc.value.message
        assert "fedavg" in exc.value.hint
        return
    task = (ToyClassifier(num_clients=4, steps=2) if name == "krum" else BatchNormTask(steps=2) if name == "fedbn"
            else LinearTask(steps=2))
    per_round = 3 if name == "bulyan" else 2  # Bulyan needs 4f + 3 = 3 clients with f = 0
    sampling = {"fraction": 0.5, "min_fit_clients": per_round}
    res = train(dp(build_strategy(name), sampling, **options), task, **sampling,
                local_keys=["bias"] if name == "fedper" else [])
    fits = [r for r in res.history if r["type"] == "fit"]
    assert [r["round"] for r in fits] == [1, 2, 3] and all(r["clients"] == per_round for r in fits)
    z = 1.1 if mode == "server" else 1.1 / 2  # client mode: one client's release has sensitivity 2C
    for r in fits:
        assert r["dp_epsilon"] == pytest.approx(opacus_epsilon(z, r["round"]), rel=1e-12)
        assert r["dp_delta"] == 1e-5
    assert fits[0]["dp_epsilon"] < fits[1]["dp_epsilon"] < fits[2]["dp_epsilon"]


def test_the_accepted_set_is_exactly_the_mean_strategies():
    """A strategy added later must be classified on purpose (aggregation_rule, or a plain mean + step)."""
    assert {n for n, cls in STRATEGIES.items() if build_strategy(n).not_a_mean() is None} == MEAN_STRATEGIES


def test_lora_svd_merging_is_refused_and_naive_follows_its_strategy():
    from fedctl.tasks.glue.aggregation import LoraSpaceStrategy

    with pytest.raises(FedctlError, match="cannot wrap strategy fedavg: it merges in ΔW"):
        dp(LoraSpaceStrategy(build_strategy("fedavg"), merge="svd"), noise_multiplier=1.0)
    assert isinstance(dp(LoraSpaceStrategy(build_strategy("fedadam"), merge="naive"), noise_multiplier=1.0),
                      DifferentialPrivacy)
    with pytest.raises(FedctlError, match="fedmedian"):
        dp(LoraSpaceStrategy(build_strategy("fedmedian"), merge="naive"), noise_multiplier=1.0)


def test_training_config_refuses_before_building_the_task():
    from fedctl.run.recipe import resolve

    with pytest.raises(FedctlError, match="cannot wrap strategy krum"):
        resolve("mamba", sets=["federation.strategy=krum", "federation.dp.noise_multiplier=1.0"])
    with pytest.raises(FedctlError, match="clip = 'adaptive' is invalid: it must be fixed with mode: client"):
        dp_config({"mode": "client", "clip": "adaptive"})


# -- client mode: clipped and noised on the client, before the update leaves ---------------------------------------

class UpdateRecorder(Strategy):
    """A Krum-like strategy (own aggregator) that records every update it is given."""

    name = "updaterecorder"

    def __init__(self):
        self.updates = []

    def begin(self, server_round, global_state, workspace=None):
        agg = super().begin(server_round, global_state, workspace)
        add = agg.add

        def recording_add(update):
            self.updates.append((update_norm(update.state, global_state), update.num_examples))
            add(update)

        agg.add = recording_add
        return agg


def test_client_mode_clips_on_the_client_and_weighs_clients_equally():
    raw = UpdateRecorder()
    train(dp(raw, mode="client", clipping_norm=math.inf))
    clip = 0.5 * min(n for n, _ in raw.updates)
    seen = UpdateRecorder()
    res = train(dp(seen, mode="client", clipping_norm=clip))
    assert len(seen.updates) == 12
    assert all(n == pytest.approx(clip, rel=1e-6) and w == 1 for n, w in seen.updates)
    assert all(r["dp_epsilon"] == math.inf for r in res.history if r["type"] == "fit")


def test_client_mode_update_is_clipped_and_noised_by_the_client_with_its_own_seed():
    from fedctl.core.engine import prepare_client
    from fedctl.core.instructions import ClientInstructions
    from fedctl.core.local import train_client

    def client(instructions):
        task = LinearTask(steps=2)
        model = task.build_model()
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        cfg = prepare_client(0, 1, 2, instructions, start)
        train_client(task, model, "client_2", cfg, list(start))
        return start, model.state_dict(), cfg.seed

    strategy = dp(build_strategy("fedavg"), mode="client", clipping_norm=0.01, noise_multiplier=3.0)
    start, plain, _ = client(ClientInstructions())
    _, private, seed = client(strategy.configure_fit(1))
    factor = 0.01 / update_norm(plain, start)
    assert factor < 1
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    for k, v in private.items():  # start + clip(Δ) + N(0, (zC)²), the noise drawn from the client's seed
        expected = start[k] + (plain[k] - start[k]) * factor + torch.randn(v.shape, generator=gen) * 0.03
        assert torch.allclose(v, expected, atol=1e-6, rtol=0)


def test_adaptive_clipping_moves_the_norm_towards_the_target_quantile():
    strategy = dp(build_strategy("fedavg"), clip="adaptive", clipping_norm=1e-3, clip_norm_lr=0.5,
                  target_clipped_quantile=0.5)
    res = train(strategy, rounds=4)
    norms = [r["dp_clipping_norm"] for r in res.history if r["type"] == "fit"]
    # all updates exceed 1e-3, so b = (0 − 4/2)/4 + 1/2 = 0 and C grows by exp(0.25) each round (z = 0: no count noise)
    assert norms == pytest.approx([1e-3 * math.exp(0.25 * i) for i in range(4)])
    assert isinstance(strategy, DifferentialPrivacy) and strategy.state_dict()["clipping_norm"] > norms[-1]


def test_bad_options_name_the_valid_ones():
    with pytest.raises(FedctlError, match="unknown federation.dp option 'sigma'"):
        dp_config({"sigma": 1.0})
    with pytest.raises(FedctlError, match="mode"):
        dp_config({"mode": "local"})
    with pytest.raises(FedctlError, match="clipping_norm"):
        dp_config({"noise_multiplier": 1.0, "clipping_norm": "inf"})
    with pytest.raises(FedctlError, match="buffers"):
        dp_config({"buffers": "local"})


# -- buffers: BatchNorm running statistics ----------------------------------------------------------------------------

class BatchNormToy(ToyClassifier):
    name = "toybn"

    def build_model(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(self.dim, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, self.classes))


@pytest.mark.parametrize("mode", ["server", "client"])
def test_batchnorm_statistics_are_refused_unless_private_and_never_negative(mode):
    with pytest.raises(FedctlError, match="floating buffers .*'1.running_mean'") as exc:
        train(dp(build_strategy("fedavg"), {"clients": 3}, mode=mode, noise_multiplier=1.0), BatchNormToy(),
              clients=3)
    assert "federation.dp.buffers=private" in exc.value.hint
    inner = StepRecorder()
    res = train(dp(inner, {"clients": 3}, mode=mode, noise_multiplier=10.0, clipping_norm=1.0, buffers="private"),
                BatchNormToy(), clients=3)
    noised = [a["1.running_var"] for a in inner.aggregated]
    assert min(float(v.min()) for v in noised) < 0  # the noise did drive variances negative ...
    final = res.model.state_dict()["1.running_var"]
    assert float(final.min()) >= 0 and torch.equal(final, noised[-1].clamp_min(0))  # ... and the clamp undid only that
    evals = [r for r in res.history if r["type"] == "eval"]
    assert evals and all(math.isfinite(r["val_loss"]) for r in evals)


# -- non-finite evaluation and metrics.jsonl ----------------------------------------------------------------------------

class NaNAfterRound1(LinearTask):
    def evaluate(self, model, client_id=None):
        out = super().evaluate(model, client_id)
        self.calls = getattr(self, "calls", 0) + 1
        return {**out, "val_loss": out["val_loss"] if self.calls == 1 else float("nan"),
                "val_ppl": 1.0 if self.calls == 1 else float("inf")}


def test_non_finite_evaluation_stops_the_run_and_metrics_stay_json(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(FedctlError, match=r"round 2: the global evaluation is not finite \(val_loss = nan, "
                                          r"val_ppl = inf\); stopped, metrics.jsonl has null") as exc:
        run_federated(NaNAfterRound1(), build_strategy("fedavg"),
                      FederationConfig(**{**FED, "rounds": 4, "checkpoint_every": 10}), seed=0, run_dir=run_dir)
    assert "federation.dp.noise_multiplier" in exc.value.hint
    lines = run_dir.metrics_path.read_text().splitlines()

    def strict(const):
        raise ValueError(f"not JSON: {const}")

    records = [json.loads(line, parse_constant=strict) for line in lines]
    evals = [r for r in records if r["type"] == "eval"]
    assert [(r["round"], r["val_loss"] is None, r["val_ppl"]) for r in evals] == [(1, False, 1.0), (2, True, None)]
    assert [p.name for p in sorted((run_dir.path / "checkpoints").glob("round_*.pt"))] == ["round_002.pt"]


def test_json_safe_writes_null_for_every_non_finite_float():
    from fedctl.utils.io import dumps_json

    text = dumps_json({"a": float("nan"), "b": [1.0, float("-inf"), {"c": float("inf")}], "d": (2, "x")})
    assert text == '{"a": null, "b": [1.0, null, {"c": null}], "d": [2, "x"]}'


def test_ds2_batchnorm_statistics_refused_then_private_and_clamped():
    """DS2 tiny (the model the defence benchmark trains): noise on its BatchNorm variances made evaluation NaN."""
    from fedctl.tasks.asr.models import build_asr_model

    model = build_asr_model("ds2", "tiny").eval()
    keys = list(model.state_dict())  # the asr task shares every tensor, BatchNorm statistics included
    bn_vars = [f"{n}.running_var" for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert len(bn_vars) >= 2
    refusing = DifferentialPrivacy(build_strategy("fedavg"), dp_config({"noise_multiplier": 10.0}),
                                   num_clients=2, num_sampled=2, seed=0)
    with pytest.raises(FedctlError, match="floating buffers computed from client data .*'bn1.running_mean'"):
        refusing.check_model(model, keys)
    strategy = DifferentialPrivacy(build_strategy("fedavg"), dp_config({"noise_multiplier": 10.0, "buffers": "private"}),
                                   num_clients=2, num_sampled=2, seed=0)
    strategy.check_model(model, keys)
    assert strategy.variance_keys == bn_vars
    g = {k: v.detach().clone() for k, v in model.state_dict().items()}
    agg = strategy.begin(1, g)
    for cid in ("a", "b"):
        agg.add(ClientUpdate(cid, {k: v.clone() for k, v in g.items()}, 1))
    noised = agg.result(g)
    assert any(float(noised[k].min()) < 0 for k in bn_vars)  # what the server step gets: negative variances
    new = strategy.step(1, g, dict(noised))
    assert all(float(new[k].min()) >= 0 for k in bn_vars)
    assert all(torch.equal(new[k], noised[k]) for k in g if k not in bn_vars)  # nothing else is touched
    features, lengths = torch.randn(60, 1, model.config.n_freq), torch.tensor([60])
    outputs = []
    for state in (noised, new):
        model.load_state_dict(state)
        with torch.no_grad():
            outputs.append(model(features, lengths)[0])
    assert not torch.isfinite(outputs[0]).all() and torch.isfinite(outputs[1]).all()
