"""One client's round with the state it keeps between rounds: what every executor runs instead of
`local.train_client` (in process and in worker processes alike, so their results are bit-identical).

Before training: the client's own local tensors (FedBN, FedPer) go into the working model, its kept optimizer
state into the optimizer, and SCAFFOLD's correction c − c_i is hooked into every step's gradient.
After training (and after pruning and client-mode DP, so that what is derived from the update is post-processing
of what leaves the client): SCAFFOLD's new variate (option II), FedNova's normaliser a_i, and the new entry the
store keeps (`FitResult.client_state`). The entry format is fedctl.core.client_state's.
"""

from __future__ import annotations

import torch
from torch import nn

from fedctl.core import client_state as cs
from fedctl.core import local
from fedctl.core.task import ClientConfig, FitResult, Task
from fedctl.errors import FedctlError

SCAFFOLD_DELTA = "scaffold_delta_c"  # stats key of Δc_i = c_i⁺ − c_i
FEDNOVA_A = "fednova_a"  # stats key of a_i


def fednova_normaliser(steps: int, momentum: float = 0.0, proximal: float = 0.0) -> float:
    """FedNova's a_i = ‖a_i‖₁ for `steps` local steps (Wang et al. 2020): τ for plain SGD;
    [τ − ρ(1 − ρ^τ)/(1 − ρ)]/(1 − ρ) for SGD with momentum ρ; [1 − (1 − ημ)^τ]/(ημ) for FedProx's proximal term
    (`proximal` = η·μ). The paper gives none for both together (nor for Adam): the caller refuses that."""
    if momentum > 0 and proximal > 0:
        raise FedctlError("strategy fednova: the paper defines no a_i for SGD momentum and a proximal term together",
                          "set federation.strategy_args.proximal_mu=0, or train with momentum 0")
    if momentum > 0:
        r = momentum
        return (steps - r * (1 - r**steps) / (1 - r)) / (1 - r)
    if proximal > 0:
        return (1 - (1 - proximal) ** steps) / proximal
    return float(steps)


def train(task: Task, model: nn.Module, client_id: str, cfg: ClientConfig, keys: list[str]) -> FitResult:
    """`local.train_client` with the client's kept state (cfg.client_state) and the strategy's client side
    (cfg.instructions: scaffold, fednova, local_keys); the new state comes back in FitResult.client_state."""
    ins = cfg.instructions
    entry = cfg.client_state or {}
    params = model.state_dict()
    with torch.no_grad():  # the client's own tensors (its initial ones come from the server on its first round)
        for k, v in cs.split(entry, "local").items():
            params[k].copy_(v)
    if cfg.keep_optimizer_state:
        flat = cs.split(entry, "optim")
        if flat:
            peak = task.training.lr if ins.client_lr is None else ins.client_lr
            groups = local.make_optimizer(task.training, model, peak).state_dict()["param_groups"]
            cfg.optimizer_state = cs.unflatten_optimizer_state(flat, groups)
    variate: dict[str, torch.Tensor] = {}
    start: dict[str, torch.Tensor] = {}
    lr_sum = [0.0]
    if ins.scaffold:
        c = cfg.server_payload or {}
        c_i = cs.split(entry, "scaffold")
        named = dict(model.named_parameters())
        correction = {k: (c[k] - c_i[k]) if k in c_i else c[k].clone() for k in c}
        start = {k: params[k].detach().clone() for k in c}

        def correct(lr: float) -> None:
            lr_sum[0] += lr
            for k, d in correction.items():
                p = named[k]
                if p.grad is None:
                    p.grad = d.to(p.device, p.dtype).clone()
                else:
                    p.grad.add_(d.to(p.device, p.grad.dtype))

        cfg.on_gradients = correct
        variate = {k: c_i.get(k, torch.zeros_like(c[k])) for k in c}
    result = local.train_client(task, model, client_id, cfg, keys)
    new: dict[str, dict[str, torch.Tensor]] = {}
    if ins.local_keys:
        new["local"] = {k: params[k].detach().clone() for k in ins.local_keys}
    if ins.scaffold:
        # option II: c_i⁺ = c_i − c + (x − y_i)/(K·η_l); with a schedule, K·η_l is the sum of the steps' rates
        c = cfg.server_payload or {}
        scale = 1.0 / lr_sum[0] if lr_sum[0] > 0 else 0.0
        c_new = {k: variate[k] - c[k] + (start[k] - params[k].detach().to(start[k].dtype)) * scale for k in c}
        result.stats[SCAFFOLD_DELTA] = {k: c_new[k] - variate[k] for k in c}
        new["scaffold"] = c_new
    if ins.fednova:
        t = task.training
        momentum = t.momentum if t.optimizer == "sgd" else 0.0  # AdamW: a_i = τ_i (see fednova.py)
        proximal = (t.lr if ins.client_lr is None else ins.client_lr) * ins.proximal_mu if t.optimizer == "sgd" else 0.0
        result.stats[FEDNOVA_A] = fednova_normaliser(int(result.metrics.get("steps", 0)), momentum, proximal)
    if cfg.keep_optimizer_state and result.optimizer_state is not None:
        new["optim"] = cs.flatten_optimizer_state(result.optimizer_state)
        result.optimizer_state = None
    result.client_state = cs.join(**new) if new else None
    return result
