"""The attack's objective: per-restart gradients (batched) equal each restart's own autograd gradient, for
the output layer and for every layer, DS1 and DS2 (train-mode BatchNorm per restart); distances; the
second derivative goes through the log-space CTC, never F.ctc_loss; without transcripts, the relaxed
(alignment) loss gives exactly the CTC's parameter gradients at the CTC posteriors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedctl.attacks.case import Defense, apply_defense, client_update, load_victim
from fedctl.attacks.objective import gradient_distance, per_restart_gradients, top_masks
from fedctl.tasks.asr.ctc import ctc_loss
from fedctl.tasks.asr.data import collate
from fedctl.tasks.asr.models import time_mask


def _case(arch, frames, restarts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    nfeat = 26 if arch == "ds1" else 257
    feats = [torch.randn(frames, nfeat, generator=gen) * (5 if arch == "ds1" else 1) for _ in range(restarts)]
    return collate(feats, [[3, 4, 5]] * restarts)


@pytest.mark.parametrize("arch,match", [("ds1", "last"), ("ds2", "last"), ("ds1", "all"), ("ds2", "all")])
def test_batched_restart_gradients_equal_each_restarts_own(arch, match):
    model = load_victim(arch, "tiny", seed=0)
    x, lengths, targets, tlens = _case(arch, 24, 3)
    batched, _ = per_restart_gradients(model, x, lengths, targets, tlens, 3, match, create_graph=False)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    for r in range(3):
        own = client_update(model, x[:, r:r + 1], lengths[r:r + 1], targets[r:r + 1], tlens[r:r + 1], match=match)
        for b, o in zip(batched, own):
            torch.testing.assert_close(b[r], o, rtol=1e-3, atol=1e-5)  # float32 sums in another order
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)  # the attacker never updates BN buffers


def test_client_gradient_is_the_autograd_gradient_of_the_mean_ctc():
    model = load_victim("ds1", "tiny", seed=0)
    x, lengths, targets, tlens = _case("ds1", 20, 2)
    shared = client_update(model, x, lengths, targets, tlens, match="last")
    log_probs, out_lengths = model(x, lengths)
    loss = F.ctc_loss(log_probs, targets, out_lengths, tlens)  # native CTC as the reference for the value
    ref = torch.autograd.grad(loss, [model.out.weight, model.out.bias])
    for s, r in zip(shared, ref):
        torch.testing.assert_close(s, r, rtol=1e-4, atol=1e-7)


def test_distance_needs_the_second_derivative_through_log_space_ctc(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("F.ctc_loss has no double backward and must not be used by the attack")

    monkeypatch.setattr(F, "ctc_loss", forbidden)
    monkeypatch.setattr(torch.nn.functional, "ctc_loss", forbidden)
    model = load_victim("ds1", "tiny", seed=0)
    x, lengths, targets, tlens = _case("ds1", 16, 2)
    target = [t[0].detach() for t in per_restart_gradients(model, x[:, :1], lengths[:1], targets[:1], tlens[:1], 1,
                                                           create_graph=False)[0]]
    xs = x.clone().requires_grad_(True)
    dummy, _ = per_restart_gradients(model, xs, lengths, targets, tlens, 2, create_graph=True)
    dist = gradient_distance(dummy, target)
    (gx,) = torch.autograd.grad(dist.sum(), xs)
    assert float(dist[0]) < 1e-6 < float(dist[1])  # restart 0 is the client's own input
    # Without create_graph, dCTC/dlogits is a constant and only the path through the hidden features h
    # remains: the true x-gradient (with d²CTC/dlogits dx) differs from that truncated one.
    dummy_first, _ = per_restart_gradients(model, xs, lengths, targets, tlens, 2, create_graph=False)
    (gx_first,) = torch.autograd.grad(gradient_distance(dummy_first, target).sum(), xs)
    rel = float((gx[:, 1] - gx_first[:, 1]).norm() / gx[:, 1].norm())
    assert rel > 0.05


def test_distances_and_top_mask():
    t = [torch.tensor([[1.0, -4.0], [0.5, 2.0]]), torch.tensor([1.0, 1.0])]
    d = [torch.stack([t[0], -t[0], 2 * t[0]]), torch.stack([t[1], t[1], t[1]])]
    cos = gradient_distance(d, t, distance="cosine")
    torch.testing.assert_close(cos, torch.tensor([0.0, 2.0, 0.0]), atol=1e-6, rtol=0)
    l2 = gradient_distance(d, t, distance="l2")
    torch.testing.assert_close(l2, torch.tensor([0.0, (2 * t[0]).square().mean(), t[0].square().mean()]))
    mix = gradient_distance(d, t, distance="cosine+l2", weight=0.25)
    torch.testing.assert_close(mix, 0.25 * cos + 0.75 * l2)
    masks = top_masks(t, 0.5)
    assert sorted(masks[0].tolist()) == [1, 3] and masks[1] is None  # the bias is never masked


def test_defences_prune_clip_and_noise():
    gen = torch.Generator().manual_seed(0)
    update = {"w": torch.arange(1.0, 11.0), "b": torch.tensor([3.0, -4.0])}
    pruned = apply_defense(update, Defense(prune=0.5), gen)
    assert int((pruned["w"] != 0).sum()) == 5 and pruned["w"][-1] == 10
    clipped = apply_defense(update, Defense(clip=1.0), gen)
    assert abs(float(torch.sqrt(sum(v.square().sum() for v in clipped.values()))) - 1.0) < 1e-6
    noisy = apply_defense(update, Defense(clip=1.0, noise=0.5), gen)
    assert 0.2 < float((noisy["w"] - clipped["w"]).std()) < 1.0  # σ·C = 0.5


def test_client_dropout_changes_the_shared_gradient_but_not_the_model():
    model = load_victim("ds1", "tiny", seed=0)
    x, lengths, targets, tlens = _case("ds1", 16, 1)
    clean = client_update(model, x, lengths, targets, tlens)
    dropped = client_update(model, x, lengths, targets, tlens, defense=Defense(dropout=0.2))
    again = client_update(model, x, lengths, targets, tlens)
    assert float((clean[0] - dropped[0]).abs().max()) > 1e-4
    torch.testing.assert_close(clean[0], again[0], rtol=0, atol=0)


def test_alignment_loss_reproduces_the_ctc_gradient_exactly():
    # dCTC/dz_t = p_t − γ_t: with the alignment posteriors set to the CTC's own (γ = −dCTC/dlog_probs, from the
    # log-space CTC by autograd) the relaxed loss gives every parameter gradient the client shares, times the
    # target length; mixed with p at λ = 1/L it gives them exactly, per utterance of a batch.
    model = load_victim("ds1", "tiny", seed=0).double()
    gen = torch.Generator().manual_seed(0)
    x, lengths, targets, tlens = collate([torch.randn(12, 26, generator=gen, dtype=torch.float64),
                                          torch.randn(9, 26, generator=gen, dtype=torch.float64)], [[3, 4, 5], [7, 7]])
    log_probs, out_lengths = model(x, lengths)
    lp = log_probs.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(ctc_loss(lp, targets, out_lengths, tlens, reduction="sum"), lp)
    gamma, p = -grad, lp.detach().exp()
    lam = 1.0 / tlens.double()
    mixed = lam[None, :, None] * gamma + (1 - lam[None, :, None]) * p
    valid = time_mask(out_lengths, lp.shape[0])
    torch.testing.assert_close(gamma.sum(dim=-1)[valid], torch.ones(int(valid.sum()), dtype=torch.float64))
    for match in ("last", "all"):
        shared = client_update(model, x, lengths, targets, tlens, match=match)
        scale = max(float(s.abs().max()) for s in shared)
        relaxed, _ = per_restart_gradients(model, x, lengths, None, None, 1, match, create_graph=False,
                                           alignment=mixed.log())
        assert max(float((r[0] - s).abs().max()) for r, s in zip(relaxed, shared)) < 1e-10 * scale
        alone = client_update(model, x[:, :1], lengths[:1], targets[:1], tlens[:1], match=match)  # L = 3
        relaxed, _ = per_restart_gradients(model, x[:, :1], lengths[:1], None, None, 1, match, create_graph=False,
                                           alignment=gamma[:, :1].clamp(min=1e-300).log())
        assert max(float((r[0] - 3 * s).abs().max()) for r, s in zip(relaxed, alone)) < 1e-10 * scale
