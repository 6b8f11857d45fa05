"""The gradient-matching objective: the attacker's dummy gradients, one per restart, and their distance to
the client's shared gradient.

Restarts are a batch dimension. The dummy inputs of R restarts (each a copy of the client's batch of b
utterances) run through the victim as one batch of R·b utterances; each restart's loss is the client's
loss of its own b utterances (mean over them of CTC / target length, `F.ctc_loss`'s "mean").

Per-restart parameter gradients:
- `match="last"` (the reference: output layer only): dL_r/dW = Σ_t g_t h_tᵀ and dL_r/db = Σ_t g_t with
  g = dL/dlogits, computed for all restarts at once with one `torch.autograd.grad` (create_graph=True) of
  Σ_r L_r w.r.t. the logits (restarts do not interact, so each row of g is its restart's own) and an
  einsum. The CTC is therefore differentiated twice (log-space `fedctl.tasks.asr.ctc.ctc_loss`, never
  `F.ctc_loss`, which has no double backward, pytorch#70108).
- `match="all"`: every parameter's gradient per restart, from one vectorised backward over the R
  per-restart losses (`torch.autograd.grad(..., is_grads_batched=True)`, torch's vmap over the backward
  pass). On CUDA this needs cuDNN off for the RNN double backward (`double_backward_safe`).

Without transcripts (`alignment_loss`): for a CTC over log-softmax outputs, dCTC/dz_t = p_t − γ_t, with p_t the
softmax of the logits z_t and γ_t the CTC posterior occupancy of each class at frame t (a point of the simplex).
Every parameter gradient the client shares is therefore also the gradient of the frame-level soft-target
cross-entropy Σ_t CE(γ_t, log p_t). The attacker who lacks the transcripts optimises free alignment logits A
(Γ_t = softmax(A_t)) with the features and uses Σ_t CE(Γ_t, log p_t) in place of the CTC: a relaxation that
contains the truth. The client's 1/target_length is absorbed too: Γ = λγ + (1 − λ)p gives exactly λ times the
CTC's logit gradient, so λ_j = 1/L_j per utterance reproduces it (any distance; L_j >= 1 keeps λ_j in (0, 1]),
and under the cosine only the ratios of the λ_j matter (one utterance: any λ).
`fedctl.attacks.transcript` undoes that mixing to read γ, and the transcript, off the attacker's Γ.

BatchNorm (DS2): in train mode each restart must see the statistics of its own b utterances, as the client
saw those of its batch; `grouped_batch_norm` makes the victim's BatchNorms take statistics per group of b
and leaves the running buffers untouched (the client's buffers are what the attacker holds).

Local SGD (`unrolled_updates`, local_steps N > 1): the client shares (θ0 − θN)/lr of N SGD steps on its
batch; the attacker unrolls the same N steps on each restart's dummy batch with create_graph=True, so the
distance is differentiated w.r.t. the features through the whole trajectory (second order at every step,
through every layer: on CUDA, as for match="all", the RNN double backward needs `double_backward_safe`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedctl.core.client import ClientSpec, clip_gradients, optimizer_step
from fedctl.core.prune import top_magnitude_mask
from fedctl.tasks.asr import models as asr_models
from fedctl.tasks.asr.ctc import ctc_loss
from fedctl.tasks.asr.models import DeepSpeech1, time_mask

DISTANCES = ("cosine", "l2", "cosine+l2")
MATCHES = ("last", "all")


def output_layer(model: nn.Module) -> nn.Linear:
    """The victim's output Linear (DS1 `out`: 29 × hidden + bias; DS2 `fc`: 29 × hidden, no bias)."""
    return model.out if isinstance(model, DeepSpeech1) else model.fc


def matched_names(model: nn.Module, match: str) -> list[str]:
    """Names of the parameters whose gradient the attacker matches."""
    if match == "last":
        layer = "out" if isinstance(model, DeepSpeech1) else "fc"
        return [f"{layer}.weight"] + ([f"{layer}.bias"] if output_layer(model).bias is not None else [])
    return [n for n, p in model.named_parameters() if p.requires_grad]


