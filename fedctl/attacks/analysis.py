"""Analysis: feature-reconstruction metrics and speaker identification on reconstructions.

Speaker model: multinomial logistic regression on per-utterance statistics of the features (mean and std of
each coefficient over time, 2·F numbers, standardised). Why it fits: the reconstructions keep the
utterance's frame count and coefficients but the attacker's errors are frame-local, so time-pooled
statistics are what survive; mean/std of MFCCs are the classic i-vector-free speaker cue (long-term average
spectrum, channel), train in a second on CPU with scikit-learn, and need no other downloaded model
(Dang et al. used a Deep Speaker ResCNN retrained on their MFCCs; that network is not available here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def feature_metrics(x_hat: torch.Tensor, x_true: torch.Tensor, x_random: torch.Tensor) -> dict[str, float]:
    """MAE (mean |x̂ − x|), the random start's MAE, cosine similarity of the flattened matrices and
    SNR = 20·log10(‖x‖ / ‖x − x̂‖) in dB."""
    err = (x_hat - x_true).double()
    x = x_true.double()
    return {
        "feature_mae": float(err.abs().mean()),
        "random_mae": float((x_random.double() - x).abs().mean()),
        "cosine": float(F.cosine_similarity(x_hat.double().flatten(), x.flatten(), dim=0)),
        "snr_db": float(20 * torch.log10(x.norm() / err.norm().clamp(min=1e-12))),
    }


def windows(features: torch.Tensor, frames: int | None) -> list[torch.Tensor]:
    """The speaker model's training examples from one clean utterance [T, F]: the whole utterance
    (frames None), or every `frames`-long window at a hop of frames // 2 (at least one: the utterance itself
    when shorter), so that a model scored on `frames`-frame reconstructions is trained on inputs that long."""
    if frames is None or features.shape[0] <= frames:
        return [features]
    hop = max(1, frames // 2)
    return [features[s: s + frames] for s in range(0, features.shape[0] - frames + 1, hop)]


def utterance_stats(features: torch.Tensor) -> np.ndarray:
    """[2F]: per-coefficient mean and std over time of one utterance's features [T, F]."""
    f = features.double()
    return torch.cat([f.mean(dim=0), f.std(dim=0, unbiased=False)]).numpy()


class SpeakerID:
    """Logistic regression speaker classifier on `utterance_stats` (see module docstring)."""

    def __init__(self, features: Sequence[torch.Tensor], speakers: Sequence[str], seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.stack([utterance_stats(f) for f in features])
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
        self.model.fit(X, list(speakers))
        self.classes = list(self.model.classes_)

    def ranks(self, features: Sequence[torch.Tensor], speakers: Sequence[str]) -> list[int]:
        """0-based rank of the true speaker among all classes for each utterance (0 = top-1)."""
        probs = self.model.predict_proba(np.stack([utterance_stats(f) for f in features]))
        order = np.argsort(-probs, axis=1)
        out = []
        for row, spk in zip(order, speakers):
            idx = self.classes.index(spk) if spk in self.classes else -1
            out.append(int(np.where(row == idx)[0][0]) if idx >= 0 else len(self.classes))
        return out

    def topk(self, features: Sequence[torch.Tensor], speakers: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict:
        """Top-k accuracy of each k, with its Wilson 95% interval (`top{k}_ci`: [low, high])."""
        ranks = self.ranks(features, speakers)
        out: dict = {}
        for k in ks:
            hits = sum(r < k for r in ranks)
            out[f"top{k}"] = hits / len(ranks) if ranks else float("nan")
            out[f"top{k}_ci"] = wilson_interval(hits, len(ranks))
        return out

    def chance(self, ks: Sequence[int] = (1, 5)) -> dict:
        """Uniform guessing: min(k, n) / n over the model's n speakers."""
        n = len(self.classes)
        return {f"top{k}": min(k, n) / n for k in ks}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> list[float]:
    """[low, high] Wilson score interval of a rate successes / n (scipy's; a rate from 8-20 utterances moves by
    ±0.2-0.3, and Wilson stays inside [0, 1] and is not degenerate at 0/n or n/n as the normal interval is)."""
    if n == 0:
        return [float("nan"), float("nan")]
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def prior_topk(train_speakers: Sequence[str], scored_speakers: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict:
    """The frequency-prior baseline: the expected top-k accuracy, on the scored utterances, of always guessing the
    k speakers most frequent in the speaker model's training examples (ties at the k-th place broken uniformly
    at random, so a speaker of a tied group of m sharing r of the k places counts r / m). On unbalanced speakers
    it is the floor a speaker model must beat, where uniform chance (k / n) understates it."""
    from collections import Counter

    counts = Counter(train_speakers)
    levels = sorted(set(counts.values()), reverse=True)
    out = {}
    for k in ks:
        prob: dict[str, float] = {}
        left = k
        for c in levels:  # whole frequency groups while they fit, then a share of the next
            group = [s for s in counts if counts[s] == c]
            take = min(left, len(group))
            for s_ in group:
                prob[s_] = take / len(group)
            left -= take
        out[f"top{k}"] = (sum(prob.get(s_, 0.0) for s_ in scored_speakers) / len(scored_speakers)
                          if scored_speakers else float("nan"))
    return out
