"""Reading the transcript off a reconstruction made without it: the CTC posteriors come back exactly from
their mixture with p, and posterior matching recovers transcripts that best-path decoding loses."""

from __future__ import annotations

import torch

from fedctl.attacks.case import load_victim
from fedctl.attacks.transcript import best_path, ctc_posteriors, match_transcript, recovered_posteriors
from fedctl.tasks.asr.data import collate
from fedctl.tasks.asr.text import decode, encode


def _log_probs(frames, seed=0):
    model = load_victim("ds1", "tiny", seed=0).double()
    gen = torch.Generator().manual_seed(seed)
    x, lengths, _, _ = collate([torch.randn(f, 26, generator=gen, dtype=torch.float64) for f in frames],
                               [[1]] * len(frames))
    with torch.no_grad():
        return model(x, lengths)


def test_recovered_posteriors_undo_the_mixing_per_utterance():
    log_probs, out_lengths = _log_probs([12, 9])
    labels = [[3, 4, 5], [7, 7]]
    gamma = torch.zeros_like(log_probs)
    for j, (n, ids) in enumerate(zip(out_lengths.tolist(), labels)):
        gamma[:n, j] = ctc_posteriors(log_probs[:n, j], [ids])[0]
    lam = torch.tensor([1 / 3, 1 / 2], dtype=torch.float64)  # 1/target length: what the client's gradient implies
    mixed = lam[None, :, None] * gamma + (1 - lam[None, :, None]) * log_probs.exp()
    recovered, lam_hat = recovered_posteriors(log_probs, out_lengths, mixed.log())
    torch.testing.assert_close(lam_hat, lam, rtol=1e-12, atol=0)
    for j, n in enumerate(out_lengths.tolist()):
        assert float((recovered[:n, j] - gamma[:n, j]).abs().max()) < 1e-12


def test_match_transcript_recovers_what_best_path_drops():
    # an untrained victim: γ is the transcript's alignment prior, blank-dominated mid-utterance
    log_probs, _ = _log_probs([20])
    truth = encode("they c")
    gamma = ctc_posteriors(log_probs[:, 0], [truth])[0]
    assert decode(best_path(gamma)) != "they c"
    ids, dist = match_transcript(log_probs[:, 0], gamma)
    assert decode(ids) == "they c" and dist < 1e-9
    assert ctc_posteriors(log_probs[:, 0], [encode("a" * 21)]).abs().max() == 0  # impossible: no NaN, all zero
