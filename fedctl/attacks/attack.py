"""Reconstruction attacks on one client batch: gradient matching (Adam, all restarts at once) and Dang et
al.'s Hessian-free gradient matching (HFGM, zero-order; ICASSP 2022, github googleinterns/
deepspeech-reconstruction `src/reconstruct.py`).

Both minimise the distance between the client's shared gradient and the gradient the victim would produce
on dummy features, keep each restart's best iterate (lowest gradient distance), and pick the restart with
the lowest gradient distance: never anything computed from the true features, which the attacker lacks.

The gradient method's default optimiser is L-BFGS in float64, not the reference's Adam: the output-layer
objective is badly conditioned (an untrained victim's logits are near uniform, so the alignment posteriors
dominate dL/dlogits and most feature directions move the matched gradient only slightly). Measured on the
same case (DS1 without activations, hidden 256, 20 random unit frames, 6 labels, 300 evaluations): Adam
lr 0.5 ends at MAE 0.48× the random start's (float32 or float64 alike), L-BFGS in float32 at 0.19×,
L-BFGS in float64 at 0.044× and falling (CHANGELOG). L-BFGS needs float64 because it builds curvature from
differences of gradients that float32 rounds away once the distance falls below ~1e-6.

Transcripts withheld (`transcripts=False`): the unknowns are the features and free alignment logits A
[T', b, C] (`objective.alignment_loss` replaces the CTC; every distance works, the unknown 1/target_length
is absorbed by the relaxation). A rides along as C extra columns of each frame's features ([T, b, F + C];
DS2's frames t >= T' carry unused columns, whose gradient is zero), so L-BFGS and Adam run unchanged on the
concatenation and each restart keeps its own A. The optimiser holds A / `alignment_scale` (0.1), a diagonal
preconditioner: with A itself (scale 1) the logits outran the features in the first steps, saturated the
softmax and stalled (3 real-MFCC 6-frame cases, hidden 256: distance 0.002-0.016, MAE ratio 0.20-0.31
after 400 evaluations; scales 0.1, 0.03 and 0.01 all reach distances below 3e-8 and ratios below 5e-4 in
200; on unit-variance random features 0.1 beats 0.03 and 0.01). HFGM perturbs features only and is
refused in this mode.
"""

from __future__ import annotations

import contextvars
import copy
import math
import time
from dataclasses import dataclass, field

import torch

from fedctl.attacks.objective import (
    DISTANCES,
    MATCHES,
    ClientPlan,
    client_updates,
    gradient_distance,
    output_layer,
    per_restart_gradients,
    top_masks,
    unrolled_updates,
)
from fedctl.core.config import check_choice, check_range, check_seed


def _checked(default, check):
    return field(default=default, metadata={"check": check})


def _count(hint: str):
    return check_range(low=1, hint=hint)


def _positive(hint: str):
    return check_range(low=0, low_open=True, hint=hint)