def client_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
                target_lengths: torch.Tensor, groups: int) -> torch.Tensor:
    """[groups] losses: each group's mean over its utterances of CTC / target length (float64 CTC)."""
    per_utt = ctc_loss(log_probs.double(), targets, out_lengths, target_lengths, reduction="none")
    per_utt = per_utt / target_lengths.clamp(min=1).to(per_utt.dtype)
    return per_utt.view(groups, -1).mean(dim=1)


def alignment_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, alignment: torch.Tensor,
                   groups: int) -> torch.Tensor:
    """[groups] losses without transcripts: each group's mean over its utterances of the frame-level soft-target
    cross-entropy Σ_{t < out_lengths} CE(softmax(alignment_t), log_probs_t) (float64, as `client_loss`).

    alignment: [T', B, C] free logits of the alignment posteriors Γ. No 1/target_length: the transcript
    length is unknown, and Γ's mixing with p absorbs it (module docstring)."""
    log_probs = log_probs.double()
    posteriors = alignment.to(log_probs.dtype).softmax(dim=-1)
    valid = time_mask(out_lengths, log_probs.shape[0]).to(log_probs.dtype)
    per_utt = -((posteriors * log_probs).sum(dim=-1) * valid).sum(dim=0)
    return per_utt.view(groups, -1).mean(dim=1)


def _group_stats_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, mask: torch.Tensor,
                      groups: int, batch: int) -> torch.Tensor:
    """Train-mode BatchNorm of `x` with statistics over the valid positions of each group of batch // groups
    utterances (x [B, C, F, T] from a conv, or rows [T'·B, C] time-major); running buffers untouched."""
    per = batch // groups
    if x.dim() == 4:
        xg = x.reshape(groups, per, *x.shape[1:])
        mg = mask.reshape(groups, per, *mask.shape[1:]).to(x.dtype).expand_as(xg)
        dims, shape = (1, 3, 4), (groups, 1, -1, 1, 1)
        wshape = (1, 1, -1, 1, 1)
    else:
        xg = x.reshape(-1, groups, per, x.shape[1])
        mg = mask.reshape(-1, groups, per, 1).to(x.dtype).expand_as(xg)
        dims, shape = (0, 2), (1, groups, 1, -1)
        wshape = (1, 1, 1, -1)
    count = mg.sum(dim=dims)
    mean = (xg * mg).sum(dim=dims) / count
    centered = xg - mean.view(shape)
    var = (centered.square() * mg).sum(dim=dims) / count
    y = centered * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(wshape) + bn.bias.view(wshape)
    return y.reshape(x.shape)


@contextlib.contextmanager
def grouped_batch_norm(groups: int, batch: int) -> Iterator[None]:
    """Inside the block, the ASR models' train-mode BatchNorms normalize each group of batch // groups
    utterances with its own statistics and never update running buffers (eval mode is unchanged: it uses
    the buffers, per utterance). With groups = 1 this is the client's own forward minus the buffer update."""
    original = asr_models.masked_batch_norm

    def patched(bn, x, mask):
        if not bn.training and bn.running_mean is not None:
            return bn(x)
        return _group_stats_norm(bn, x, mask, groups, batch)

    asr_models.masked_batch_norm = patched
    try:
        yield
    finally:
        asr_models.masked_batch_norm = original


