"""Merge K LoRA adapters into one: exact weighted mean of the ΔW (SVD-refactored), or naive A/B averaging.

Client i has, per module, ΔW_i = s_i · B_i A_i (B_i: d×r_i, A_i: r_i×k, s_i = alpha_i/r_i, or alpha_i/√r_i
with rsLoRA). The target is ΔW = Σ w_i ΔW_i with Σ w_i = 1. It has rank ≤ Σ r_i, so it is factored from the
stacked factors

    B_cat = [w_1 s_1 B_1 | … | w_K s_K B_K]   (d × R, R = Σ r_i)      A_cat = [A_1; …; A_K]   (R × k)
    B_cat = Q_B R_B,  A_catᵀ = Q_A R_A,  R_B R_Aᵀ = U S Vᵀ  (an R×R core)
    ΔW = Q_B U S Vᵀ Q_Aᵀ  →  keep the top svd_rank singular triplets

which is exact when svd_rank ≥ R and the best rank-svd_rank approximation (Eckart–Young) otherwise.
Hand-written rather than peft's `add_weighted_adapter(combination_type="svd")` because peft densifies ΔW
and runs a d×k SVD, O(d·k·min(d, k)); this costs O((d + k)·R²) and never forms a d×k matrix.
The singular values of the core are those of ΔW, so retained energy and the relative Frobenius error of
the truncation come out exactly, for free.

Everything runs in float64 (results are cast back to the adapters' dtype); modules with the same shapes and
ranks are merged in one batched QR/SVD call.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedctl.errors import FedctlError
from fedctl.lora.adapters import (
    LoraFactors,
    module_scale,
    read_adapter_dir,
    split_state_dict,
    write_adapter_dir,
)

METHODS = ("svd", "naive")
MANIFEST_NAME = "fuse_manifest.json"
_BATCH_BYTES = 256 * 2**20  # cap on float64 working memory per batched QR/SVD call

# A scale is one number for every module, or a per-module mapping / function (rank_pattern, alpha_pattern).
Scale = float | Mapping[str, float] | Callable[[str], float]


@dataclass
class ModuleStats:
    """How one module was merged. Energies and errors are relative to the exact weighted-mean ΔW (Frobenius)."""

    module: str
    shape: tuple[int, int]  # (d_out, d_in) of the base Linear layer
    ranks_in: list[int]
    rank_out: int
    retained_energy: float | None  # Σ_{j≤r} σ_j² / Σ σ_j²; None for naive merges
    rel_error: float  # ‖merged ΔW − exact mean ΔW‖_F / ‖exact mean ΔW‖_F


# ---------------------------------------------------------------------------------------------- weights


def normalize_weights(weights: Sequence[float] | None, n: int, *, source: str = "--weights") -> list[float]:
    """Client weights scaled to sum 1 (equal when `weights` is None); wrong count, negative or zero sum raise."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise FedctlError(
            f"{source} gives {len(weights)} weights for {n} adapters",
            "give one weight per adapter, in the same order as --adapters",
        )
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise FedctlError(
            f"{source} contains a negative or non-finite weight ({bad[0]})", "weights must be ≥ 0"
        )
    total = sum(weights)
    if total <= 0:
        raise FedctlError(f"{source} sums to zero", "give at least one adapter a positive weight")
    return [w / total for w in weights]


def weights_from_shard_manifests(paths: Sequence[str | Path]) -> list[float]:
    """Number of training indices in each client shard JSON (a list of indices, or {"indices": [...]})."""
    counts = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FedctlError(
                f"shard manifest not found: {path}", "pass the client_<k>.json files of the partition"
            )
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FedctlError(
                f"shard manifest {path} is not valid JSON ({exc})", "re-run the partition"
            ) from None
        indices = obj.get("indices") if isinstance(obj, dict) else obj
        if not isinstance(indices, list):
            raise FedctlError(
                f"shard manifest {path} holds neither a list of indices nor an object with an 'indices' list",
                'expected e.g. [0, 5, 9] or {"indices": [0, 5, 9]}',
            )
        counts.append(float(len(indices)))
    return counts


# ---------------------------------------------------------------------------------------------- the math