@dataclass
class AttackConfig:
    """The attack's settings: `fedctl attack` flags and a sweep's `attack:` section, checked by the field checks
    (`fedctl.core.config.check_range`, as the training config): a value that would change nothing or report
    the random start as a result is refused by name."""

    method: str = _checked("gradient", check_choice("gradient", "hfgm"))  # "gradient" (twice-differentiated CTC) or "hfgm" (zero-order)
    optimizer: str = _checked("lbfgs", check_choice("lbfgs", "adam", hint="use lbfgs or adam (the reference's)"))  # gradient method: "lbfgs" (per-restart, batched) or "adam" (the reference's)
    dtype: str = _checked("float64", check_choice("float64", "float32", hint="use float64 (L-BFGS needs it) or float32"))  # the attacker's arithmetic (the client's gradient stays as it was computed)
    restarts: int = _checked(10, _count("at least one random start, e.g. 10"))  # independent random starts, run together as one batch
    lr: float = _checked(0.5, _positive("a finite learning rate / radius > 0, e.g. 0.5"))  # Adam learning rate (adam), initial radius r (hfgm); unused by lbfgs (unit steps)
    max_iter: int = _checked(2000, _count("at least one iteration (0 would report the random start), e.g. 2000"))  # iterations = objective evaluations (one batched forward/backward over all restarts)
    lr_step: int = _checked(250, _count("halve the learning rate every N >= 1 iterations, e.g. 250"))  # halve the learning rate every lr_step iterations (adam)
    lr_gamma: float = _checked(0.5, check_range(low=0, high=1, low_open=True, hint="the decay factor in (0, 1], e.g. 0.5"))
    patience: int = _checked(300, _count("iterations without improvement before stopping, >= 1, e.g. 300"))  # stop when no restart improved its best distance by rel_tol for this many iterations
    rel_tol: float = _checked(1e-4, check_range(low=0, hint="a relative improvement >= 0, e.g. 1e-4"))
    distance: str = _checked("cosine", check_choice(*DISTANCES))
    distance_weight: float = _checked(1.0, check_range(low=0, high=1, hint="w of w·cos + (1−w)·MSE, in [0, 1], e.g. 1.0"))
    match: str = _checked("last", check_choice(*MATCHES, hint="use last (output layer, as the reference) or all"))
    top_grad_fraction: float = _checked(1.0, check_range(low=0, high=1, low_open=True, hint="e.g. 1.0 (keep all)"))
    init: str = _checked("uniform", check_choice("uniform", "normal"))  # U[-1, 1], as the reference
    seed: int = _checked(0, check_seed)
    hfgm_directions: int = _checked(127, _count("at least one perturbation per step (0 would report the random start), e.g. 127"))  # K frame-local unit perturbations per step (Dang: 127)
    hfgm_min_radius: float = _checked(0.25, _positive("a radius > 0, e.g. 0.25"))  # radius floor (Dang: 0.25)
    hfgm_plateau: int = _checked(2500, _count("a window of >= 1 iterations, e.g. 2500"))  # iterations without a 5% drop before the radius halves (Dang: 2500)
    hfgm_plateau_drop: float = _checked(0.05, check_range(low=0, high=1, hint="a relative drop in [0, 1], e.g. 0.05"))
    lbfgs_history: int = _checked(100, _count("curvature pairs kept, >= 1, e.g. 100"))  # curvature pairs kept per restart
    lbfgs_max_step: float = _checked(2.0, _positive("a step bound > 0 in feature units, e.g. 2.0"))  # largest change of any feature in one step (a trust region, feature units)
    transcripts: bool = True  # the attacker holds the client's transcripts; False: it also recovers alignments
    alignment_scale: float = _checked(0.1, _positive("a scale > 0, e.g. 0.1"))  # without transcripts: the optimiser holds alignment logits / this (module docstring)
    local_steps: int = _checked(1, _count("use 1 (FedSGD, the default) or more (local SGD, which the attacker unrolls)"))  # the client's local SGD steps, unrolled by the attacker (1: FedSGD, restarts batched)
    local_lr: float = _checked(1.0, _positive("a finite learning rate > 0, e.g. 0.5"))  # the client's local SGD learning rate (run_attack copies both from AttackSpec)


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
    alignment: torch.Tensor | None = None  # [T', b, C] the winner's alignment logits (transcripts withheld)


def initial_features(shape: tuple[int, ...], restarts: int, seed: int, init: str = "uniform") -> torch.Tensor:
    """[T, R·b, F] starts: U[-1, 1] (reference `--init_method uniform`) or N(0, 1), one generator per attack."""
    gen = torch.Generator().manual_seed(seed)
    steps, batch, feats = shape
    if init == "normal":
        return torch.randn(steps, restarts * batch, feats, generator=gen)
    return torch.rand(steps, restarts * batch, feats, generator=gen) * 2 - 1


def _repeat(t: torch.Tensor | None, restarts: int) -> torch.Tensor | None:
    if t is None:  # transcripts withheld
        return None
    return t.repeat(restarts, *([1] * (t.dim() - 1)))


_CLIENT: contextvars.ContextVar[ClientPlan | None] = contextvars.ContextVar("client_plan", default=None)


def reconstruct(model, target: list[torch.Tensor], shape: tuple[int, int, int], lengths: torch.Tensor,
                targets: torch.Tensor | None, target_lengths: torch.Tensor | None, cfg: AttackConfig,
                x_init: torch.Tensor | None = None, log=None, client: ClientPlan | None = None) -> AttackResult:
    """Reconstruct client features of `shape` [T, b, F] from its gradient `target` (matched tensors).

    The attack runs in `cfg.dtype` on a copy of the victim when that differs from the victim's own dtype;
    the returned features are float32. With `cfg.transcripts` False, targets and target_lengths are not
    used (pass None) and the result also holds the recovered alignment logits. `client`: the client's local
    training to unroll (a real run's client, `fedctl.attacks.case.run_client`) instead of cfg.local_steps SGD."""
    token = _CLIENT.set(client)  # read by _dummy_gradients, under every method's loop
    try:
        return _reconstruct(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log)
    finally:
        _CLIENT.reset(token)


