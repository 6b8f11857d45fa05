"""Merge time and accuracy: fedctl's factored SVD merge vs peft `add_weighted_adapter(combination_type="svd")`.

Same K client adapters, same weights, same output rank. peft densifies Σ w_i s_i B_i A_i (d×k) and runs a full
torch.linalg.svd on it per module; fedctl QR-factors the stacked B's and A's and takes the SVD of a Kr×Kr core.
Both errors are measured against the exact weighted-mean ΔW, formed densely in float64 here (bench only).

    python bench/bench_merge.py            # full: 24 × 768² (roberta-base shapes) and 2 × 4096² modules
    python bench/bench_merge.py --quick    # smaller: 4 × 768² and 1 × 2048²
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

K, R, ALPHA = 10, 8, 16  # clients, client rank, client lora_alpha (scale 2)


@dataclass
class Case:
    name: str
    n_modules: int
    d: int  # out features
    k: int  # in features
    target: float  # speed-up the issue asks for
    svd_rank: int = R  # R: a truncation (the mean has rank K·R = 80); K·R: exact


def _cases(quick: bool) -> list[Case]:
    if quick:
        return [
            Case("roberta-base shapes", 4, 768, 768, 30),
            Case("large (2048² in quick)", 1, 2048, 2048, 500),
        ]
    # 4096²: peft's dense SVD takes ~100 s per module on 2 CPU cores, so 2 modules, not a full 7B model's 128+.
    return [
        Case("roberta-base shapes", 24, 768, 768, 30),
        Case("roberta-base, exact", 24, 768, 768, 30, svd_rank=K * R),
        Case("4096² modules", 2, 4096, 4096, 500),
    ]


class _Linears(nn.Module):
    """A bare stack of Linear layers: peft wraps any model given target_modules."""

    def __init__(self, n: int, d: int, k: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(k, d, bias=False) for _ in range(n))


def _client_factors(case: Case, seed: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """factors[i][m] = (B, A) float32. Clients share a common direction plus noise, as fine-tunes of one
    task do, so a rank-8 merge is a meaningful approximation rather than pure noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    common = [
        (torch.randn(case.d, R, generator=g), torch.randn(R, case.k, generator=g))
        for _ in range(case.n_modules)
    ]
    for _ in range(K):
        client = []
        for b0, a0 in common:
            b = (b0 + 0.3 * torch.randn(case.d, R, generator=g)) / case.d**0.5
            a = (a0 + 0.3 * torch.randn(R, case.k, generator=g)) / case.k**0.5
            client.append((b, a))
        out.append(client)
    return out


def _exact_means(case: Case, factors, weights) -> list[torch.Tensor]:
    s = ALPHA / R
    return [
        sum(w * s * f[m][0].double() @ f[m][1].double() for w, f in zip(weights, factors, strict=True))
        for m in range(case.n_modules)
    ]


