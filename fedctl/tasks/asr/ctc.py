"""A log-space CTC loss that can be differentiated twice, and the CTC feasibility rule.

Hand-written because `torch.nn.functional.ctc_loss` has no double backward ("derivative for
_ctc_loss_backward is not implemented", pytorch#70108), which gradient matching needs (d/dx of a
distance between parameter gradients). The reference attack's own CTC works in probability space and
underflows once T reaches the hundreds (loss inf, NaN gradients on 10 s clips); this one runs the
forward (alpha) recursion of Graves et al. 2006 in log space.

Semantics follow `F.ctc_loss`: the value is -log p(target | input) per utterance; reduction "mean" divides
each loss by its target length (clamped to at least 1) and averages over the batch. One difference: the
native op's gradient w.r.t. `log_probs` assumes they come from a log_softmax (it returns the gradient
w.r.t. the logits); this loss is an ordinary function of `log_probs`, so the two agree exactly on the
gradient w.r.t. logits passed through `log_softmax`, which is how every model here produces them.

Impossible alignments (too few frames: see `min_frames_for`) give +inf without any NaN in first or second
derivatives: -inf never enters a subtraction whose gradient is taken (`_logsumexp` masks with `torch.where`),
and with `zero_infinity=True` such losses and their gradients are exactly 0.

The recursion is vectorised over the batch and the extended label sequence; a Python loop runs over the
T time steps (each step depends on the previous one), which is fine for T of a few hundred frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedctl.errors import FedctlError

REDUCTIONS = ("mean", "sum", "none")


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log Σ exp(x) along `dim` that is -inf (with zero gradient, at every order) when all entries are -inf.

    `torch.logsumexp` returns -inf there but its backward computes exp(-inf - -inf) = NaN.
    """
    m = x.detach().amax(dim=dim, keepdim=True)
    finite = torch.isfinite(m)
    m = torch.where(finite, m, torch.zeros_like(m))  # the shift is a constant: exact for any value
    s = torch.exp(x - m).sum(dim=dim, keepdim=True)
    out = torch.where(finite, torch.log(torch.where(finite, s, torch.ones_like(s))) + m,
                      torch.full_like(s, float("-inf")))
    return out.squeeze(dim)


def _padded_targets(targets: torch.Tensor, target_lengths: torch.Tensor, batch: int) -> torch.Tensor:
    """Targets as [B, S] (S = max target length, at least 1) from padded [B, S'] or concatenated [ΣL] form."""
    s_max = max(int(target_lengths.max()) if batch else 0, 1)
    if targets.dim() == 2:
        if targets.shape[0] != batch:
            raise ValueError(f"targets has {targets.shape[0]} rows for a batch of {batch}")
        out = targets[:, :s_max]
        if out.shape[1] < s_max:
            raise ValueError(f"padded targets have {targets.shape[1]} columns but a target length is {s_max}")
        return torch.nn.functional.pad(out, (0, s_max - out.shape[1]))
    if targets.dim() != 1:
        raise ValueError(f"targets must be [B, S] or concatenated 1-D, got shape {tuple(targets.shape)}")
    if int(target_lengths.sum()) != targets.numel():
        raise ValueError(f"concatenated targets hold {targets.numel()} labels but target_lengths sum to "
                         f"{int(target_lengths.sum())}")
    out = targets.new_zeros(batch, s_max)
    pos = torch.arange(s_max, device=targets.device)
    mask = pos < target_lengths[:, None]
    out[mask] = targets
    return out