def _svd_merge_batched(
    Bs: Sequence[Sequence[torch.Tensor]],
    As: Sequence[Sequence[torch.Tensor]],
    coef: torch.Tensor,
    svd_rank: int,
    out_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge n modules of equal shapes at once. Bs[i][j]: client i's B (d×r_i) for module j, As[i][j]: its A
    (r_i×k), coef[j, i] = w_i·s_i.

    Returns B' (n, d, svd_rank), A' (n, svd_rank, k) in float64 with out_scale·B'A' = truncated ΔW, and the
    singular values of ΔW (n, min(d, k, R)).
    """
    with _lapack_threads(Bs[0][0].device):
        return _svd_merge_core(Bs, As, coef, svd_rank, out_scale)


@contextlib.contextmanager
def _lapack_threads(device: torch.device):
    """Run the CPU factorizations on one thread: they are small (d×Kr, Kr×Kr) and MKL's threaded LAPACK spends
    far more on synchronisation than on work when cores are busy (measured on 2 loaded cores: 80×80 SVD
    0.5 s with 2 threads, 0.7 ms with 1). Restores the caller's thread count."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _svd_merge_core(Bs, As, coef, svd_rank: int, out_scale: float):
    n, d, k = len(Bs[0]), Bs[0][0].shape[0], As[0][0].shape[1]
    ranks = [b[0].shape[1] for b in Bs]
    f64 = {"dtype": torch.float64, "device": Bs[0][0].device}
    # Fill the stacks in place (one float64 copy): B_cat = [c_1 B_1 | … | c_K B_K], A_catᵀ = [A_1ᵀ | … | A_Kᵀ].
    B_cat = torch.empty(n, d, sum(ranks), **f64)
    At_cat = torch.empty(n, k, sum(ranks), **f64)
    offset = 0
    for i, r in enumerate(ranks):
        for j in range(n):
            B_cat[j, :, offset : offset + r].copy_(Bs[i][j])
            At_cat[j, :, offset : offset + r].copy_(As[i][j].mT)
        B_cat[..., offset : offset + r] *= coef[:, i, None, None]
        offset += r
    # Householder QR without forming Q (geqrf); Q is applied to the small result with ormqr.
    h_B, tau_B = torch.geqrf(B_cat)  # B_cat = Q_B R_B
    h_A, tau_A = torch.geqrf(At_cat)  # A_catᵀ = Q_A R_A
    m, p = min(d, sum(ranks)), min(k, sum(ranks))
    core = h_B[..., :m, :].triu() @ h_A[..., :p, :].triu().mT  # R_B R_Aᵀ: (n, m, p)
    U, S, Vh = torch.linalg.svd(core, full_matrices=False)
    r = min(svd_rank, S.shape[-1])
    # Split √σ between the factors so B' and A' have equal norms (well-conditioned for further training).
    root = (S[..., :r] / out_scale).sqrt()
    left = torch.zeros(n, d, svd_rank, **f64)  # rows beyond m and columns beyond r stay zero (padding)
    left[:, :m, :r] = U[..., :r] * root[..., None, :]
    right = torch.zeros(n, k, svd_rank, **f64)
    right[:, :p, :r] = Vh[..., :r, :].mT * root[..., None, :]
    B_new = torch.ormqr(h_B, tau_B, left)  # Q_B · [U_r √S_r; 0]
    A_new = torch.ormqr(h_A, tau_A, right).mT  # (Q_A · [V_r √S_r; 0])ᵀ
    return B_new, A_new, S


def _truncation_stats(S: torch.Tensor, r: int) -> tuple[list[float], list[float]]:
    """Retained energy and relative Frobenius error of keeping the top r of singular values S (n, m)."""
    energy = S.square()
    total = energy.sum(-1)
    kept = energy[..., :r].sum(-1)
    dropped = energy[..., r:].sum(-1)  # summed directly: 1 − kept/total would lose the small errors
    safe = torch.where(total > 0, total, torch.ones_like(total))
    retained = torch.where(total > 0, kept / safe, torch.ones_like(total))
    rel_error = torch.where(total > 0, (dropped / safe).sqrt(), torch.zeros_like(total))
    return retained.tolist(), rel_error.tolist()


def svd_merge(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    weights: Sequence[float] | None,
    svd_rank: int,
    *,
    out_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Merge one module: factors[i] = (B_i: d×r_i, A_i: r_i×k, s_i). Returns (B', A', stats).

    out_scale·B'·A' is the weighted mean Σ w_i s_i B_i A_i (weights normalised to sum 1) truncated to
    `svd_rank`: exact when svd_rank ≥ Σ r_i. B', A' are float64 (svd_rank columns/rows, zero-padded if the
    mean has lower rank). stats: singular_values (of the exact mean), retained_energy, rel_error.
    """
    _check_svd_rank(svd_rank)
    w = normalize_weights(weights, len(factors))
    coef = torch.tensor(
        [[wi * float(s) for wi, (_, _, s) in zip(w, factors, strict=True)]], dtype=torch.float64
    )
    B, A, S = _svd_merge_batched(
        [[b] for b, _, _ in factors],
        [[a] for _, a, _ in factors],
        coef.to(factors[0][0].device),
        svd_rank,
        out_scale,
    )
    retained, rel_error = _truncation_stats(S, svd_rank)
    stats = {"singular_values": S[0], "retained_energy": retained[0], "rel_error": rel_error[0]}
    return B[0], A[0], stats


def _lowrank_sq_norm(L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """‖L·R‖_F² from (m×m) Gram matrices, without forming the d×k product."""
    return ((L.mT @ L) * (R @ R.mT)).sum((-2, -1)).clamp_min(0)


def naive_merge(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    weights: Sequence[float] | None,
    *,
    out_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Average A's and B's separately: A' = Σ w_i A_i, B' = Σ w_i (s_i/s') B_i (equal ranks required).

    With equal client scales (the usual case) s' = s_i and B' is the plain weighted mean of the B's.
    stats: rel_error of out_scale·B'A' against the exact weighted mean ΔW (naive averaging is biased:
    mean(B)·mean(A) ≠ mean(B·A)).
    """
    w = normalize_weights(weights, len(factors))
    ranks = [a.shape[0] for _, a, _ in factors]
    if len(set(ranks)) != 1:
        raise FedctlError(
            f"naive merge needs equal LoRA ranks, got ranks {ranks}",
            "use `fedctl merge svd`, which allows any ranks",
        )
    s_out = float(factors[0][2]) if out_scale is None else float(out_scale)
    B = sum(wi * (float(s) / s_out) * b.to(torch.float64) for wi, (b, _, s) in zip(w, factors, strict=True))
    A = sum(wi * a.to(torch.float64) for wi, (_, a, _) in zip(w, factors, strict=True))
    L_target = torch.cat(
        [wi * float(s) * b.to(torch.float64) for wi, (b, _, s) in zip(w, factors, strict=True)], -1
    )
    R_target = torch.cat([a.to(torch.float64) for _, a, _ in factors], -2)
    target = _lowrank_sq_norm(L_target, R_target)
    diff = _lowrank_sq_norm(torch.cat([s_out * B, -L_target], -1), torch.cat([A, R_target], -2))
    rel_error = float((diff / target).sqrt()) if target > 0 else 0.0
    return B, A, {"rel_error": rel_error}


def _check_svd_rank(svd_rank: int) -> None:
    if not isinstance(svd_rank, int) or svd_rank < 1:
        raise FedctlError(f"--svd-rank must be a positive integer, got {svd_rank!r}", "e.g. --svd-rank 8")


# ---------------------------------------------------------------------------------------------- state dicts


def _scale_of(scale: Scale, module: str) -> float:
    if callable(scale):
        return float(scale(module))
    if isinstance(scale, Mapping):
        return float(scale[module])
    return float(scale)


def _check_compatible(clients: Sequence[LoraFactors]) -> None:
    first = clients[0]
    for c in clients[1:]:
        only_first = sorted(set(first.lora) - set(c.lora))
        only_here = sorted(set(c.lora) - set(first.lora))
        if only_first or only_here:
            module, owner, other = (
                (only_first[0], first.name, c.name) if only_first else (only_here[0], c.name, first.name)
            )
            raise FedctlError(
                f"adapter {other} has no LoRA on module {module}, which {owner} has: the target modules differ",
                "merge adapters trained with the same target_modules (and layers_to_transform)",
            )
        for module, (b0, a0) in first.lora.items():
            b, a = c.lora[module]
            if (b.shape[0], a.shape[1]) != (b0.shape[0], a0.shape[1]):
                raise FedctlError(
                    f"adapter {c.name}: module {module} adapts a {b.shape[0]}×{a.shape[1]} weight, "
                    f"but {first.name} a {b0.shape[0]}×{a0.shape[1]} one: different base models",
                    "merge only adapters trained on the same base model",
                )
        if set(c.extra) != set(first.extra):
            key = sorted(set(c.extra) ^ set(first.extra))[0]
            raise FedctlError(
                f"adapters {first.name} and {c.name} differ in non-LoRA tensor {key}",
                "merge adapters saved with the same modules_to_save / bias settings",
            )
        for key, t0 in first.extra.items():
            if c.extra[key].shape != t0.shape:
                raise FedctlError(
                    f"adapter {c.name}: tensor {key} has shape {tuple(c.extra[key].shape)}, "
                    f"but {first.name} has {tuple(t0.shape)}",
                    "merge only adapters trained on the same base model and label set",
                )


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
    *,
    method: str = "svd",
    svd_rank: int | None = None,
    scales: Sequence[Scale] | Scale = 1.0,
    out_scale: Scale | None = None,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], list[ModuleStats]]:
    """Merge K peft adapter state dicts (the shared tensors: `get_peft_model_state_dict`, or a model's
    `lora_*`/`modules_to_save` tensors). Returns (merged state dict, per-module stats).

    scales: s_i per client (one value, or per module); out_scale: s' of the merged adapter (svd default 1.0,
    i.e. lora_alpha = svd_rank; naive default: the first client's). svd_rank defaults to the largest client
    rank. Non-LoRA tensors are weighted-averaged. Keys are spelled as in the first state dict; tensors keep
    its dtype. `names` label the clients in error messages.
    """
    if method not in METHODS:
        raise FedctlError(f"unknown merge method {method!r}", f"use one of: {', '.join(METHODS)}")
    if not state_dicts:
        raise FedctlError("no adapters to merge", "pass at least one adapter")
    names = list(names) if names is not None else [f"client {i}" for i in range(len(state_dicts))]
    w = normalize_weights(weights, len(state_dicts))
    clients = [split_state_dict(sd, name) for sd, name in zip(state_dicts, names, strict=True)]
    _check_compatible(clients)
    if not isinstance(scales, Sequence):
        scales = [scales] * len(clients)
    if len(scales) != len(clients):
        raise FedctlError(
            f"{len(scales)} LoRA scales for {len(clients)} adapters", "give one scale per adapter"
        )
    first = clients[0]
    modules = list(first.lora)
    in_scale = {m: [_scale_of(s, m) for s in scales] for m in modules}
    ranks = {m: [c.lora[m][1].shape[0] for c in clients] for m in modules}

    merged: dict[str, torch.Tensor] = {}
    stats: dict[str, ModuleStats] = {}
    if method == "naive":
        for m in modules:
            if len(set(ranks[m])) != 1:
                i = next(i for i, r in enumerate(ranks[m]) if r != ranks[m][0])
                raise FedctlError(
                    f"naive merge needs equal LoRA ranks, but on module {m} adapter {names[i]} has rank "
                    f"{ranks[m][i]} and {first.name} rank {ranks[m][0]}",
                    "use `fedctl merge svd`, which allows heterogeneous ranks",
                )
            s_out = in_scale[m][0] if out_scale is None else _scale_of(out_scale, m)
            factors = [(*c.lora[m], s) for c, s in zip(clients, in_scale[m], strict=True)]
            B, A, st = naive_merge(factors, w, out_scale=s_out)
            _put(merged, first, m, B, A)
            d, k = B.shape[0], A.shape[1]
            stats[m] = ModuleStats(m, (d, k), ranks[m], ranks[m][0], None, st["rel_error"])
    else:
        svd_rank = max(max(r) for r in ranks.values()) if svd_rank is None else svd_rank
        _check_svd_rank(svd_rank)
        # Group modules that share (d, k, client ranks, output scale) and merge each group in batched calls.
        groups: dict[tuple, list[str]] = {}
        for m in modules:
            b, a = first.lora[m]
            s_out = 1.0 if out_scale is None else _scale_of(out_scale, m)
            groups.setdefault((b.shape[0], a.shape[1], tuple(ranks[m]), s_out), []).append(m)
        for (d, k, rk, s_out), group in groups.items():
            chunk = max(1, _BATCH_BYTES // (8 * 3 * (d + k) * sum(rk)))
            for start in range(0, len(group), chunk):
                part = group[start : start + chunk]
                f64 = {"dtype": torch.float64, "device": first.lora[part[0]][0].device}
                coef = torch.tensor([[wi * in_scale[m][i] for i, wi in enumerate(w)] for m in part], **f64)
                Bs = [[c.lora[m][0] for m in part] for c in clients]
                As = [[c.lora[m][1] for m in part] for c in clients]
                B, A, S = _svd_merge_batched(Bs, As, coef, svd_rank, s_out)
                retained, rel_error = _truncation_stats(S, svd_rank)
                for j, m in enumerate(part):
                    _put(merged, first, m, B[j], A[j])
                    stats[m] = ModuleStats(m, (d, k), list(rk), svd_rank, retained[j], rel_error[j])

    for key, t0 in first.extra.items():
        if t0.is_floating_point():
            mean = sum(wi * c.extra[key].to(torch.float64) for wi, c in zip(w, clients, strict=True))
            merged[key] = mean.to(t0.dtype)
        elif all(torch.equal(c.extra[key], t0) for c in clients):
            merged[key] = t0.clone()
        else:
            raise FedctlError(
                f"non-float tensor {key} differs between adapters and cannot be averaged",
                "merge adapters that share it",
            )
    return merged, [stats[m] for m in modules]


def _put(merged: dict, first: LoraFactors, module: str, B: torch.Tensor, A: torch.Tensor) -> None:
    kb, ka = first.keys[module]
    b0, a0 = first.lora[module]
    merged[kb] = B.to(b0.dtype).contiguous()
    merged[ka] = A.to(a0.dtype).contiguous()


# ---------------------------------------------------------------------------------------------- directories


def merge_adapter_dirs(
    paths: Sequence[str | Path],
    method: str = "svd",
    *,
    weights: Sequence[float] | None = None,
    shard_manifests: Sequence[str | Path] | None = None,
    svd_rank: int | None = None,
    alpha: float | None = None,
    out: str | Path,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge peft adapter directories into `out` (a peft adapter dir + fuse_manifest.json); return the manifest.

    Weights come from `weights`, from the sizes of `shard_manifests`, or are equal. For svd the merged adapter
    has r = svd_rank (default: largest client rank) and lora_alpha = `alpha` (default svd_rank, so its scale is
    1 — peft's add_weighted_adapter convention; pass the clients' alpha to keep training with their scale).
    For naive, r is the clients' common rank and lora_alpha defaults to the first client's config.
    The output directory appears whole or not at all; it never replaces an input, a file, or a folder fedctl
    did not write, and replaces an earlier fedctl output only with `overwrite`.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise FedctlError(f"unknown merge method {method!r}", f"use one of: {', '.join(METHODS)}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise FedctlError("no adapters given", "pass --adapters a/ b/ c/")
    if weights is not None and shard_manifests is not None:
        raise FedctlError("both --weights and --shard-manifests given", "weight the adapters one way only")
    if shard_manifests is not None:
        if len(shard_manifests) != len(paths):
            raise FedctlError(
                f"--shard-manifests gives {len(shard_manifests)} files for {len(paths)} adapters",
                "give one client_<k>.json per adapter, in the same order as --adapters",
            )
        raw = weights_from_shard_manifests(shard_manifests)
        source = "shard_manifests"
        w = normalize_weights(raw, len(paths), source="--shard-manifests (indices per client)")
    else:
        raw = list(weights) if weights is not None else [1.0] * len(paths)
        source = "weights" if weights is not None else "equal"
        w = normalize_weights(raw, len(paths))
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise FedctlError(f"--alpha must be a positive number, got {alpha}", "e.g. --alpha 16")
    if svd_rank is not None:
        _check_svd_rank(svd_rank)
    from fedctl.utils.io import check_not_input, check_out_dir

    check_not_input(out, [*paths, *(shard_manifests or [])])
    check_out_dir(out, overwrite=overwrite)  # before the work: never replace what fedctl did not write

    loaded = [read_adapter_dir(p) for p in paths]
    configs = [c for c, _ in loaded]
    names = [str(p) for p in paths]
    clients = [split_state_dict(sd, n) for (_, sd), n in zip(loaded, names, strict=True)]
    scales = [
        {m: module_scale(cfg, m, c.lora[m][1].shape[0]) for m in c.lora}
        for cfg, c in zip(configs, clients, strict=True)
    ]
    t_loaded = time.perf_counter()

    config = dict(configs[0])
    if method == "svd":
        r_out = (
            svd_rank if svd_rank is not None else max(a.shape[0] for c in clients for _, a in c.lora.values())
        )
        _check_svd_rank(r_out)
        largest = max(max(b.shape[0], a.shape[1]) for c in clients for b, a in c.lora.values())
        if r_out > largest:  # the padded factors would be allocated at this size (2**70 → crash)
            raise FedctlError(
                f"--svd-rank {r_out} exceeds the largest adapted dimension ({largest})",
                f"use at most {largest}; a rank above min(d_out, d_in) of a module only adds zero padding",
            )
        alpha_out = float(alpha) if alpha is not None else float(r_out)
        out_scale: Scale = alpha_out / r_out
        config.update(
            r=r_out, lora_alpha=_num(alpha_out), use_rslora=False, rank_pattern={}, alpha_pattern={}
        )
    else:
        if alpha is None:
            out_scale = None  # keep the first client's config and per-module scales
            alpha_out = float(configs[0].get("lora_alpha", 8))
        else:
            alpha_out = float(alpha)
            first = clients[0]
            out_scale = {
                m: alpha_out / (math.sqrt(a.shape[0]) if config.get("use_rslora") else a.shape[0])
                for m, (_, a) in first.lora.items()
            }
            config.update(lora_alpha=_num(alpha_out), alpha_pattern={})
        r_out = int(configs[0].get("r", next(iter(clients[0].lora.values()))[1].shape[0]))
    config["inference_mode"] = True

    state_dicts = [sd for _, sd in loaded]
    merged, module_stats = merge_state_dicts(
        state_dicts,
        w,
        method=method,
        svd_rank=r_out if method == "svd" else None,
        scales=scales,
        out_scale=out_scale,
        names=names,
    )
    t_merged = time.perf_counter()

    from fedctl.utils.io import atomic_dir

    out = Path(out)
    rel = [s.rel_error for s in module_stats]
    retained = [s.retained_energy for s in module_stats if s.retained_energy is not None]
    manifest: dict[str, Any] = {
        "method": method,
        "out": str(out),
        "inputs": names,
        "weights": w,
        "raw_weights": raw,
        "weight_source": source,
        "shard_manifests": [str(p) for p in shard_manifests] if shard_manifests is not None else None,
        "ranks": [sorted({a.shape[0] for _, a in c.lora.values()}) for c in clients],
        "lora_alpha": [cfg.get("lora_alpha") for cfg in configs],
        "svd_rank": r_out if method == "svd" else None,
        "rank_out": r_out,
        "alpha_out": alpha_out,
        "max_rel_error": max(rel),
        "min_retained_energy": min(retained) if retained else None,
        "modules": [asdict(s) for s in module_stats],
        "averaged_tensors": sorted(clients[0].extra),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_adapter_dir(tmp, config, merged)
        t_saved = time.perf_counter()
        manifest["timings_s"] = {
            "load": t_loaded - t_start,
            "merge": t_merged - t_loaded,
            "save": t_saved - t_merged,
            "total": t_saved - t_start,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _num(x: float) -> int | float:
    """Keep integral alphas integral in adapter_config.json, as peft writes them."""
    return int(x) if float(x).is_integer() else x
