"""Reconstruction attacks on one client batch: gradient matching (Adam, all restarts at once) and Dang et
al.'s Hessian-free gradient matching (HFGM, zero-order; ICASSP 2022, github googleinterns/
deepspeech-reconstruction `src/reconstruct.py`).

Both minimise the distance between the client's shared gradient and the gradient the victim would produce
on dummy features, keep each restart's best iterate (lowest gradient distance), and pick the restart with
the lowest gradient distance: never anything computed from the true features, which the attacker lacks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from fedctl.attacks.objective import gradient_distance, per_restart_gradients, top_masks


@dataclass
class AttackConfig:
    method: str = "gradient"  # "gradient" (Adam, twice-differentiated CTC) or "hfgm" (zero-order)
    restarts: int = 10  # independent random starts, run together as one batch
    lr: float = 0.5  # Adam learning rate (gradient) or initial radius r (hfgm)
    max_iter: int = 2000
    lr_step: int = 250  # halve the learning rate every lr_step iterations (gradient method)
    lr_gamma: float = 0.5
    patience: int = 300  # stop when no restart improved its best distance by rel_tol for this many iterations
    rel_tol: float = 1e-4
    distance: str = "cosine"
    distance_weight: float = 1.0
    match: str = "last"
    top_grad_fraction: float = 1.0
    init: str = "uniform"  # U[-1, 1], as the reference
    seed: int = 0
    hfgm_directions: int = 127  # K frame-local unit perturbations per step (Dang: 127)
    hfgm_min_radius: float = 0.25  # radius floor (Dang: 0.25)
    hfgm_plateau: int = 2500  # iterations without a 5% drop before the radius halves (Dang: 2500)
    hfgm_plateau_drop: float = 0.05


@dataclass
class AttackResult:
    features: torch.Tensor  # [T, b, F] best restart's best iterate
    distance: float  # its gradient distance
    restart: int  # which restart won
    restart_distances: list[float]  # best distance of every restart
    iterations: int
    seconds: float
    curve: list[float] = field(default_factory=list)  # best-so-far distance of the winning... (min over restarts) per iteration
    init: torch.Tensor | None = None  # [T, b, F] the winning restart's start


def initial_features(shape: tuple[int, ...], restarts: int, seed: int, init: str = "uniform") -> torch.Tensor:
    """[T, R·b, F] starts: U[-1, 1] (reference `--init_method uniform`) or N(0, 1), one generator per attack."""
    gen = torch.Generator().manual_seed(seed)
    steps, batch, feats = shape
    if init == "normal":
        return torch.randn(steps, restarts * batch, feats, generator=gen)
    return torch.rand(steps, restarts * batch, feats, generator=gen) * 2 - 1


def _repeat(t: torch.Tensor, restarts: int) -> torch.Tensor:
    return t.repeat(restarts, *([1] * (t.dim() - 1)))


def reconstruct(model, target: list[torch.Tensor], shape: tuple[int, int, int], lengths: torch.Tensor,
                targets: torch.Tensor, target_lengths: torch.Tensor, cfg: AttackConfig,
                x_init: torch.Tensor | None = None, log=None) -> AttackResult:
    """Reconstruct client features of `shape` [T, b, F] from its gradient `target` (matched tensors)."""
    if cfg.method == "hfgm":
        return _hfgm(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log)
    return _gradient(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log)


def _gradient(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log):
    R = cfg.restarts
    batch = shape[1]
    start = time.perf_counter()
    x0 = initial_features(shape, R, cfg.seed, cfg.init) if x_init is None else x_init.clone()
    x = x0.clone().requires_grad_(True)
    L, tg, tl = _repeat(lengths, R), _repeat(targets, R), _repeat(target_lengths, R)
    masks = top_masks(target, cfg.top_grad_fraction)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    best = torch.full((R,), math.inf, dtype=torch.float64)
    best_x = x0.clone()
    last_gain = 0
    curve: list[float] = []
    it = 0
    for it in range(1, cfg.max_iter + 1):
        dummy, _losses = per_restart_gradients(model, x, L, tg, tl, R, cfg.match)
        dist = gradient_distance(dummy, target, distance=cfg.distance, weight=cfg.distance_weight, masks=masks)
        (grad_x,) = torch.autograd.grad(dist.sum(), x)
        d = dist.detach().double()
        # the distance just computed belongs to the current x (before the step): keep it if best
        improved = d < best * (1 - cfg.rel_tol)
        better = d < best
        if bool(better.any()):
            with torch.no_grad():
                cols = best_x.view(shape[0], R, batch, -1)
                cols[:, better] = x.detach().view(shape[0], R, batch, -1)[:, better]
            best = torch.where(better, d, best)
        if bool(improved.any()):
            last_gain = it
        curve.append(float(best.min()))
        if log and (it % 100 == 0 or it == 1):
            log(f"iter {it}: best distance {float(best.min()):.6g}, lr {sched.get_last_lr()[0]:.4g}")
        if not torch.isfinite(grad_x).all():
            break
        x.grad = grad_x
        opt.step()
        sched.step()
        if it - last_gain >= cfg.patience:
            break
    return _pick(best_x, best, x0, shape, R, it, time.perf_counter() - start, curve)


def _pick(best_x, best, x0, shape, R, it, seconds, curve):
    winner = int(torch.argmin(best))
    cols = best_x.view(shape[0], R, shape[1], -1)
    return AttackResult(features=cols[:, winner].clone(), distance=float(best[winner]), restart=winner,
                        restart_distances=best.tolist(), iterations=it, seconds=seconds, curve=curve,
                        init=x0.view(shape[0], R, shape[1], -1)[:, winner].clone())


@torch.no_grad()
def _objective_no_x_grad(model, x, L, tg, tl, groups, target, masks, cfg):
    with torch.enable_grad():  # the dummy gradient itself needs one backward (first order only)
        dummy, _ = per_restart_gradients(model, x, L, tg, tl, groups, cfg.match, create_graph=False)
    return gradient_distance([d.detach() for d in dummy], target, distance=cfg.distance,
                             weight=cfg.distance_weight, masks=masks).double()


def _hfgm(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log):
    """HFGM as Dang et al.'s `estimate_gradients`: per step, K perturbations each non-zero at one frame
    (N(0, I) there, unit Frobenius norm), evaluated with x in one batch; x ← x + r·Σ(improving v_k).
    The radius halves (floor `hfgm_min_radius`) when the loss has not dropped `hfgm_plateau_drop` over
    `hfgm_plateau` iterations; the run stops when the radius is already at its floor, or at max_iter.
    All restarts step together: the batch holds R·(K+1) copies of the client batch."""
    R, K = cfg.restarts, cfg.hfgm_directions
    steps, batch, feats = shape
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x = (initial_features(shape, R, cfg.seed, cfg.init) if x_init is None else x_init.clone()).view(steps, R, batch, feats)
    x0 = x.clone()
    G = R * (K + 1)
    L, tg, tl = _repeat(lengths, G), _repeat(targets, G), _repeat(target_lengths, G)
    masks = top_masks(target, cfg.top_grad_fraction)
    radius = torch.full((R,), float(cfg.lr), dtype=torch.float64)
    history: list[torch.Tensor] = []
    best = torch.full((R,), math.inf, dtype=torch.float64)
    best_x = x.clone()
    curve: list[float] = []
    frames_valid = int(lengths.max())
    it = 0
    active = torch.ones(R, dtype=torch.bool)
    for it in range(1, cfg.max_iter + 1):
        # K perturbations per restart, each at one frame (frames drawn by shuffling range(T) repeated)
        order = torch.cat([torch.randperm(frames_valid, generator=gen) for _ in range(K // frames_valid + 1)])[:K]
        v = torch.zeros(K, steps, batch, feats)
        v[torch.arange(K), order] = torch.randn(K, batch, feats, generator=gen)
        v = v / v.flatten(1).norm(dim=1).view(K, 1, 1, 1)
        cand = x.permute(1, 0, 2, 3).unsqueeze(1) + radius.float().view(R, 1, 1, 1, 1) * v.unsqueeze(0)  # [R,K,T,b,F]
        everything = torch.cat([x.permute(1, 0, 2, 3).unsqueeze(1), cand], dim=1)  # [R, K+1, T, b, F]
        xb = everything.permute(2, 0, 1, 3, 4).reshape(steps, G * batch, feats)
        f = _objective_no_x_grad(model, xb, L, tg, tl, G, target, masks, cfg).view(R, K + 1)
        f0 = f[:, 0]
        better = f0 < best
        best_x[:, better] = x[:, better]
        best = torch.where(better, f0, best)
        curve.append(float(best.min()))
        improving = (f[:, 1:] < f0[:, None]) & active[:, None]  # [R, K]
        step = (improving.to(v.dtype)[:, :, None, None, None] * v.unsqueeze(0)).sum(dim=1)  # [R, T, b, F]
        x = x + (radius.float().view(R, 1, 1, 1) * step).permute(1, 0, 2, 3)
        history.append(f0)
        if log and (it % 100 == 0 or it == 1):
            log(f"iter {it}: best distance {float(best.min()):.6g}, radius {radius.tolist()}, "
                f"applied {float(improving.float().mean()):.3f}")
        if len(history) > cfg.hfgm_plateau:
            stalled = history[-1] >= (1 - cfg.hfgm_plateau_drop) * history[-1 - cfg.hfgm_plateau]
            at_floor = radius <= cfg.hfgm_min_radius
            active &= ~(stalled & at_floor)
            radius = torch.where(stalled, (radius * 0.5).clamp(min=cfg.hfgm_min_radius), radius)
            if bool(stalled.any()):
                history = [h.clone() for h in history[-1:]]  # Dang resets the history on every reduction
            if not bool(active.any()):
                break
    # score the last iterate too
    xb = x.reshape(steps, R * batch, feats)
    f_last = _objective_no_x_grad(model, xb, _repeat(lengths, R), _repeat(targets, R), _repeat(target_lengths, R),
                                  R, target, masks, cfg)
    better = f_last < best
    best_x[:, better] = x[:, better]
    best = torch.where(better, f_last, best)
    return _pick(best_x.reshape(steps, R * batch, feats), best, x0.reshape(steps, R * batch, feats), shape, R, it,
                 time.perf_counter() - start, curve)