def ctc_loss(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor | Sequence[int],
    target_lengths: torch.Tensor | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """CTC negative log-likelihood, twice differentiable; arguments as `torch.nn.functional.ctc_loss`.

    log_probs: [T, B, C] log-probabilities (time-major). targets: padded [B, S] or concatenated 1-D class
    ids (never `blank`). input_lengths, target_lengths: [B] frames and labels per utterance.
    Returns a scalar ("mean", "sum") or per-utterance losses [B] ("none").
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [T, B, C], got shape {tuple(log_probs.shape)}")
    steps, batch, _classes = log_probs.shape
    device = log_probs.device
    input_lengths = torch.as_tensor(input_lengths, dtype=torch.long, device=device).reshape(batch)
    target_lengths = torch.as_tensor(target_lengths, dtype=torch.long, device=device).reshape(batch)
    if batch and (int(input_lengths.max()) > steps or int(input_lengths.min()) < 0):
        raise ValueError(f"input_lengths must lie in 0..{steps}, got {input_lengths.tolist()}")
    labels = _padded_targets(torch.as_tensor(targets, device=device).long(), target_lengths, batch)  # [B, S]
    s_max = labels.shape[1]

    # Extended sequence l' = blank, l1, blank, l2, ..., lS, blank (positions 0..2S); padding labels -> blank.
    valid_label = torch.arange(s_max, device=device) < target_lengths[:, None]
    used = labels[valid_label]
    if used.numel() and (bool((used == blank).any()) or int(used.min()) < 0 or int(used.max()) >= _classes):
        raise ValueError(f"target labels must lie in 0..{_classes - 1} and never be the blank ({blank})")
    labels = torch.where(valid_label, labels, torch.full_like(labels, blank))
    ext = torch.full((batch, 2 * s_max + 1), blank, dtype=torch.long, device=device)
    ext[:, 1::2] = labels
    # A label may skip the blank before it unless it repeats the previous label ("aa" needs a blank between).
    skip = torch.zeros_like(ext, dtype=torch.bool)
    skip[:, 3::2] = labels[:, 1:] != labels[:, :-1]

    # lp[t, b, s] = log y_t(l'_s)
    lp = log_probs.gather(2, ext.unsqueeze(0).expand(steps, -1, -1))
    neg_inf = torch.tensor(float("-inf"), dtype=log_probs.dtype, device=device)
    pad1 = neg_inf.expand(batch, 1)
    pad2 = neg_inf.expand(batch, 2)
    start = torch.zeros_like(ext, dtype=torch.bool)
    start[:, 0] = True
    start[:, 1] = target_lengths > 0
    alpha = torch.where(start, lp[0], neg_inf)  # t = 0: start in the first blank or the first label
    for t in range(1, steps):
        stay = alpha
        step = torch.cat([pad1, alpha[:, :-1]], dim=1)
        jump = torch.where(skip, torch.cat([pad2, alpha[:, :-2]], dim=1), neg_inf)
        nxt = _logsumexp(torch.stack([stay, step, jump], dim=-1), dim=-1) + lp[t]
        # utterances that have ended keep their alpha from their last frame
        alpha = torch.where((t < input_lengths)[:, None], nxt, alpha)

    # End in the last label (2L - 1) or the final blank (2L); with L = 0 only the blank counts.
    last = 2 * target_lengths
    end_blank = alpha.gather(1, last[:, None])
    end_label = alpha.gather(1, (last - 1).clamp(min=0)[:, None])
    end_label = torch.where((target_lengths > 0)[:, None], end_label, neg_inf)
    loss = -_logsumexp(torch.cat([end_blank, end_label], dim=1), dim=1)
    # Zero input frames: the empty path only (p = 1 for an empty target, 0 otherwise), as F.ctc_loss.
    no_frames = input_lengths == 0
    if bool(no_frames.any()):
        empty = torch.where(target_lengths == 0, torch.zeros_like(loss), torch.full_like(loss, float("inf")))
        loss = torch.where(no_frames, empty, loss)

    if zero_infinity:
        loss = torch.where(torch.isinf(loss), torch.zeros_like(loss), loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return (loss / target_lengths.clamp(min=1).to(loss.dtype)).mean()


def min_frames_for(target_ids: Sequence[int]) -> int:
    """Fewest output frames a CTC alignment of `target_ids` needs: one per label plus one blank between each
    pair of equal adjacent labels ("hello" needs 6: h e l _ l o)."""
    ids = [int(i) for i in target_ids]
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def check_feasible(utterance_id: str, target_ids: Sequence[int], output_frames: int) -> None:
    """Refuse, by name, an utterance whose model output is too short for its transcript.

    Such an utterance has no CTC alignment: its loss is +inf and its gradients are useless (NaN with the
    reference CTC), so it is refused rather than trained on as an infinite loss.
    """
    need = min_frames_for(target_ids)
    if output_frames < need:
        raise FedctlError(
            f"utterance {utterance_id} is too short for its transcript: the model emits {output_frames} output "
            f"frames but its {len(target_ids)}-character transcript needs at least {need} "
            "(one per character plus a blank between repeated characters)",
            "leave it out by raising the minimum duration (fedctl attack: --min-dur MS; fedctl train asr: "
            "--set task.min_dur=MS), or use DS1, which keeps 50 frames/s where DS2 halves the frame rate",
        )
