"""Aggregation math as pure functions and small accumulators over client states.

A state is a dict name -> tensor. Weighted means stream: each client is folded in as it arrives,
so memory is O(model), not O(clients x model). Robust statistics (median, trimmed mean, Krum)
need every client at once by definition; they stack, and their memory is O(clients x model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

State = dict[str, torch.Tensor]


def is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def all_finite(state: State) -> bool:
    """True when every floating tensor in `state` is free of NaN and Inf."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if is_float(t))


def state_nbytes(state: State) -> int:
    """Bytes a state occupies on the wire (sum of tensor sizes)."""
    return sum(t.numel() * t.element_size() for t in state.values())


class WeightedMean:
    """Streaming weighted mean: after clients 1..i, `acc = Σ w_j x_j / Σ w_j` (j ≤ i).

    Each fold is one fused `lerp_` per tensor, `acc += (w_i / W_i)(x_i − acc)`: three memory
    streams per element, no scaled copies. The first client is copied, so one client with any
    weight reproduces its state bit for bit. Floating tensors accumulate in float32 (or float64
    if they are float64); other tensors (counters) take the first client's value.
    """

    def __init__(self, workspace: State | None = None) -> None:
        self.acc: State = {}
        self.total_weight = 0.0
        self.log_total = -math.inf
        self.count = 0
        # Preallocated buffers to accumulate into: a fresh 280 MB tensor costs more in page
        # faults than the whole fold (1.4 GB/s vs 8.7 GB/s measured here), so the engine recycles.
        self.workspace = workspace

    def add(self, state: State, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"client weight must be positive, got {weight}")
        self.add_log(state, math.log(weight))

    def add_log(self, state: State, log_weight: float) -> None:
        """Fold in a client by the logarithm of its weight: weights like exp(−H/T) that would
        overflow or underflow as plain floats stay exact relative to each other."""
        self.log_total = log_weight if self.count == 0 else float(np.logaddexp(self.log_total, log_weight))
        self.total_weight = math.exp(self.log_total) if self.log_total < 700 else math.inf
        self.count += 1
        if self.count == 1:
            ws = self.workspace or {}
            for k, v in state.items():
                dtype = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
                buf = ws.get(k)
                if buf is not None and buf.shape == v.shape and buf.dtype == dtype and buf.device == v.device:
                    self.acc[k] = buf.copy_(v)
                else:
                    self.acc[k] = v.detach().to(dtype).clone()
            return
        frac = math.exp(log_weight - self.log_total)
        for k, a in self.acc.items():
            if is_float(a):
                a.lerp_(state[k].to(a.dtype), frac)

    def result(self, like: State | None = None) -> State:
        """The mean; cast back to the dtypes of `like` (the global state) when given."""
        if self.count == 0:
            raise ValueError("no client states were added")
        if like is None:
            return self.acc
        return {k: v.to(like[k].dtype) if k in like else v for k, v in self.acc.items()}


def weighted_mean(states: Iterable[tuple[State, float]]) -> State:
    """Σ w_i x_i / Σ w_i over (state, weight) pairs, streamed."""
    acc = WeightedMean()
    for state, weight in states:
        acc.add(state, weight)
    return acc.result()


def stack_states(states: list[State]) -> dict[str, torch.Tensor]:
    """Stack K states into K x ... tensors (float32 for floating tensors)."""
    keys = states[0].keys()
    return {k: torch.stack([s[k].detach().float() if is_float(s[k]) else s[k] for s in states]) for k in keys}


def coordinate_median(states: list[State]) -> State:
    """Per-coordinate median; with an even count the mean of the two middle values (numpy's rule)."""
    out: State = {}
    k = len(states)
    for name, st in stack_states(states).items():
        if not is_float(st):
            out[name] = st[0].clone()
            continue
        srt = st.sort(dim=0).values
        out[name] = srt[k // 2].clone() if k % 2 else 0.5 * (srt[k // 2 - 1] + srt[k // 2])
    return out


def trimmed_mean(states: list[State], beta: float) -> State:
    """Per-coordinate mean after dropping the int(beta·K) smallest and largest values (scipy's trim_mean)."""
    if not 0.0 <= beta < 0.5:
        raise ValueError("beta must be in [0, 0.5)")
    k = len(states)
    cut = int(beta * k)
    out: State = {}
    for name, st in stack_states(states).items():
        if not is_float(st):
            out[name] = st[0].clone()
            continue
        out[name] = st.sort(dim=0).values[cut : k - cut].mean(dim=0)
    return out


def pairwise_sq_distances(states: list[State]) -> torch.Tensor:
    """K x K matrix of squared Euclidean distances between flattened states (float64)."""
    k = len(states)
    dist = torch.zeros(k, k, dtype=torch.float64)
    for name in states[0]:
        if not is_float(states[0][name]):
            continue
        x = [s[name].detach().reshape(-1).double() for s in states]
        for i in range(k):  # direct differences: exact where a Gram-matrix or cdist² form rounds
            for j in range(i + 1, k):
                d = (x[i] - x[j]).pow(2).sum()
                dist[i, j] += d
                dist[j, i] += d
    return dist


def krum_scores(states: list[State], num_malicious_clients: int) -> torch.Tensor:
    """Krum score per client: sum of squared distances to its K − f − 2 nearest others (Blanchard 2017)."""
    dist = pairwise_sq_distances(states)
    k = len(states)
    num_closest = max(1, k - num_malicious_clients - 2)
    scores = torch.empty(k, dtype=torch.float64)
    for i in range(k):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]])
        scores[i] = others.sort().values[:num_closest].sum()
    return scores
