"""The one client: how a federated client trains in one round, for the trainer and for the attacks.

`ClientSpec` is what every workload resolves its config to (`Task.training`). The trainer
(`fedctl.core.local`) runs it with torch.optim (`make_optimizer`); the gradient-inversion attacks unroll the very
same steps with `clip_gradients` and `optimizer_step`, written functionally so that `create_graph` works through
them (SGD, momentum and AdamW are all differentiable). A test holds the two to float64 precision
(tests/attacks/test_client_unroll.py).

Config keys (every workload's `task` section; defaults keep the AdamW clients of earlier releases bit-identical):
`optimizer` (adamw | sgd), `momentum` and `nesterov` (sgd), `weight_decay` with `weight_decay_scope`
(all | matrices: only tensors of >= 2 dims, as is standard for transformers), plus the workload's own lr,
warmup_steps, grad_clip, batch_size, local_updates / local_epochs, grad_accum and precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedctl.core.config import check_choice, check_range

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class ClientSpec:
    """How a client trains in one round; every workload resolves its config to one of these."""

    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    eps: float = 1e-8  # adamw
    warmup_steps: int = 0  # linear warmup over the global step, then constant
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    batch_size: int = 1  # items per micro-batch (a client with fewer items: all of them, each once)
    local_updates: int = 0  # optimizer steps per round; 0: local_epochs instead
    local_epochs: float = 1.0  # passes over the client's items per round when local_updates = 0
    amp_dtype: torch.dtype | None = None  # autocast dtype (float16 adds a GradScaler); None: full precision
    optimizer: str = "adamw"  # adamw (decoupled weight decay) or sgd (L2 weight decay added to the gradient)
    momentum: float = 0.0  # sgd: heavy-ball momentum (torch.optim.SGD's, no dampening); 0: plain SGD
    nesterov: bool = False  # sgd with momentum > 0: Nesterov's variant
    weight_decay_scope: str = "all"  # all parameters, or matrices (tensors of >= 2 dims; biases and norms exempt)
    # length-aware batching, for tasks whose items differ in size (`Task.item_costs`, e.g. seconds of audio):
    bucket_batches: int = 0  # each permutation is cut into runs of this many micro-batches, each run sorted by
                             # cost, so a micro-batch holds similar sizes (less padding); 0: no bucketing
    max_pass_cost: float = 0.0  # padded cost (items × largest) of one forward pass; a micro-batch over it runs
                                # as several passes whose losses are weighted by their items; 0: no cap

    def micro_batch_size(self, num_items: int) -> int:
        """Items per micro-batch: batch_size, or all of a client's items when it holds fewer (never copies)."""
        return max(1, min(self.batch_size, num_items))

    def micro_batches(self, num_items: int) -> int:
        """Micro-batches one client takes per round."""
        if self.local_updates > 0:
            return self.local_updates * self.grad_accum
        return max(1, math.ceil(max(1, round(self.local_epochs * num_items)) / self.micro_batch_size(num_items)))

    def steps_per_round(self, num_items: int) -> int:
        """Optimizer steps one client takes per round."""
        if self.local_updates > 0:
            return self.local_updates
        return math.ceil(self.micro_batches(num_items) / self.grad_accum)

    def lr_at(self, peak: float, global_step: int) -> float:
        """Linear warmup to `peak` over `warmup_steps` global steps, then constant."""
        return peak * min(1.0, (global_step + 1) / self.warmup_steps) if self.warmup_steps > 0 else peak

    def decays(self, param: torch.Tensor) -> bool:
        """Whether weight decay applies to this tensor."""
        return self.weight_decay_scope == "all" or param.dim() >= 2


# Field checks of the optimizer keys every workload's config declares (`OptimizerKeys`).
check_optimizer = check_choice(*OPTIMIZERS, hint="adamw (the default) or sgd (with momentum: --set task.momentum=0.9)")
check_momentum = check_range(low=0, high=1, high_open=True, hint="a momentum in [0, 1), e.g. 0.9; 0 is plain SGD")
check_scope = check_choice("all", "matrices", hint="all (every parameter) or matrices (tensors of >= 2 dims)")


