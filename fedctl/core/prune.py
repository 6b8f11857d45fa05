"""Magnitude pruning of what a client shares: per tensor, only the largest-|x| entries survive.

The gradient-pruning defence of Zhu et al. 2019 ("Deep Leakage from Gradients") and the top-k
sparsification of Aji & Heafield 2017 ("Sparse Communication for Distributed Gradient Descent"). One
implementation serves the attack's client (`fedctl.attacks.case.apply_defense`, on a gradient), the attack's
top-gradient masks (`fedctl.attacks.objective.top_masks`) and federated training (`federation.prune`, on each
client's update client − global, see `prune_update`).

Counts are exact: pruning a fraction p of n entries zeroes int(p·n) of them and keeps the other
n − int(p·n); among entries of equal magnitude at the cut, the earlier ones (flat index) are kept.
"""

from __future__ import annotations

import torch


def kept_entries(numel: int, fraction: float) -> int:
    """Entries a tensor of `numel` keeps when the fraction `fraction` of them (rounded down) is pruned."""
    return numel - int(fraction * numel)


def top_magnitude_mask(t: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask shaped like `t`, True at exactly min(keep, numel) of its largest-|t| entries.

    O(numel) (a k-th value and a comparison, no sort): this runs on every shared tensor of every client.
    """
    flat = t.detach().abs().flatten()
    n = flat.numel()
    if keep >= n:
        return torch.ones_like(t, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(t, dtype=torch.bool)
    cut = flat.kthvalue(n - keep).values  # the largest magnitude that goes
    mask = flat > cut
    missing = keep - int(mask.sum())
    if missing > 0:  # entries tied with the cut: keep the earliest ones
        mask[(flat == cut).nonzero().flatten()[:missing]] = True
    return mask.view(t.shape)


def prune_smallest(t: torch.Tensor, fraction: float) -> torch.Tensor:
    """`t` with its int(fraction·numel) smallest-|t| entries set to zero (a new tensor)."""
    if fraction <= 0:
        return t
    mask = top_magnitude_mask(t, kept_entries(t.numel(), fraction))
    return torch.where(mask, t, torch.zeros_like(t))


@torch.no_grad()
def prune_update(params: dict[str, torch.Tensor], start: dict[str, torch.Tensor], fraction: float) -> dict[str, int]:
    """Prune the update params − start in place, per floating-point tensor: entries outside the update's
    largest-|Δ| (1 − fraction) go back to their `start` value, the others keep their trained value exactly, so
    the server's params − start is the pruned update bit for bit. Integer tensors (BatchNorm's batch counters)
    are left as they are. Returns the kept entries per pruned tensor."""
    kept = {}
    for name, value in params.items():
        if not value.is_floating_point():
            continue
        before = start[name].to(value.device, value.dtype)
        mask = top_magnitude_mask(value - before, kept_entries(value.numel(), fraction))
        value.copy_(torch.where(mask, value, before))
        kept[name] = int(mask.sum())
    return kept