def per_restart_gradients(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor | None,
                          target_lengths: torch.Tensor | None, groups: int, match: str = "last",
                          create_graph: bool = True, alignment: torch.Tensor | None = None
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each restart's gradient of its client loss w.r.t. the matched parameters.

    x [T, G·b, F] (restart-major: utterance j of restart g at column g·b + j), lengths [G·b], targets
    [G·b, S], target_lengths [G·b]. With `alignment` [T', G·b, C] (transcripts withheld) the loss is
    `alignment_loss` and targets are unused. Returns ([G, *param.shape] per matched parameter, losses [G]).
    """
    batch = x.shape[1]
    layer = output_layer(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, inputs, output):
        captured["h"], captured["z"] = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:
        with grouped_batch_norm(groups, batch):
            log_probs, out_lengths = model(x, lengths)
    finally:
        handle.remove()
    if alignment is None:
        losses = client_loss(log_probs, out_lengths, targets, target_lengths, groups)
    else:
        losses = alignment_loss(log_probs, out_lengths, alignment, groups)
    if match == "last":
        z = captured["z"]
        (g,) = torch.autograd.grad(losses.sum(), z, create_graph=create_graph)  # [T', G·b, C]
        g = g.to(z.dtype)
        h = captured["h"]
        per = batch // groups
        weight = torch.einsum("tgjc,tgjh->gch", g.view(g.shape[0], groups, per, -1),
                              h.view(h.shape[0], groups, per, -1))
        grads = [weight]
        if layer.bias is not None:
            grads.append(g.view(g.shape[0], groups, per, -1).sum(dim=(0, 2)))
        return grads, losses
    params = [p for p in model.parameters() if p.requires_grad]
    if groups == 1:
        grads = torch.autograd.grad(losses.sum(), params, create_graph=create_graph)
        return [gr.unsqueeze(0) for gr in grads], losses
    eye = torch.eye(groups, dtype=losses.dtype)
    grads = torch.autograd.grad(losses, params, grad_outputs=eye, is_grads_batched=True,
                                create_graph=create_graph)
    return list(grads), losses


@dataclass
class ClientPlan:
    """A client's local training as the attacker replays it: the client spec (`fedctl.core.client.ClientSpec`:
    optimizer, clipping, weight decay, warmup) and, per optimizer step, its micro-batches as positions into the
    attacked batch of b utterances (the trainer's own schedule, `fedctl.core.local.schedule`), the peak learning
    rate and the global step of the first local step (for the warmup)."""

    spec: ClientSpec
    steps: list[list[torch.Tensor]]
    peak_lr: float
    step_offset: int = 0

    @classmethod
    def sgd(cls, local_steps: int, local_lr: float, batch: int) -> ClientPlan:
        """N plain SGD steps, each on the whole batch of b utterances (the simulated client of `--local-steps`)."""
        every = torch.arange(batch)
        return cls(ClientSpec(lr=local_lr, optimizer="sgd"), [[every]] * local_steps, local_lr)


def unrolled_updates(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                     target_lengths: torch.Tensor, groups: int, match: str = "last", *, local_steps: int = 1,
                     local_lr: float = 1.0, create_graph: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each restart's local SGD update (θ0 − θN)/lr over `local_steps` steps θ_{k+1} = θ_k − lr·∇θL(θ_k) on
    its own b utterances (`client_updates` of `ClientPlan.sgd`); shapes as `per_restart_gradients`, whose
    batched output this is for local_steps = 1."""
    if local_steps <= 1:
        return per_restart_gradients(model, x, lengths, targets, target_lengths, groups, match,
                                     create_graph=create_graph)
    plan = ClientPlan.sgd(local_steps, local_lr, x.shape[1] // groups)
    return client_updates(model, x, lengths, targets, target_lengths, groups, match, plan, create_graph=create_graph)


def client_updates(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                   target_lengths: torch.Tensor, groups: int, match: str, plan: ClientPlan, *,
                   create_graph: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each restart's update (θ0 − θN)/peak_lr of the client `plan` describes, run on its own b utterances of x
    [T, groups·b, F], restricted to the matched parameters ([groups, *shape] each); losses [groups] are the
    first micro-batch's.

    Step k as the trainer takes it (`fedctl.core.local.train_steps`): the mean over its micro-batches of each
    one's loss (mean CTC / target length over its utterances, zero-padded to its longest: x[:T_mb, items]),
    the global-norm clip, then the optimizer step at lr_at(peak, offset + k) — functionally
    (`fedctl.core.client.optimizer_step`), so that create_graph differentiates the whole trajectory w.r.t. x.
    The update is accumulated as the sum of the steps' displacements, without the cancellation of θ0 − θN.
    BatchNorm as the client's (train-mode statistics over the micro-batch, running buffers untouched)."""
    spec = plan.spec
    per = x.shape[1] // groups
    theta0 = dict(model.named_parameters())
    trained = [n for n, p in theta0.items() if p.requires_grad]
    matched = matched_names(model, match)
    updates: list[list[torch.Tensor]] = [[] for _ in matched]
    losses = []
    # A loop over restarts: after the first step each restart has its own weights, and the victims' packed
    # RNNs cannot run under torch.func.vmap with per-restart weights (`Task.vmap_safe`; .item() in nn.LSTM).
    for r in range(groups):
        theta, state = dict(theta0), {}
        total: dict[str, torch.Tensor] = {}
        for k, group in enumerate(plan.steps):
            last = k == len(plan.steps) - 1
            # the last step moves only what is matched, unless clipping needs every gradient's norm
            names = matched if last and spec.grad_clip <= 0 else trained
            grads: dict[str, torch.Tensor] = {}
            for items in group:
                cols = r * per + items
                steps = int(lengths[cols].max())
                with grouped_batch_norm(1, len(cols)):
                    log_probs, out_lengths = functional_call(model, theta, (x[:steps, cols], lengths[cols]))
                loss = client_loss(log_probs, out_lengths, targets[cols], target_lengths[cols], 1)[0]
                if len(losses) == r:
                    losses.append(loss)
                part = torch.autograd.grad(loss / len(group), [theta[n] for n in names], create_graph=create_graph)
                grads = {n: g if n not in grads else grads[n] + g for n, g in zip(names, part)}
            grads = clip_gradients(spec, grads)
            lr = spec.lr_at(plan.peak_lr, plan.step_offset + k)
            moves, state = optimizer_step(spec, {n: theta[n] for n in names}, grads, state, lr, k + 1)
            total = {n: moves[n] if n not in total else total[n] + moves[n] for n in matched}
            if not last:
                step = {n: theta[n] - moves[n] for n in trained}
                if not create_graph:  # no derivative through the trajectory: each step starts from plain tensors
                    step = {n: v.detach().requires_grad_(True) for n, v in step.items()}
                    state = {n: {k2: v.detach() for k2, v in s.items()} for n, s in state.items()}
                theta = {**theta, **step}
        for acc, n in zip(updates, matched):
            acc.append(total[n] / plan.peak_lr)
    return [torch.stack(u) for u in updates], torch.stack(losses)


def top_masks(target: Sequence[torch.Tensor], fraction: float) -> list[torch.Tensor | None]:
    """Flat indices (ascending) of the largest-|g*| entries of each matched tensor of >= 2 dims (the reference
    masks the weight, never the bias); None keeps the whole tensor."""
    if fraction >= 1.0:
        return [None] * len(target)
    out = []
    for t in target:
        if t.dim() < 2:
            out.append(None)
            continue
        keep = max(1, int(fraction * t.numel()))
        out.append(top_magnitude_mask(t, keep).flatten().nonzero().flatten())
    return out


def gradient_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor], *, distance: str = "cosine",
                      weight: float = 1.0, masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """[G] distances between each restart's dummy gradients ([G, *shape] each) and the target ([*shape]).

    As the reference (`src/loss/loss.py::grad_distance`): one distance per matched tensor, summed unweighted;
    "cosine" = 1 − cos, "l2" = mean squared error, "cosine+l2" = w·(1 − cos) + (1 − w)·MSE.
    """
    masks = masks or [None] * len(target)
    total = None
    for d, t, m in zip(dummy, target, masks):
        d = d.reshape(d.shape[0], -1)
        t = t.reshape(1, -1).to(d.dtype)
        if m is not None:
            d, t = d[:, m], t[:, m]
        cos = 1.0 - F.cosine_similarity(d, t.expand_as(d), dim=1, eps=1e-8)
        mse = (d - t).square().mean(dim=1)
        if distance == "cosine":
            value = cos
        elif distance == "l2":
            value = mse
        else:
            value = weight * cos + (1.0 - weight) * mse
        total = value if total is None else total + value
    return total
