"""Client-level differential privacy around a mean-aggregating strategy (DP-FedAvg, McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"; adaptive clipping, Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping").

What runs, and what the reported ε is a guarantee for (`dp_epsilon` at `dp_delta` in every `fit` row):

`mode: server` (central DP; the server is trusted, whoever sees the models it releases is not). Each round the
server releases  x̄ = θ + (1/m)·Σ_i clip_C(Δ_i) + N(0, (z·C/m)²·I),  Δ_i = θ_i − θ over the floating shared tensors,
m = the number of clients sampled per round (a fixed denominator: a client that fails adds nothing). This is the
Gaussian mechanism with noise multiplier z on a sum of sensitivity C when one client's data is added or removed.
Clients weigh equally (num_examples is not used) and the wrapped strategy only gets `step()` on x̄: a server
optimizer (FedAvgM, FedAdam, FedYogi, FedAdagrad) is post-processing and keeps the guarantee. A strategy that
aggregates by its own rule sees individual updates and is refused by name (FedMedian, FedTrimmedAvg, Krum:
robust statistics of the individual updates; FedEntropy, FedFisher: weights from client statistics the noise does
not cover; LoRA's svd merging: ΔW = B·A is not linear in the update).

`mode: client` (local DP; nobody is trusted with a client's update). Each client clips its own update and adds
N(0, (z·C)²·I) before it leaves (`fedctl.core.local.train_client`: in process, in worker processes and on Flower
SuperNodes alike, and saved client deltas are the noised ones). Two data sets of one client give updates at
distance ≤ 2C, so each release is a Gaussian mechanism with noise multiplier z/2; everything the server does
with the noised updates is post-processing, so every strategy is accepted except those that ask clients for
un-noised statistics (FedEntropy, FedFisher) or whose server step uses other client reports (FedNova's step counts);
SCAFFOLD is accepted (each client derives Δc_i from its noised update: post-processing); the server weighs clients equally (num_examples is not a noised
value). The reported ε is that of one client that takes part in every round. `clip: adaptive` is refused here
(it needs each client's un-noised clipped bit).

Accounting: opacus's RDP accountant, composed over the rounds so far, with sample rate 1 — no amplification by
sampling. fedctl samples exactly m of the K clients without replacement; opacus's amplification bound is for
Poisson sampling and does not hold for that (Flower 1.41's accountant refuses amplification with fixed-size
sampling for the same reason), so ε is the bound for a client sampled in every round. `clip: adaptive` moves C
towards the `target_clipped_quantile` γ of update norms, C ← C·exp(−η_C·(b̃ − γ)), with b̃ = (Σ_i (b_i − ½) +
N(0, σ_b²))/m + ½ (b_i = 1 when client i was not clipped; default σ_b = m/20) and the update noise raised to
z_Δ = (z⁻² − (2σ_b)⁻²)^(−½), so that the two queries together cost what noise multiplier z costs.

Buffers: floating tensors that travel but are not parameters (BatchNorm's running mean and variance) are computed
from private data and are refused by default (`buffers: refuse`, the Error names one). `buffers: private` clips
and noises them with the update (they are covered by ε) and, after the server step, clamps every BatchNorm
running variance at 0 (post-processing: a noised variance can be negative, which makes evaluation NaN).
Non-floating tensors (num_batches_tracked) keep the global value under DP.

Not covered by ε, in both modes: the metrics clients report (train_loss, steps, …; as in Flower), and what the
server records from raw updates in `mode: server` (saved client deltas, `dp_update_norm`, `dp_clipped_fraction`).
With z = 0 the wrapper only clips and reports ε = inf.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from fedctl.core.aggregate import State
from fedctl.core.config import check_range
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy, innermost
from fedctl.errors import FedctlError


@dataclass
class DPConfig:
    """`federation.dp`: Flower's option names where Flower has them."""

    mode: str = "server"  # server: noise once on the aggregate; client: noise on every clipped update
    clip: str = "fixed"  # fixed, or adaptive (Andrew et al. 2021)
    clipping_norm: float = 1.0  # C (adaptive: the initial value, Flower's initial_clipping_norm); inf: no clipping
    noise_multiplier: float = 0.0  # z: noise std in units of C
    target_clipped_quantile: float = 0.5  # adaptive: γ, the fraction of updates left unclipped
    clip_norm_lr: float = 0.2  # adaptive: η_C, the geometric step of C
    clipped_count_stddev: float | None = None  # adaptive: σ_b of the unclipped-count query; None: m / 20
    delta: float = 1e-5  # δ of the reported (ε, δ)
    buffers: str = "refuse"  # floating non-parameter tensors that travel (BatchNorm statistics): refuse | private


# noise std in units of the clipping norm (the attack's --defense-noise is checked by the same function)
check_noise_multiplier = check_range(low=0, hint="the Gaussian noise std in units of the clipping norm, "
                                                  "e.g. 1.0; 0 adds no noise")