def check_spec(spec: ClientSpec, section: str = "task") -> None:
    """Checks across the optimizer keys (each key's own range is checked by its field declaration)."""
    from fedctl.errors import FedctlError

    if spec.optimizer != "sgd" and (spec.momentum or spec.nesterov):
        raise FedctlError(f"{section}.momentum / {section}.nesterov apply to optimizer sgd, not {spec.optimizer}",
                          f"--set {section}.optimizer=sgd, or leave momentum at 0 and nesterov off")
    if spec.nesterov and spec.momentum <= 0:
        raise FedctlError(f"{section}.nesterov needs {section}.momentum > 0",
                          f"e.g. --set {section}.momentum=0.9, or leave nesterov off")


def make_optimizer(spec: ClientSpec, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """The spec's torch optimizer over the trainable parameters. One parameter group unless weight decay is
    restricted to matrices (then: decayed, then exempt), so the default is the optimizer of earlier releases."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = spec.lr if lr is None else lr
    if spec.weight_decay > 0 and spec.weight_decay_scope != "all":
        groups: list = [{"params": [p for p in params if spec.decays(p)], "weight_decay": spec.weight_decay},
                        {"params": [p for p in params if not spec.decays(p)], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = params
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


# ------------------------------------------------------------------------- the functional client (attacks)


def clip_gradients(spec: ClientSpec, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.nn.utils.clip_grad_norm_ as a differentiable function: every gradient scaled by
    min(1, C / (‖g‖ + 1e-6)) with ‖g‖ the global L2 norm (the same 1e-6 and the same clamp as torch)."""
    if spec.grad_clip <= 0:
        return grads
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = torch.clamp(spec.grad_clip / (norm + 1e-6), max=1.0)
    return {n: g * scale for n, g in grads.items()}


def _sqrt0(v: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 (not inf·0 = NaN) where v = 0: a parameter whose gradient is exactly 0."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


def optimizer_step(spec: ClientSpec, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                   state: dict[str, dict[str, torch.Tensor]], lr: float, step: int
                   ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """One optimizer step as torch.optim takes it, functionally: (the displacement θ_k − θ_{k+1} of every
    parameter, the new optimizer state). `step` counts from 1 (AdamW's bias correction). Differentiable in
    params and grads; nothing is modified in place."""
    moves, new_state = {}, {}
    for n, g in grads.items():
        p, s = params[n], state.get(n, {})
        wd = spec.weight_decay if spec.decays(p) else 0.0
        if spec.optimizer == "sgd":
            d = g + wd * p if wd else g
            if spec.momentum > 0:
                buf = d if "momentum_buffer" not in s else spec.momentum * s["momentum_buffer"] + d
                new_state[n] = {"momentum_buffer": buf}
                d = d + spec.momentum * buf if spec.nesterov else buf
            moves[n] = lr * d
        else:  # adamw: decoupled decay, then Adam's bias-corrected step (torch.optim.AdamW, amsgrad off)
            b1, b2 = spec.betas
            m = (1 - b1) * g if "exp_avg" not in s else b1 * s["exp_avg"] + (1 - b1) * g
            v = (1 - b2) * g * g if "exp_avg_sq" not in s else b2 * s["exp_avg_sq"] + (1 - b2) * g * g
            new_state[n] = {"exp_avg": m, "exp_avg_sq": v}
            denom = _sqrt0(v) / math.sqrt(1 - b2 ** step) + spec.eps
            move = (lr / (1 - b1 ** step)) * m / denom
            moves[n] = move + lr * wd * p if wd else move
    return moves, new_state


OPTIMIZER_KEYS = ("optimizer", "momentum", "nesterov", "weight_decay_scope")


def optimizer_keys(cfg) -> dict:
    """The optimizer keys every workload's `task` section declares, as ClientSpec arguments."""
    return {k: getattr(cfg, k) for k in OPTIMIZER_KEYS}