def _rel_error(deltas: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """Frobenius relative error over all modules together."""
    num = sum(float((d.double() - e).square().sum()) for d, e in zip(deltas, exact, strict=True))
    return (num / sum(float(e.square().sum()) for e in exact)) ** 0.5


def _bench_fedctl(case: Case, factors, weights, repeats: int) -> tuple[float, list[torch.Tensor]]:
    from fedctl.lora.merge import merge_state_dicts

    state_dicts = [
        {
            key: t
            for m, (b, a) in enumerate(client)
            for key, t in (
                (f"base_model.model.layers.{m}.lora_B.weight", b),
                (f"base_model.model.layers.{m}.lora_A.weight", a),
            )
        }
        for client in factors
    ]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        merged, _ = merge_state_dicts(
            state_dicts, weights, method="svd", svd_rank=case.svd_rank, scales=ALPHA / R, out_scale=1.0
        )
        times.append(time.perf_counter() - t0)
    deltas = [
        merged[f"base_model.model.layers.{m}.lora_B.weight"].double()
        @ merged[f"base_model.model.layers.{m}.lora_A.weight"].double()
        for m in range(case.n_modules)
    ]
    return statistics.median(times), deltas


def _bench_peft(case: Case, factors, weights) -> tuple[float, list[torch.Tensor]]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    targets = [f"layers.{m}" for m in range(case.n_modules)]
    config = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(_Linears(case.n_modules, case.d, case.k), config, adapter_name="c0")
    for i in range(1, K):
        model.add_adapter(f"c{i}", config)
    with torch.no_grad():
        for m, layer in enumerate(model.base_model.model.layers):
            for i in range(K):
                layer.lora_B[f"c{i}"].weight.copy_(factors[i][m][0])
                layer.lora_A[f"c{i}"].weight.copy_(factors[i][m][1])
    names = [f"c{i}" for i in range(K)]
    t0 = time.perf_counter()
    # "svd" = task_arithmetic (Σ w_i·ΔW_i, dense d×k) then a full torch.linalg.svd of it, per module
    model.add_weighted_adapter(names, list(weights), "merged", combination_type="svd", svd_rank=case.svd_rank)
    elapsed = time.perf_counter() - t0
    scale = model.peft_config["merged"].lora_alpha / model.peft_config["merged"].r  # = 1
    deltas = [
        scale
        * layer.lora_B["merged"].weight.detach().double()
        @ layer.lora_A["merged"].weight.detach().double()
        for layer in model.base_model.model.layers
    ]
    return elapsed, deltas


def main(quick: bool = False) -> dict:
    """Run every case once, side by side; return {"cases": [...]} with seconds, speed-ups and errors."""
    results = []
    for case in _cases(quick):
        factors = _client_factors(case)
        raw = [float(i + 1) for i in range(K)]  # unequal client weights (like shard sizes)
        weights = [w / sum(raw) for w in raw]
        exact = _exact_means(case, factors, weights)
        t_fedctl, d_fedctl = _bench_fedctl(case, factors, weights, repeats=5)
        t_peft, d_peft = _bench_peft(case, factors, weights)
        results.append(
            {
                "case": case.name,
                "modules": case.n_modules,
                "shape": [case.d, case.k],
                "clients": K,
                "client_rank": R,
                "svd_rank": case.svd_rank,
                "fedctl_s": t_fedctl,
                "peft_s": t_peft,
                "speedup": t_peft / t_fedctl,
                "target_speedup": case.target,
                "fedctl_rel_error": _rel_error(d_fedctl, exact),
                "peft_rel_error": _rel_error(d_peft, exact),
                "fedctl_vs_peft_rel_diff": _rel_error(d_fedctl, [d.double() for d in d_peft]),
            }
        )
    return {"bench": "merge", "quick": quick, "torch_threads": torch.get_num_threads(), "cases": results}


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    threads = result["torch_threads"]
    table = Table(title=f"LoRA merge of K={K} client adapters of rank {R} (CPU, torch threads {threads})")
    columns = ("case", "modules", "shape", "svd_rank", "fedctl s", "peft s", "speed-up", "target")
    for col in (*columns, "fedctl rel.err", "peft rel.err", "fedctl vs peft"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for c in result["cases"]:
        table.add_row(
            c["case"],
            str(c["modules"]),
            "×".join(map(str, c["shape"])),
            str(c["svd_rank"]),
            f"{c['fedctl_s']:.4f}",
            f"{c['peft_s']:.2f}",
            f"{c['speedup']:.0f}×",
            f"≥{c['target_speedup']:.0f}×",
            f"{c['fedctl_rel_error']:.2e}",
            f"{c['peft_rel_error']:.2e}",
            f"{c['fedctl_vs_peft_rel_diff']:.1e}",
        )
    Console(width=170).print(table)
    print(
        "rel.err = ‖ΔW_merged − Σ w_i ΔW_i‖_F / ‖Σ w_i ΔW_i‖_F over all modules. The mean has rank ≤ K·r = 80:"
    )
    print(
        "svd_rank 8 is a truncation (both give the best rank-8 error), svd_rank 80 is exact up to float32 storage."
    )


if __name__ == "__main__":
    report(main(quick="--quick" in sys.argv[1:]))
