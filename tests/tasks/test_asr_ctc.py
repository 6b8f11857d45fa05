"""The log-space CTC against torch's native CTC, its first and second derivatives, and the feasibility rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedctl.errors import FedctlError
from fedctl.tasks.asr.ctc import check_feasible, ctc_loss, min_frames_for
from fedctl.tasks.asr.models import build_asr_model

RTOL = 1e-6


def _case(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [T, B, C] float64, padded targets, input_lengths, target_lengths) of a named test case."""
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    if name == "repeats":  # "aa", "aab", "abba", a run of five: every skip rule
        targets = torch.tensor([[2, 2, 0, 0, 0], [2, 2, 3, 0, 0], [2, 3, 3, 2, 0], [4, 4, 4, 4, 4]])
        target_lengths, input_lengths, steps = torch.tensor([2, 3, 4, 5]), torch.tensor([6, 9, 12, 12]), 12
    elif name == "blank_heavy":
        targets = torch.tensor([[1, 5, 9], [7, 0, 0], [3, 3, 8]])
        target_lengths, input_lengths, steps = torch.tensor([3, 1, 3]), torch.tensor([20, 11, 17]), 20
    elif name == "empty_target":
        targets = torch.tensor([[0, 0], [6, 2]])
        target_lengths, input_lengths, steps = torch.tensor([0, 2]), torch.tensor([7, 7]), 7
    elif name == "random":
        steps, batch, s_max = 30, 6, 8
        target_lengths = torch.randint(1, s_max + 1, (batch,), generator=gen)
        targets = torch.randint(1, 29, (batch, s_max), generator=gen)
        input_lengths = torch.randint(2 * s_max, steps + 1, (batch,), generator=gen)
        input_lengths[0] = steps
    else:
        raise AssertionError(name)
    logits = torch.randn(steps, len(target_lengths), 29, generator=gen, dtype=torch.float64) * 2
    if name == "blank_heavy":
        logits[:, :, 0] += 6.0  # the blank takes almost all the mass, as in an untrained model
    return logits, targets, input_lengths, target_lengths


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-12)).max()) if a.numel() else 0.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["repeats", "blank_heavy", "empty_target", "random"])
def test_value_and_gradient_equal_native_ctc(name, reduction):
    logits, targets, input_lengths, target_lengths = _case(name)
    results = []
    for fn in (F.ctc_loss, ctc_loss):
        x = logits.clone().requires_grad_(True)
        loss = fn(x.log_softmax(-1), targets, input_lengths, target_lengths, blank=0, reduction=reduction)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        results.append((loss.detach(), grad))
    (ref_loss, ref_grad), (loss, grad) = results
    assert loss.shape == ref_loss.shape
    assert _relerr(loss, ref_loss) < RTOL
    # gradients are compared where they are not ~0 in absolute terms (relative error of 1e-17 is noise)
    assert torch.allclose(grad, ref_grad, rtol=RTOL, atol=1e-12)


def test_concatenated_targets_equal_padded():
    logits, targets, input_lengths, target_lengths = _case("random")
    flat = torch.cat([t[:n] for t, n in zip(targets, target_lengths)])
    lp = logits.log_softmax(-1)
    a = ctc_loss(lp, targets, input_lengths, target_lengths, reduction="none")
    b = ctc_loss(lp, flat, input_lengths, target_lengths, reduction="none")
    assert torch.equal(a, b)
    assert torch.allclose(b, F.ctc_loss(lp, flat, input_lengths, target_lengths, reduction="none"), rtol=RTOL)