def dp_config(options: dict[str, Any]) -> DPConfig:
    """A checked DPConfig from `federation.dp` (unknown keys and bad values are errors naming the valid ones)."""
    valid = {f.name for f in fields(DPConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise FedctlError(f"unknown federation.dp option '{unknown[0]}'", f"valid options: {', '.join(sorted(valid))}")
    cfg = DPConfig(**options)
    for key in ("clipping_norm", "noise_multiplier", "clip_norm_lr", "target_clipped_quantile", "delta"):
        value = getattr(cfg, key)
        if isinstance(value, str) and value.lower() in ("inf", ".inf"):
            value = math.inf
        try:
            setattr(cfg, key, float(value))
        except (TypeError, ValueError):
            raise FedctlError(f"federation.dp.{key} = {value!r} is not a number", f"e.g. --set federation.dp.{key}=1.0") from None
    checks = [
        (cfg.mode in ("server", "client"), "mode", "server or client"),
        (cfg.clip in ("fixed", "adaptive"), "clip", "fixed or adaptive"),
        (cfg.buffers in ("refuse", "private"), "buffers", "refuse or private"),
        (cfg.mode == "server" or cfg.clip == "fixed", "clip",
         "fixed with mode: client (adaptive clipping needs each client's un-noised clipped bit)"),
        (cfg.clipping_norm > 0, "clipping_norm", "> 0 (inf: no clipping)"),
        (0 < cfg.target_clipped_quantile < 1, "target_clipped_quantile", "in (0, 1)"),
        (cfg.clip_norm_lr >= 0, "clip_norm_lr", ">= 0"),
        (0 < cfg.delta < 1, "delta", "in (0, 1)"),
        (cfg.noise_multiplier == 0 or math.isfinite(cfg.clipping_norm), "clipping_norm",
         "finite when noise_multiplier > 0 (noise is in units of it)"),
        (cfg.clip == "fixed" or math.isfinite(cfg.clipping_norm), "clipping_norm", "finite with clip: adaptive"),
    ]
    check_noise_multiplier(cfg.noise_multiplier, "federation.dp.noise_multiplier")
    for ok, key, want in checks:
        if not ok:
            raise FedctlError(f"federation.dp.{key} = {getattr(cfg, key)!r} is invalid: it must be {want}",
                              f"--set federation.dp.{key}=…")
    return cfg



SERVER_MODE_STRATEGIES = "fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox, fedbn, fedper"


def check_strategy(strategy: Strategy, cfg: DPConfig) -> None:
    """Refuse, naming it and why, a strategy for which the accountant's ε would be no guarantee (module docstring)."""
    if cfg.mode == "server":
        reason = strategy.not_a_mean()
        if reason is not None:
            raise FedctlError(
                f"federation.dp (mode: server) cannot wrap strategy {strategy.name}: it {reason}, so the "
                "accountant's ε (Gaussian noise on the uniform mean of clipped updates) would be no guarantee",
                f"use one of {SERVER_MODE_STRATEGIES} with federation.dp, or --set federation.dp.mode=client "
                "(each client noises its own update; every strategy that asks no client statistics)")
    elif (reports := innermost(strategy).uses_client_reports) is not None:
        raise FedctlError(
            f"federation.dp (mode: client) cannot wrap strategy {strategy.name}: its server step uses {reports}, "
            "which the noise does not cover, so the accountant's ε would be no guarantee",
            "use another strategy with federation.dp (e.g. fedavg, fedprox, bulyan, scaffold in mode: client)")
    elif strategy.configure_fit(1).wants_stats:
        raise FedctlError(
            f"federation.dp (mode: client) cannot wrap strategy {strategy.name}: its clients report statistics "
            "of their data (entropy, Fisher) that the noise does not cover, so the accountant's ε would be no guarantee",
            "use another strategy with federation.dp (e.g. fedavg, fedadam, fedmedian, krum in mode: client)")


def update_norm(state: State, global_state: State) -> float:
    """Global L2 norm of state − global over the floating tensors (float64 accumulation)."""
    total = 0.0
    for k, v in state.items():
        if v.is_floating_point():
            total += float((v.double() - global_state[k].double()).pow(2).sum())
    return math.sqrt(total)


def clip_factor(norm: float, clipping_norm: float) -> float:
    """min(1, C / ‖Δ‖): the factor that brings an update of L2 norm `norm` inside the ball of radius C."""
    return min(1.0, clipping_norm / norm) if norm > 0 else 1.0


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of `rounds` Gaussian mechanisms of this noise multiplier (in units of the sensitivity), composed with
    opacus's RDP accountant, without amplification by sampling (see the module docstring); inf when z = 0."""
    if noise_multiplier <= 0 or rounds < 1:
        return math.inf
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, 1.0, rounds)]
    return float(acc.get_epsilon(delta))


