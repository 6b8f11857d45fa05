"""Reading the client's transcript off a reconstruction made without it (`AttackConfig.transcripts=False`).

The attack returns features x̂ and alignment logits A whose posteriors Γ = softmax(A) satisfy, at the
optimum, Γ_t = λγ_t + (1 − λ)p_t per utterance (`fedctl.attacks.objective`): γ the CTC posteriors of the
unknown transcript, p the victim's softmax at x̂. Two steps:

1. `recovered_posteriors` undoes the mixing. γ is exactly zero for every class missing from the transcript,
   so the true λ is the smallest one that keeps γ = p + (Γ − p)/λ non-negative.
2. `match_transcript` finds the label sequence whose CTC posteriors equal γ. Best-path decoding of γ (argmax
   per frame) is not enough: an untrained victim's p is near uniform, γ is then the alignment prior of the
   transcript, blank-dominated in the middle frames, and its argmax path drops characters (measured: the true
   γ of 'they c' over 20 frames decodes to 'tc'; the search recovers all 10 cropped transcripts of the
   quality bench exactly). Local search from the best path: every single-character insertion, deletion and
   substitution, scored in one batched CTC forward-backward by the L1 distance of its posteriors to γ, the
   best taken while it improves. Characters are drawn from those with posterior mass ≥ 0.5 (every CTC path
   emits each label at least once, so each occurrence in the transcript carries ≥ 1 frame of mass).

Hand-written: no CTC library infers a label sequence from posteriors (decoders start from log-probabilities).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedctl.attacks.objective import grouped_batch_norm
from fedctl.tasks.asr.ctc import ctc_loss
from fedctl.tasks.asr.models import time_mask
from fedctl.tasks.asr.text import BLANK, decode


def recovered_posteriors(log_probs: torch.Tensor, out_lengths: torch.Tensor,
                         alignment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC posteriors γ [T', B, C] read off the attacker's Γ = softmax(alignment), and the mixing λ [B]:
    λ̂ = max over valid frames and classes of 1 − Γ/p, γ = p + (Γ − p)/λ̂ (module docstring). Each valid frame
    of the result is a distribution whatever Γ is; frames t >= out_lengths[b] are returned as Γ."""
    p = log_probs.double().exp()
    mixed = alignment.double().softmax(dim=-1)
    valid = time_mask(out_lengths, log_probs.shape[0])[..., None]
    slack = torch.where(valid, 1.0 - mixed / p, torch.full_like(p, -math.inf))
    lam = slack.amax(dim=(0, 2)).clamp(min=1e-12, max=1.0)
    out = torch.where(valid, p + (mixed - p) / lam[None, :, None], mixed)
    return out.clamp(min=0.0), lam


def ctc_posteriors(log_probs: torch.Tensor, candidates: list[list[int]]) -> torch.Tensor:
    """[K, T', C] CTC posteriors of each candidate label sequence under one utterance's log_probs [T', C]
    (γ = −dCTC/dlog_probs, from the log-space CTC; an impossible candidate gets all zeros)."""
    count = len(candidates)
    lp = log_probs.detach().double()[:, None].expand(-1, count, -1).clone().requires_grad_(True)
    width = max(1, max(len(c) for c in candidates))
    targets = torch.tensor([list(c) + [1] * (width - len(c)) for c in candidates], dtype=torch.long)
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    with torch.enable_grad():
        loss = ctc_loss(lp, targets, torch.full((count,), lp.shape[0], dtype=torch.long), lengths,
                        reduction="sum", zero_infinity=True)
        (grad,) = torch.autograd.grad(loss, lp)
    return (-grad).permute(1, 0, 2)


def best_path(posteriors: torch.Tensor) -> list[int]:
    """Label ids of the best path of posteriors [T', C]: argmax per frame, repeats merged, blanks dropped."""
    path = posteriors.argmax(dim=-1).tolist()
    return [c for t, c in enumerate(path) if c != BLANK and (t == 0 or c != path[t - 1])]


def match_transcript(log_probs: torch.Tensor, posteriors: torch.Tensor,
                     max_rounds: int | None = None) -> tuple[list[int], float]:
    """The label ids whose CTC posteriors under log_probs [T', C] (one utterance, valid frames only) are
    closest in L1 to `posteriors` [T', C], by local search from the best path (module docstring); and that
    distance (0 when found exactly)."""
    current = best_path(posteriors)
    inventory = [c for c in range(posteriors.shape[-1]) if c != BLANK and float(posteriors[:, c].sum()) >= 0.5]

    def score(cands: list[list[int]]) -> torch.Tensor:
        return (ctc_posteriors(log_probs, cands) - posteriors[None].double()).abs().sum(dim=(1, 2))

    best = float(score([current])[0])
    for _ in range(max_rounds or 4 * log_probs.shape[0]):
        cands = []
        for i in range(len(current) + 1):
            cands += [current[:i] + [c] + current[i:] for c in inventory]
        for i in range(len(current)):
            cands.append(current[:i] + current[i + 1:])
            cands += [current[:i] + [c] + current[i + 1:] for c in inventory if c != current[i]]
        if not cands:
            break
        scores = score(cands)
        k = int(scores.argmin())
        if float(scores[k]) >= best * (1 - 1e-9):
            break
        current, best = cands[k], float(scores[k])
    return current, best


@torch.no_grad()
def recovered_transcripts(model: nn.Module, features: torch.Tensor, lengths: torch.Tensor,
                          alignment: torch.Tensor) -> list[tuple[str, str]]:
    """(matched transcript, best-path transcript) per utterance of a reconstruction without transcripts:
    features [T, b, F] and alignment logits [T', b, C] from `reconstruct`. BatchNorm statistics as the
    attack's (per batch, buffers untouched)."""
    with grouped_batch_norm(1, features.shape[1]):
        log_probs, out_lengths = model(features.to(next(model.parameters()).dtype), lengths)
    posteriors, _ = recovered_posteriors(log_probs, out_lengths, alignment)
    out = []
    for j, n in enumerate(out_lengths.tolist()):
        ids, _ = match_transcript(log_probs[:n, j], posteriors[:n, j])
        out.append((decode(ids), decode(best_path(posteriors[:n, j]))))
    return out