def test_infeasible_alignment_is_inf_or_zero_without_nan():
    # "aab" needs 4 frames, "abc" 3; 3 and 2 are given. The third utterance is feasible.
    targets = torch.tensor([[2, 2, 3], [2, 3, 4], [5, 6, 0]])
    target_lengths, input_lengths = torch.tensor([3, 3, 2]), torch.tensor([3, 2, 4])
    logits = torch.randn(4, 3, 29, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for zero_infinity in (False, True):
        ours = logits.clone().requires_grad_(True)
        native = logits.clone().requires_grad_(True)
        a = ctc_loss(ours.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none",
                     zero_infinity=zero_infinity)
        if not zero_infinity:
            a_value = a.detach()
        b = F.ctc_loss(native.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none",
                       zero_infinity=zero_infinity)
        if not zero_infinity:
            assert torch.isinf(a_value[:2]).all() and torch.isinf(b[:2]).all()
            assert abs(float(a_value[2] - b[2].detach())) < RTOL * abs(float(b[2].detach()))
            (grad,) = torch.autograd.grad(a.sum(), ours)  # inf loss, yet no NaN reaches the logits
            assert torch.isfinite(grad).all()
            continue
        assert torch.equal(a[:2], torch.zeros(2, dtype=a.dtype)) and torch.equal(b[:2], a[:2])
        (ga,) = torch.autograd.grad(a.sum(), ours, create_graph=True)
        (gb,) = torch.autograd.grad(b.sum(), native)
        assert torch.isfinite(ga).all()
        assert torch.equal(ga[:, :2], torch.zeros_like(ga[:, :2]))
        assert torch.allclose(ga, gb, rtol=RTOL, atol=1e-12)
        # second derivatives stay finite through the masked recursion too
        (hv,) = torch.autograd.grad((ga ** 2).sum(), ours)
        assert torch.isfinite(hv).all() and torch.equal(hv[:, :2], torch.zeros_like(hv[:, :2]))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_and_gradgradcheck(reduction):
    targets = torch.tensor([[1, 1, 2], [3, 0, 0], [2, 3, 1]])
    target_lengths, input_lengths = torch.tensor([3, 1, 3]), torch.tensor([5, 3, 2])  # the last is infeasible
    log_probs = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    log_probs.requires_grad_(True)

    def fn(lp):
        return ctc_loss(lp, targets, input_lengths, target_lengths, reduction=reduction, zero_infinity=True)

    assert torch.autograd.gradcheck(fn, (log_probs,), eps=1e-6, atol=1e-8)
    if reduction == "mean":  # the second-order check is the slow one; the reductions share the recursion
        assert torch.autograd.gradgradcheck(fn, (log_probs,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["ds1", "ds2"])
def test_second_derivative_through_model_matches_finite_difference(arch):
    """d/dx ||dL/dθ||² on a tiny float64 model (DS2 in train mode: batch-statistics BatchNorm), the quantity
    a gradient-matching attack differentiates."""
    torch.manual_seed(0)
    model = build_asr_model(arch, "tiny").double()
    params = [p for p in model.parameters()]
    steps, dim = (8, 26) if arch == "ds1" else (24, 257)
    feats = torch.randn(steps, 1, dim, dtype=torch.float64)
    lengths, targets, target_lengths = torch.tensor([steps]), torch.tensor([[2, 3, 3]]), torch.tensor([3])

    def objective(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        log_probs, out_lengths = model(x, lengths)
        loss = ctc_loss(log_probs, targets, out_lengths, target_lengths)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        return sum((g ** 2).sum() for g in grads)

    x = feats.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(objective(x, create_graph=True), x)
    direction = torch.randn_like(feats)
    direction /= direction.norm()
    eps = 1e-5
    fd = (objective(feats + eps * direction, False) - objective(feats - eps * direction, False)) / (2 * eps)
    analytic = (dx * direction).sum()
    assert float(dx.abs().max()) > 0
    assert abs(float(analytic - fd)) <= 1e-6 * abs(float(fd))


def test_min_frames_counts_repeats():
    assert min_frames_for([]) == 0
    assert min_frames_for([2, 3, 4]) == 3
    assert min_frames_for([9, 6, 13, 13, 16]) == 6  # "hello": a blank between the two l's
    assert min_frames_for([2, 2, 2]) == 5


def test_too_short_utterance_is_refused_by_name():
    check_feasible("19-198-0001", [9, 6, 13, 13, 16], 6)  # exactly enough: no error
    with pytest.raises(FedctlError) as err:
        check_feasible("19-198-0001", [9, 6, 13, 13, 16], 5)
    assert "19-198-0001" in err.value.message and "5 output frames" in err.value.message
    assert "at least 6" in err.value.message


def test_blank_or_out_of_range_targets_are_rejected():
    log_probs = torch.randn(5, 1, 4).log_softmax(-1)
    for bad in ([[1, 0]], [[1, 4]]):
        with pytest.raises(ValueError):
            ctc_loss(log_probs, torch.tensor(bad), [5], [2])