def _noise_like(state: State, std: float, gen: torch.Generator) -> State:
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.device, v.dtype) * std
            for k, v in state.items() if v.is_floating_point()}


@torch.no_grad()
def privatise_update(params: State, start: State, clipping_norm: float, noise_std: float, seed: int) -> float:
    """`mode: client`, on the client: params ← start + clip_C(params − start) + N(0, noise_std²), in place, over the
    floating tensors (others go back to `start`); the noise is seeded by the client's seed. Returns ‖Δ‖ before."""
    norm = update_norm(params, start)
    factor = clip_factor(norm, clipping_norm)
    noise = _noise_like(start, noise_std, torch.Generator().manual_seed(seed * 1_000_003 + 17)) if noise_std > 0 else {}
    for k, v in params.items():
        g = start[k]
        if not v.is_floating_point():
            v.copy_(g)
            continue
        delta = (v - g) * factor
        if k in noise:
            delta = delta + noise[k]
        v.copy_(g + delta)
    return norm


class _CentralMean(Aggregator):
    """`mode: server`: Σ clip_C(Δ_i) streamed in float32 (float64 for float64 tensors); result: θ + Σ/m + noise."""

    def __init__(self, owner: DifferentialPrivacy, global_state: State, server_round: int):
        self.owner, self.global_state, self.server_round = owner, global_state, server_round
        self.norms: list[float] = []
        self.clipping_norm = owner.clipping_norm  # this round's C (adaptive clipping changes it in step())
        self.gen = torch.Generator().manual_seed(owner.seed * 1_000_003 + server_round)
        self.sum: State = {k: torch.zeros_like(v, dtype=torch.float64 if v.dtype == torch.float64 else torch.float32)
                           for k, v in global_state.items() if v.is_floating_point()}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: ClientUpdate) -> None:
        norm = update_norm(update.state, self.global_state)
        self.norms.append(norm)
        factor = clip_factor(norm, self.clipping_norm)
        for k, acc in self.sum.items():
            acc.add_((update.state[k].to(acc.dtype) - self.global_state[k].to(acc.dtype)) * factor)
        self._count += 1

    def result(self, global_state: State) -> State:
        o = self.owner
        m = max(1, o.num_sampled)  # fixed denominator: a client that failed adds 0, the sensitivity stays C / m
        std = o.update_noise_std() / m
        noise = _noise_like(self.sum, std, self.gen) if std > 0 else {}
        out: State = {}
        for k, g in global_state.items():
            if k not in self.sum:
                out[k] = g.clone()
                continue
            mean = self.sum[k] / m
            if k in noise:
                mean = mean + noise[k].to(mean.dtype)
            out[k] = (g.to(mean.dtype) + mean).to(g.dtype)
        return out

    def summary(self) -> dict[str, Any]:
        unclipped = sum(n <= self.clipping_norm for n in self.norms)
        return {
            **self.owner.privacy_record(self.server_round),
            "dp_clipping_norm": self.clipping_norm,
            "dp_clipped_fraction": 1.0 - unclipped / max(1, len(self.norms)),
            "dp_update_norm": sum(self.norms) / max(1, len(self.norms)),
        }


class _LocalNoised(Aggregator):
    """`mode: client`: updates arrive clipped and noised; the inner aggregator gets them with equal weights and the
    global value for non-floating tensors (a client's counter is no noised value)."""

    def __init__(self, owner: DifferentialPrivacy, inner: Aggregator, global_state: State, server_round: int):
        self.owner, self.inner, self.global_state, self.server_round = owner, inner, global_state, server_round

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def min_count(self) -> int:  # type: ignore[override]
        return self.inner.min_count

    def add(self, update: ClientUpdate) -> None:
        state = {k: v if v.is_floating_point() else self.global_state[k] for k, v in update.state.items()}
        self.inner.add(ClientUpdate(update.client_id, state, 1, update.metrics, update.stats))

    def result(self, global_state: State) -> State:
        return self.inner.result(global_state)

    def summary(self) -> dict[str, Any]:
        return {**self.inner.summary(), **self.owner.privacy_record(self.server_round),
                "dp_clipping_norm": self.owner.clipping_norm}