def _reconstruct(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log) -> AttackResult:
    dtype = getattr(torch, cfg.dtype)
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    target = [t.to(dtype) for t in target]
    x_init = None if x_init is None else x_init.to(dtype)
    if not cfg.transcripts:
        return _without_transcripts(model, target, shape, lengths, cfg, x_init, log)
    if cfg.method == "hfgm":
        fn = _hfgm
    elif cfg.optimizer == "lbfgs":
        fn = _lbfgs
    else:
        fn = _gradient
    result = fn(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log)
    result.features = result.features.float()
    result.init = result.init.float()
    return result


def _without_transcripts(model, target, shape, lengths, cfg, x_init, log) -> AttackResult:
    """`reconstruct` over [features, alignment logits] per frame (module docstring)."""
    steps, batch, feats = shape
    out_steps = int(model.output_lengths(torch.tensor([steps]))[0])
    classes = output_layer(model).out_features
    dtype = target[0].dtype
    if x_init is None:
        x_init = initial_features(shape, cfg.restarts, cfg.seed, cfg.init).to(dtype)
    if x_init.shape[2] == feats:  # features only: alignments start at zero logits (uniform Γ, no class favoured)
        x_init = torch.cat([x_init, x_init.new_zeros(steps, x_init.shape[1], classes)], dim=2)
    fn = _lbfgs if cfg.optimizer == "lbfgs" else _gradient
    result = fn(model, target, (steps, batch, feats + classes), lengths, None, None, cfg, x_init, log)
    result.alignment = (cfg.alignment_scale * result.features[:out_steps, :, feats:]).float()
    result.features = result.features[..., :feats].float()
    result.init = result.init[..., :feats].float()
    return result


def _dummy_gradients(model, x, L, tg, tl, R, cfg, create_graph=True):
    """Each restart's dummy update at x [T, R·b, F]: its gradient (FedSGD, all restarts in one batch), its
    unrolled local SGD update with `cfg.local_steps` > 1 (`unrolled_updates`), or, when the transcripts are
    withheld, the gradient at x [T, R·b, F + C] (features, alignment logits)."""
    plan = _CLIENT.get()
    if plan is not None:  # a real run's client: its spec and schedule, unrolled
        return client_updates(model, x, L, tg, tl, R, cfg.match, plan, create_graph=create_graph)
    if cfg.transcripts and cfg.local_steps > 1:  # the client's N local SGD steps, unrolled (a loop over restarts)
        return unrolled_updates(model, x, L, tg, tl, R, cfg.match, local_steps=cfg.local_steps,
                                local_lr=cfg.local_lr, create_graph=create_graph)
    if cfg.transcripts:
        return per_restart_gradients(model, x, L, tg, tl, R, cfg.match, create_graph=create_graph)
    classes = output_layer(model).out_features
    out_steps = int(model.output_lengths(torch.tensor([x.shape[0]]))[0])
    return per_restart_gradients(model, x[..., :-classes], L, None, None, R, cfg.match, create_graph=create_graph,
                                 alignment=cfg.alignment_scale * x[:out_steps, :, -classes:])


def _distance_and_grad(model, x, L, tg, tl, R, target, masks, cfg):
    """[R] gradient distances at x [T, R·b, F] and their gradient w.r.t. x (one batched double backward)."""
    x = x.detach().requires_grad_(True)
    dummy, _ = _dummy_gradients(model, x, L, tg, tl, R, cfg)
    dist = gradient_distance(dummy, target, distance=cfg.distance, weight=cfg.distance_weight, masks=masks)
    (grad_x,) = torch.autograd.grad(dist.sum(), x)
    return dist.detach().double(), grad_x.detach()


