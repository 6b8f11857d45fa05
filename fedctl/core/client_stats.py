"""Statistics a client computes after local training for strategies that weight by them:
mean predictive entropy (FedEntropy) and the diagonal Fisher information (FedFisher).

Tasks provide them through the client-statistics capability of `fedctl.core.task.Task`
(`supports_client_stats`, `stat_examples`, `forward_logits`) and stay unaware of strategies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedctl.core.instructions import ClientInstructions
from fedctl.core.task import Task
from fedctl.errors import FedctlError

IGNORE = -100


def require_client_stats(task: Task, strategy_name: str) -> None:
    """Fail before the first round when a strategy needs statistics the task cannot measure."""
    if not task.supports_client_stats():
        raise FedctlError(
            f"strategy {strategy_name} needs per-client statistics (entropy or Fisher), but task '{task.name}' "
            "does not provide them (stat_examples, forward_logits)",
            "choose another strategy for this task (e.g. fedavg)",
        )


def _batches(inputs: dict[str, torch.Tensor], size: int):
    n = next(iter(inputs.values())).shape[0]
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in inputs.items()}


@torch.no_grad()
def predictive_entropy(task: Any, model: nn.Module, client_id: str, max_examples: int = 64, batch_size: int = 16) -> float:
    """Mean entropy (nats) of the model's predictive distribution over the valid positions of
    the client's held-out examples: H = −Σ_c p_c log p_c, averaged over positions."""
    inputs = task.stat_examples(client_id, max_examples)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in _batches(inputs, batch_size):
        logits, labels = task.forward_logits(model, batch)
        logp = torch.log_softmax(logits.float(), dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        mask = labels != IGNORE
        total += float(ent[mask].sum())
        count += int(mask.sum())
    model.train(was_training)
    if count == 0:
        raise FedctlError(f"client {client_id} has no examples to measure entropy on", "give every client data")
    return total / count


class _Wrapped(nn.Module):
    """Lets torch.func.functional_call reach the task's forward_logits with swapped parameters."""

    def __init__(self, task: Any, model: nn.Module):
        super().__init__()
        self.task = task
        self.inner = model

    def forward(self, inputs):
        return self.task.forward_logits(self.inner, inputs)


def _log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != IGNORE
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum()


def _targets(task, model, inputs, mode: str, seed: int) -> torch.Tensor:
    """Labels whose log-likelihood gradient is squared: sampled from the model (true Fisher) or observed."""
    with torch.no_grad():
        logits, labels = task.forward_logits(model, inputs)
    if mode == "empirical":
        return labels
    gen = torch.Generator(device="cpu").manual_seed(seed)
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).reshape(labels.shape)
    return torch.where(labels == IGNORE, labels, flat.to(labels.device))


def diagonal_fisher(
    task: Any,
    model: nn.Module,
    client_id: str,
    *,
    mode: str = "true",
    max_examples: int = 64,
    chunk: int = 8,
    seed: int = 0,
    keys: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher F = E_x[(∇ log p(y|x))²] of the trainable parameters (Matena & Raffel 2022).

    Per-example gradients are vectorised with torch.func `vmap(grad)` over chunks of `chunk`
    examples; `mode` "true" samples y from the model, "empirical" uses the observed labels.
    """
    if not task.vmap_safe:
        return diagonal_fisher_loop(task, model, client_id, mode=mode, max_examples=max_examples, seed=seed,
                                    chunk=chunk, keys=keys)
    inputs = task.stat_examples(client_id, max_examples)
    was_training = model.training
    model.eval()
    wrapped = _Wrapped(task, model)
    params = {f"inner.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad
              and (keys is None or n in keys)}
    frozen = {f"inner.{n}": p.detach() for n, p in model.named_parameters() if f"inner.{n}" not in params}
    buffers = {f"inner.{n}": b for n, b in model.named_buffers()}

    def example_ll(p, example, target):
        batched = {k: v.unsqueeze(0) for k, v in example.items()}
        logits, _ = functional_call(wrapped, {**p, **frozen, **buffers}, (batched,))
        return _log_likelihood(logits, target.unsqueeze(0))

    per_example = vmap(grad(example_ll), in_dims=(None, 0, 0))
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n_total = 0
    for i, batch in enumerate(_batches(inputs, chunk)):
        targets = _targets(task, model, batch, mode, seed + i)
        grads = per_example(params, batch, targets)
        for n, g in grads.items():
            fisher[n].add_(g.float().pow(2).sum(0))
        n_total += targets.shape[0]
    model.train(was_training)
    if n_total == 0:
        raise FedctlError(f"client {client_id} has no examples to estimate the Fisher on", "give every client data")
    return {n[len("inner."):]: f.div_(n_total) for n, f in fisher.items()}


def diagonal_fisher_loop(task, model, client_id, *, mode="true", max_examples=64, seed=0, chunk=8, keys=None):
    """The same Fisher with one backward pass per example: the reference for tests and the benchmark, and the
    path for tasks whose forward cannot run under vmap (`Task.vmap_safe` false)."""
    inputs = task.stat_examples(client_id, max_examples)
    was_training = model.training
    model.eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (keys is None or n in keys)]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    n_total = 0
    for i, batch in enumerate(_batches(inputs, chunk)):
        targets = _targets(task, model, batch, mode, seed + i)
        for j in range(targets.shape[0]):
            example = {k: v[j : j + 1] for k, v in batch.items()}
            model.zero_grad(set_to_none=True)
            logits, _ = task.forward_logits(model, example)
            _log_likelihood(logits, targets[j : j + 1]).backward()
            for n, p in params:
                fisher[n].add_(p.grad.float().pow(2))
            n_total += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n_total == 0:
        raise FedctlError(f"client {client_id} has no examples to estimate the Fisher on", "give every client data")
    return {n: f / n_total for n, f in fisher.items()}


def softmax_weights(entropies: list[float], num_examples: list[int] | None, temperature: float) -> list[float]:
    """FedEntropy's normalised client weights n_i·softmax(−H/T)_i / Σ (n_i optional)."""
    logs = [-h / temperature + (math.log(n) if num_examples else 0.0)
            for h, n in zip(entropies, num_examples or [1] * len(entropies))]
    top = max(logs)
    w = [math.exp(v - top) for v in logs]
    s = sum(w)
    return [x / s for x in w]


def requested(task: Task, model: nn.Module, client_id: str, instructions: ClientInstructions, seed: int,
              keys: list[str] | None = None) -> dict[str, Any]:
    """The statistics a strategy asked for in its instructions, measured on the trained model."""
    out: dict[str, Any] = {}
    if instructions.entropy is not None:
        out["entropy"] = predictive_entropy(task, model, client_id, max_examples=instructions.entropy.max_examples)
    if instructions.fisher is not None:
        f = instructions.fisher
        out["fisher"] = diagonal_fisher(task, model, client_id, mode=f.mode, max_examples=f.max_examples,
                                        chunk=f.chunk, seed=seed, keys=keys)
    return out
