"""Client-level differential privacy around any strategy (DP-FedAvg, McMahan et al. 2018; adaptive clipping,
Andrew et al. 2021 "Differentially Private Learning with Adaptive Clipping").

Each client's update Δ_i = θ_i − θ_global (over the shared tensors) is clipped to L2 norm ≤ C; the wrapped
strategy aggregates the clipped states; Gaussian noise is added to the aggregate before the wrapped strategy's
server step:
- `mode: server` (Flower's DifferentialPrivacyServerSide*): one draw on the aggregate, std = z·C / m for m
  sampled clients (the sensitivity of a mean of m clipped updates is C / m);
- `mode: client` (local noise): each clipped update gets its own N(0, (z·C)²) as it arrives, so the server never
  folds in an un-noised update. In-process clients only; the Flower ServerApp does not run this wrapper.
`clip: adaptive` moves C towards the `target_clipped_quantile` of update norms after each round,
C ← C·exp(−clip_norm_lr·(b̃ − γ)) with b̃ the noised fraction of unclipped updates (count noise std
`clipped_count_stddev`, default m/20 as in the paper) and the update noise multiplier raised so that the pair of
queries costs the privacy of z: z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2).

Privacy spent: (ε, δ) after r rounds from opacus's RDP accountant with noise multiplier z and sampling rate
q = m / K, reported per round as `dp_epsilon` in metrics.jsonl (inf when z = 0). With z = 0 and C = inf the wrapper
changes nothing: the result is bit-identical to the wrapped strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from fedctl.core.aggregate import State
from fedctl.core.config import check_range
from fedctl.core.instructions import ClientInstructions
from fedctl.core.strategies.base import Aggregator, ClientUpdate, Strategy
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


def update_norm(state: State, global_state: State) -> float:
    """Global L2 norm of state − global over the floating tensors (float64 accumulation)."""
    total = 0.0
    for k, v in state.items():
        if v.is_floating_point():
            total += float((v.double() - global_state[k].double()).pow(2).sum())
    return math.sqrt(total)


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of `rounds` Gaussian-mechanism rounds at this noise multiplier and client sampling rate (opacus RDP)."""
    if noise_multiplier <= 0 or rounds < 1:
        return math.inf
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    return float(acc.get_epsilon(delta))


def _noise_like(state: State, std: float, gen: torch.Generator) -> State:
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.device, v.dtype) * std
            for k, v in state.items() if v.is_floating_point()}


class _DPAggregator(Aggregator):
    def __init__(self, owner: DifferentialPrivacy, inner: Aggregator, global_state: State, server_round: int):
        self.owner, self.inner, self.global_state = owner, inner, global_state
        self.server_round = server_round
        self.norms: list[float] = []
        self.clipping_norm = owner.clipping_norm  # this round's C (adaptive clipping changes it in step())
        self.gen = torch.Generator().manual_seed(owner.seed * 1_000_003 + server_round)
        self.weighted_mean = inner.weighted_mean

    @property
    def count(self) -> int:
        return self.inner.count

    def log_weight(self, update: ClientUpdate) -> float:
        return self.inner.log_weight(update)

    def add(self, update: ClientUpdate) -> None:
        o = self.owner
        norm = update_norm(update.state, self.global_state)
        self.norms.append(norm)
        factor = min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0
        std = o.update_noise_std() if o.cfg.mode == "client" else 0.0
        if factor == 1.0 and std == 0.0:  # nothing to change: pass it on untouched (bit-identical)
            self.inner.add(update)
            return
        noise = _noise_like(self.global_state, std, self.gen) if std > 0 else {}
        state = {}
        for k, v in update.state.items():
            if not v.is_floating_point():
                state[k] = v
                continue
            g = self.global_state[k]
            delta = (v - g) * factor
            if k in noise:
                delta = delta + noise[k]
            state[k] = g + delta
        self.inner.add(ClientUpdate(update.client_id, state, update.num_examples, update.metrics, update.stats))

    def result(self, global_state: State) -> State:
        out = self.inner.result(global_state)
        o = self.owner
        if o.cfg.mode == "server" and o.cfg.noise_multiplier > 0:
            std = o.update_noise_std() / max(1, o.num_sampled)
            for k, n in _noise_like(out, std, self.gen).items():
                out[k] = out[k] + n
        return out

    def summary(self) -> dict[str, Any]:
        o = self.owner
        unclipped = sum(n <= self.clipping_norm for n in self.norms)
        return {
            **self.inner.summary(),
            "dp_epsilon": epsilon(o.cfg.noise_multiplier, o.sample_rate, self.server_round, o.cfg.delta),
            "dp_delta": o.cfg.delta,
            "dp_clipping_norm": self.clipping_norm,
            "dp_clipped_fraction": 1.0 - unclipped / max(1, len(self.norms)),
            "dp_update_norm": sum(self.norms) / max(1, len(self.norms)),
        }


class DifferentialPrivacy(Strategy):
    """Wraps `strategy`: clip each client's update, add Gaussian noise, account (ε, δ). See the module docstring."""

    def __init__(self, strategy: Strategy, cfg: DPConfig, *, num_clients: int, num_sampled: int, seed: int = 0):
        self.inner, self.cfg = strategy, cfg
        self.name = strategy.name
        self.num_clients, self.num_sampled, self.seed = num_clients, num_sampled, seed
        self.sample_rate = num_sampled / num_clients
        self.clipping_norm = cfg.clipping_norm
        self._last: _DPAggregator | None = None

    @property
    def count_stddev(self) -> float:
        c = self.cfg.clipped_count_stddev
        return self.num_sampled / 20 if c is None else float(c)

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

    def configure_fit(self, server_round: int) -> ClientInstructions:
        return self.inner.configure_fit(server_round)

    def begin(self, server_round: int, global_state: State, workspace: State | None = None) -> Aggregator:
        self._last = _DPAggregator(self, self.inner.begin(server_round, global_state, workspace), global_state,
                                   server_round)
        return self._last

    def step(self, server_round: int, global_state: State, aggregated: State) -> State:
        new = self.inner.step(server_round, global_state, aggregated)
        agg = self._last
        if self.cfg.clip == "adaptive" and agg is not None and agg.norms:
            unclipped = sum(n <= self.clipping_norm for n in agg.norms)
            noisy = unclipped + (float(torch.randn((), generator=agg.gen)) * self.count_stddev
                                 if self.cfg.noise_multiplier > 0 else 0.0)
            b = noisy / len(agg.norms)
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