def _lbfgs(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log):
    """L-BFGS per restart (own curvature history and step), all restarts evaluated in one batch.

    Each iteration evaluates every restart once at its trial point x_r + α_r·p_r. A restart whose trial
    point satisfies Armijo's condition accepts it, stores the curvature pair (s, y) when sᵀy > 0 and takes
    the next two-loop-recursion direction with α = 1; one that fails halves α and waits at x_r. Armijo
    backtracking instead of torch.optim.LBFGS's strong-Wolfe search because that search is sequential per
    problem and would force the restarts into a Python loop (or one shared step for all of them)."""
    R = cfg.restarts
    steps, batch, feats = shape
    start = time.perf_counter()
    dtype = target[0].dtype
    x0 = initial_features(shape, R, cfg.seed, cfg.init).to(dtype) if x_init is None else x_init.clone()
    L, tg, tl = _repeat(lengths, R), _repeat(targets, R), _repeat(target_lengths, R)
    masks = top_masks(target, cfg.top_grad_fraction)

    def rows(t):  # [T, R·b, F] -> [R, T·b·F]
        return t.reshape(steps, R, batch, feats).permute(1, 0, 2, 3).reshape(R, -1)

    def cols(t):  # inverse of rows
        return t.reshape(R, steps, batch, feats).permute(1, 0, 2, 3).reshape(steps, R * batch, feats)

    x = rows(x0).clone()
    f, g = _distance_and_grad(model, x0, L, tg, tl, R, target, masks, cfg)
    g = rows(g)
    best, best_x = f.clone(), x.clone()
    history: list[list[tuple[torch.Tensor, torch.Tensor, float]]] = [[] for _ in range(R)]
    p = -g
    alpha = torch.ones(R, dtype=x.dtype)
    curve = [float(best.min())]
    last_gain, it = 0, 1
    while it < cfg.max_iter:
        it += 1
        # trust region: far from the truth the objective has flat, saturated regions (huge features, LSTM
        # gates pinned) where a quasi-Newton step would leave for good
        reach = (alpha[:, None] * p).abs().amax(dim=1)
        alpha = torch.where(reach > cfg.lbfgs_max_step, alpha * cfg.lbfgs_max_step / reach, alpha)
        trial = x + alpha[:, None] * p
        f_new, g_new = _distance_and_grad(model, cols(trial), L, tg, tl, R, target, masks, cfg)
        g_new = rows(g_new)
        slope = (g * p).sum(dim=1)
        accept = torch.isfinite(f_new) & (f_new <= f + 1e-4 * alpha.double() * slope.double())
        for r in range(R):
            if not bool(accept[r]):
                alpha[r] *= 0.5
                if float(alpha[r]) < 1e-10:  # no progress along p: forget the curvature, go down the gradient
                    history[r].clear()
                    p[r], alpha[r] = -g[r], 1.0
                continue
            s_r, y_r = trial[r] - x[r], g_new[r] - g[r]
            sy = float(s_r @ y_r)
            if sy > 1e-12 * float(y_r @ y_r):
                history[r].append((s_r, y_r, 1.0 / sy))
                del history[r][: -cfg.lbfgs_history]
            x[r], g[r] = trial[r], g_new[r]
            p[r] = -_two_loop(g[r], history[r])
            if float(g[r] @ p[r]) >= 0:  # not a descent direction (numerical): restart from the gradient
                history[r].clear()
                p[r] = -g[r]
            alpha[r] = 1.0
        f = torch.where(accept, f_new, f)
        better = f < best
        if bool((f < best * (1 - cfg.rel_tol)).any()):
            last_gain = it
        best_x[better] = x[better]
        best = torch.where(better, f, best)
        curve.append(float(best.min()))
        if log and it % 100 == 0:
            log(f"iter {it}: best distance {float(best.min()):.6g}")
        if it - last_gain >= cfg.patience or float(best.max()) == 0.0:
            break
    return _pick(cols(best_x), best, x0, shape, R, it, time.perf_counter() - start, curve)


def _two_loop(grad: torch.Tensor, history: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """H·grad for the L-BFGS inverse-Hessian estimate H of one restart (Nocedal & Wright, Algorithm 7.4)."""
    q = grad.clone()
    coef = []
    for s, y, rho in reversed(history):
        a = rho * float(s @ q)
        coef.append(a)
        q -= a * y
    if history:
        s, y, _ = history[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(history, reversed(coef)):
        b = rho * float(y @ q)
        q += (a - b) * s
    return q


def _gradient(model, target, shape, lengths, targets, target_lengths, cfg, x_init, log):
    R = cfg.restarts
    batch = shape[1]
    start = time.perf_counter()
    x0 = initial_features(shape, R, cfg.seed, cfg.init).to(target[0].dtype) if x_init is None else x_init.clone()
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
        dummy, _losses = _dummy_gradients(model, x, L, tg, tl, R, cfg)
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
        dummy, _ = _dummy_gradients(model, x, L, tg, tl, groups, cfg, create_graph=False)
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
    x = (initial_features(shape, R, cfg.seed, cfg.init).to(target[0].dtype) if x_init is None
         else x_init.clone()).view(steps, R, batch, feats)
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
        v = torch.zeros(K, steps, batch, feats, dtype=x.dtype)
        v[torch.arange(K), order] = torch.randn(K, batch, feats, generator=gen).to(x.dtype)
        v = v / v.flatten(1).norm(dim=1).view(K, 1, 1, 1)
        cand = x.permute(1, 0, 2, 3).unsqueeze(1) + radius.to(x.dtype).view(R, 1, 1, 1, 1) * v.unsqueeze(0)  # [R,K,T,b,F]
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
        x = x + (radius.to(x.dtype).view(R, 1, 1, 1) * step).permute(1, 0, 2, 3)
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
