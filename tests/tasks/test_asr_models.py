"""DS1/DS2 shapes, parameter counts, output frames, padding invariance, BatchNorm masking and the config surface."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from fedctl.errors import FedctlError
from fedctl.tasks.asr.ctc import ctc_loss
from fedctl.tasks.asr.features import ds2_num_frames
from fedctl.tasks.asr.models import (
    DS1Config,
    build_asr_model,
    double_backward_safe,
    masked_batch_norm,
    output_lengths,
)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_reference_parameter_counts_on_meta_device():
    with torch.device("meta"):
        ds1 = build_asr_model("ds1", "reference")
        ds2 = build_asr_model("ds2", "reference")
    assert all(p.is_meta for p in ds1.parameters())
    # fc1 1,013,760 + fc2 4,196,352 + fc3 8,392,704 + bi-LSTM 100,696,064 + fc4 8,390,656 + out 59,421
    assert _count(ds1) == 122_748_957
    assert ds1.out.weight.numel() + ds1.out.bias.numel() == 59_421  # the gradient the reference attack matches
    # conv 14,464 + 236,576, BN2d 2 x 64, GRUs 10,752,000 + 4 x 7,680,000, BN1d 5 x 1,600, fc 23,200
    assert _count(ds2) == 41_754_368
    assert ds2.fc.weight.numel() == 23_200 and ds2.fc.bias is None
    assert [g.input_size for g in ds2.rnns] == [1440, 800, 800, 800, 800]
    assert all(g.bias is False and g.bidirectional for g in ds2.rnns)


def test_ds2_output_frames_for_one_two_four_seconds():
    frames = torch.tensor([ds2_num_frames(s * 16000) for s in (1, 2, 4)])
    assert frames.tolist() == [51, 101, 201]
    assert output_lengths("ds2", frames).tolist() == [21, 46, 96]
    model = build_asr_model("ds2", "tiny").eval()
    log_probs, out = model(torch.randn(201, 3, 257), frames)
    assert log_probs.shape == (96, 3, 29) and out.tolist() == [21, 46, 96]
    # the formula is the conv arithmetic: floor((T + 2*10 - 11) / 2) + 1, then - (11 - 1)
    for t in range(11, 400):
        assert output_lengths("ds2", torch.tensor([t])).item() == (t + 20 - 11) // 2 + 1 - 10


@pytest.mark.parametrize("arch", ["ds1", "ds2"])
def test_padding_does_not_change_a_shorter_utterance(arch):
    torch.manual_seed(0)
    # DS2 in eval mode: train-mode BatchNorm statistics are over the whole batch by definition
    model = build_asr_model(arch, "tiny", activation="clipped_relu") if arch == "ds1" else build_asr_model(arch, "tiny")
    model.eval()
    dim = 26 if arch == "ds1" else 257
    long, short = torch.randn(60, 1, dim), torch.randn(37, 1, dim)
    batch = torch.zeros(60, 2, dim)
    batch[:, 0:1], batch[:37, 1:2] = long, short
    batch[37:, 1] = 1e3  # padding is ignored whatever it holds
    lp, out = model(batch, torch.tensor([60, 37]))
    lp_short, out_short = model(short, torch.tensor([37]))
    lp_long, _ = model(long, torch.tensor([60]))
    n = int(out_short[0])
    assert int(out[1]) == n
    assert torch.allclose(lp[:n, 1], lp_short[:, 0], atol=1e-5, rtol=0)
    assert torch.allclose(lp[:, 0], lp_long[:, 0], atol=1e-5, rtol=0)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(()), atol=1e-5)


def test_ds2_train_mode_ignores_what_the_padding_holds():
    """In train mode the statistics are the batch's, but over valid frames only: padding content changes
    neither the outputs nor the running statistics."""
    torch.manual_seed(0)
    model = build_asr_model("ds2", "tiny").train()
    batch = torch.randn(60, 2, 257)
    batch[37:, 1] = 0.0
    other = batch.clone()
    other[37:, 1] = 5.0 * torch.randn(23, 257)
    lengths = torch.tensor([60, 37])
    twin = copy.deepcopy(model)
    lp, out = model(batch, lengths)
    lp_other, _ = twin(other, lengths)
    for name, buf in model.named_buffers():
        assert torch.allclose(buf.float(), dict(twin.named_buffers())[name].float(), atol=1e-6), name
    n = int(out[1])
    assert torch.allclose(lp[:, 0], lp_other[:, 0], atol=1e-6, rtol=0)
    assert torch.allclose(lp[:n, 1], lp_other[:n, 1], atol=1e-6, rtol=0)


def test_masked_batch_norm_uses_valid_frames_only():
    torch.manual_seed(0)
    bn, ref = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    x = torch.randn(10, 4)
    mask = torch.tensor([True] * 7 + [False] * 3)[:, None]
    y = masked_batch_norm(bn, x, mask)
    y_ref = ref(x[:7])
    assert torch.allclose(y[:7], y_ref, atol=1e-6)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_ds1_activation_switch_and_forget_gate_bias():
    none = build_asr_model("ds1", "tiny")
    assert none.config.activation == "none"
    h = none.config.n_hidden
    assert torch.equal(none.bi_lstm.bias_ih_l0[h : 2 * h], torch.ones(h))
    assert torch.equal(none.bi_lstm.bias_hh_l0_reverse[h : 2 * h], torch.zeros(h))
    torch.manual_seed(1)
    clipped = build_asr_model("ds1", "tiny", activation="clipped_relu")
    big = torch.full((3, 1, 16), 100.0)
    assert float(clipped._act(big).max()) == 20.0 and float(clipped._act(-big).min()) == 0.0
    assert torch.equal(none._act(big), big)


def test_overrides_are_strict():
    with pytest.raises(FedctlError) as err:
        build_asr_model("ds1", "tiny", hidden=8)
    assert "hidden" in err.value.message and "n_hidden" in err.value.hint
    with pytest.raises(FedctlError) as err:
        build_asr_model("ds1", "tiny", n_hidden="8")
    assert "n_hidden" in err.value.message
    with pytest.raises(FedctlError) as err:
        build_asr_model("ds1", "tiny", activation="relu")
    assert "clipped_relu" in err.value.hint
    with pytest.raises(FedctlError):
        build_asr_model("ds3")
    with pytest.raises(FedctlError):
        build_asr_model("ds2", "huge")
    model = build_asr_model("ds1", "small", n_hidden=24, relu_clip=10)
    assert model.config == DS1Config(n_hidden=24, relu_clip=10.0)


def test_ds2_refuses_inputs_with_no_output_frames():
    model = build_asr_model("ds2", "tiny")
    with pytest.raises(FedctlError) as err:
        model(torch.randn(10, 1, 257), torch.tensor([10]))
    assert "11 input frames" in err.value.hint


@pytest.mark.parametrize("arch", ["ds1", "ds2"])
def test_tiny_forward_backward_is_fast(arch):
    torch.manual_seed(0)
    model = build_asr_model(arch, "tiny")
    dim = 26 if arch == "ds1" else 257
    feats, lengths = torch.randn(101, 2, dim), torch.tensor([101, 80])  # 2 s of audio
    started = time.perf_counter()
    log_probs, out = model(feats, lengths)
    loss = ctc_loss(log_probs, torch.tensor([[2, 3, 4], [5, 5, 0]]), out, torch.tensor([3, 2]))
    loss.backward()
    assert time.perf_counter() - started < 1.0
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_double_backward_safe_is_a_no_op_on_cpu():
    model = build_asr_model("ds1", "tiny")
    before = torch.backends.cudnn.enabled
    with double_backward_safe(model):
        assert torch.backends.cudnn.enabled == before
    assert torch.backends.cudnn.enabled == before


@pytest.mark.parametrize("arch", ["ds1", "ds2"])
def test_dropout_acts_only_in_training_and_draws_nothing_at_0(arch):
    torch.manual_seed(0)
    model = build_asr_model(arch, "tiny")
    feats, lengths = torch.randn(40, 2, 26 if arch == "ds1" else 257), torch.tensor([40, 31])
    rng = torch.get_rng_state()
    clean, _ = model(feats, lengths)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout 0: no random draws, the forward of before
    model.dropout = 0.5
    assert not torch.allclose(model(feats, lengths)[0], clean)  # masks from torch's RNG (training)
    rng = torch.get_rng_state()
    model.dropout_generator = torch.Generator().manual_seed(1)  # the attack's client: its own masks
    first = model(feats, lengths)[0]
    model.dropout_generator.manual_seed(1)
    assert torch.equal(model(feats, lengths)[0], first) and torch.equal(torch.get_rng_state(), rng)
    model.eval()
    eval_out = model(feats, lengths)[0]
    model.dropout = 0.0
    assert torch.equal(model(feats, lengths)[0], eval_out)  # eval mode: dropout off whatever its probability