class DifferentialPrivacy(Strategy):
    """Wraps `strategy`: clip each client's update, add Gaussian noise, account (ε, δ). See the module docstring."""

    def __init__(self, strategy: Strategy, cfg: DPConfig, *, num_clients: int, num_sampled: int, seed: int = 0):
        check_strategy(strategy, cfg)
        self.inner, self.cfg = strategy, cfg
        self.name = strategy.name
        self.num_clients, self.num_sampled, self.seed = num_clients, num_sampled, seed
        self.clipping_norm = cfg.clipping_norm
        self.variance_keys: list[str] = []  # BatchNorm running variances that travel (buffers: private)
        self._last: _CentralMean | None = None

    @property
    def count_stddev(self) -> float:
        c = self.cfg.clipped_count_stddev
        return self.num_sampled / 20 if c is None else float(c)

    def noise_multiplier(self) -> float:
        """The noise multiplier the accountant composes per round (in units of the sensitivity): z in server mode
        (adaptive clipping included: z_Δ and σ_b together cost z); z/2 in client mode (sensitivity 2C)."""
        z = self.cfg.noise_multiplier
        return z / 2 if self.cfg.mode == "client" else z

    def privacy_record(self, server_round: int) -> dict[str, Any]:
        return {"dp_epsilon": epsilon(self.noise_multiplier(), server_round, self.cfg.delta),
                "dp_delta": self.cfg.delta}

    def update_noise_std(self) -> float:
        """z·C for the updates; with adaptive clipping z is raised to z_Δ so that the count query is paid for."""
        z = self.cfg.noise_multiplier
        if z <= 0:
            return 0.0
        if self.cfg.clip == "adaptive" and self.count_stddev > 0:
            rest = z ** -2 - (2 * self.count_stddev) ** -2
            if rest <= 0:
                raise FedctlError(
                    f"federation.dp: noise_multiplier {z} is too small for clipped_count_stddev {self.count_stddev}",
                    "raise noise_multiplier or clipped_count_stddev (Andrew et al. 2021 need z < 2·σ_b)")
            z = rest ** -0.5
        return z * self.clipping_norm

    def check_model(self, model: nn.Module, shared_keys: list[str]) -> None:
        """Refuse floating buffers that travel unless `buffers: private`; note the BatchNorm running variances."""
        self.inner.check_model(model, shared_keys)
        state = model.state_dict()
        params = {name for name, _ in model.named_parameters()}
        buffers = [k for k in shared_keys if k not in params and state[k].is_floating_point()]
        if buffers and self.cfg.buffers == "refuse":
            raise FedctlError(
                f"federation.dp: the model shares {len(buffers)} floating buffers computed from client data "
                f"(e.g. '{buffers[0]}', BatchNorm running statistics), which clipping and noise do not protect "
                "unless they travel inside the noised update",
                "--set federation.dp.buffers=private (clipped and noised with the update, covered by ε; running "
                "variances clamped at 0), or use a model without BatchNorm")
        self.variance_keys = [f"{name}.running_var" if name else "running_var"
                              for name, mod in model.named_modules()
                              if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.running_var is not None]
        self.variance_keys = [k for k in self.variance_keys if k in shared_keys]

    def configure_fit(self, server_round: int) -> ClientInstructions:
        instructions = self.inner.configure_fit(server_round)
        if self.cfg.mode == "client":
            instructions = dataclasses.replace(instructions, dp_clipping_norm=self.clipping_norm,
                                               dp_noise_std=self.update_noise_std())
        return instructions

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        if self.cfg.mode == "client":
            self._last = None
            return _LocalNoised(self, self.inner.begin(server_round, global_state, workspace), global_state,
                                server_round)
        self._last = _CentralMean(self, global_state, server_round)
        return self._last

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        new = self.inner.step(server_round, global_state, aggregated)
        for k in self.variance_keys:  # post-processing: a noised variance may be negative
            new[k] = new[k].clamp_min(0)
        agg = self._last
        if self.cfg.clip == "adaptive" and agg is not None and agg.norms:
            m = max(1, self.num_sampled)
            unclipped = sum(n <= self.clipping_norm for n in agg.norms)
            # Andrew et al.: Σ(b_i − ½) has sensitivity ½, so its noise σ_b counts as multiplier 2σ_b
            noisy = unclipped - len(agg.norms) / 2 + (float(torch.randn((), generator=agg.gen)) * self.count_stddev
                                                     if self.cfg.noise_multiplier > 0 else 0.0)
            b = noisy / m + 0.5
            self.clipping_norm *= math.exp(-self.cfg.clip_norm_lr * (b - self.cfg.target_clipped_quantile))
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "clipping_norm": self.clipping_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "inner" in state:
            self.inner.load_state_dict(state["inner"])
            self.clipping_norm = float(state.get("clipping_norm", self.cfg.clipping_norm))


def wrap_dp(strategy: Strategy, options: dict[str, Any] | None, *, num_clients: int, fraction: float,
            min_fit_clients: int, seed: int) -> Strategy:
    """`strategy` wrapped with DifferentialPrivacy when `federation.dp` is set (non-empty), else itself."""
    if not options:
        return strategy
    cfg = dp_config(dict(options))
    sampled = min(num_clients, max(int(fraction * num_clients), min_fit_clients))
    return DifferentialPrivacy(strategy, cfg, num_clients=num_clients, num_sampled=sampled, seed=seed)
