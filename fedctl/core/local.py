"""The one client trainer: every workload's local training runs here, so that a round means the same thing
in every workload.

Schedule (documented once, for every workload):
- A client holds `n` items: examples, text blocks, or prebuilt length batches (the task says which);
  `batch_size` items make a micro-batch and `grad_accum` micro-batches make one optimizer step.
- Items are drawn **without replacement** from a stream of seeded permutations of the client's items,
  one permutation after another, so within any window of `n` consecutive draws every item appears once,
  across epoch boundaries too. The stream is seeded per (run seed, round, client).
- `local_updates = N > 0`: exactly N optimizer steps, each of `grad_accum` full micro-batches.
- `local_updates = 0`: `local_epochs = E` passes, i.e. round(E·n) items cut into micro-batches (the last
  may be smaller) and grouped into steps (the last may hold fewer micro-batches; its loss is averaged
  over the ones it has).

Each step: set the learning rate (linear warmup over the global step (round − 1)·steps_per_round + step,
then constant; a strategy may set the client lr), forward under autocast when `amp_dtype` is set, add
FedProx's proximal term, backward (scaled by a GradScaler for fp16), unscale, clip, optimizer step (the spec's: AdamW by default, or SGD with momentum;
fedctl.core.client, whose functional form the attacks unroll).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fedctl.core import client
from fedctl.core.task import ClientConfig, FitResult, LocalTraining, Task, proximal_term


def item_stream(num_items: int, gen: torch.Generator) -> Iterator[int]:
    """Item positions from back-to-back permutations: without replacement within every window of num_items."""
    while True:
        yield from torch.randperm(num_items, generator=gen).tolist()


def schedule(training: LocalTraining, num_items: int, gen: torch.Generator) -> list[list[torch.Tensor]]:
    """One round's optimizer steps, each a list of micro-batches (tensors of item positions)."""
    if num_items < 1:
        raise ValueError("a client needs at least one training item")
    stream = item_stream(num_items, gen)
    if training.local_updates > 0:
        sizes = [training.batch_size] * training.micro_batches(num_items)
    else:
        total = max(1, round(training.local_epochs * num_items))
        sizes = [min(training.batch_size, total - start) for start in range(0, total, training.batch_size)]
    micro = [torch.tensor([next(stream) for _ in range(size)], dtype=torch.long) for size in sizes]
    return [micro[i : i + training.grad_accum] for i in range(0, len(micro), training.grad_accum)]


def make_optimizer(training: LocalTraining, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    """The client spec's optimizer (AdamW by default; SGD with momentum): `fedctl.core.client.make_optimizer`."""
    return client.make_optimizer(training, model, lr)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast on `device` with `dtype`, or nothing when dtype is None (full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def train_steps(
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    client_id: str,
    steps: list[list[torch.Tensor]],
    gen: torch.Generator,
    *,
    peak_lr: float,
    step_offset: int = 0,
    anchor: dict[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """The loop. Returns the mean of the task's loss (without the proximal term) and of each batch metric
    over the micro-batches, the number of optimizer steps taken, and the resource record: `lr` (the last
    learning rate set), `grad_norm` (mean pre-clip global gradient norm over the steps), `items` (items
    trained on) and the task's `throughput` amounts summed (e.g. `tokens`) — all deterministic for a seed; the
    engine times the round. `on_step(j, n)` is called after optimizer step j of n (progress display)."""
    t = task.training
    device = model_device(model)
    scaler = torch.amp.GradScaler(device.type) if t.amp_dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {"loss": 0.0}
    amounts: dict[str, float] = {}
    n_micro, n_items, norm_sum, lr = 0, 0, 0.0, peak_lr
    for step, group in enumerate(steps):
        lr = t.lr_at(peak_lr, step_offset + step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        task.step_begins(model, step_offset + step)
        for items in group:
            batch = task.make_batch(client_id, items, gen)
            n_items += len(items)
            for k, v in task.throughput(batch).items():
                amounts[k] = amounts.get(k, 0.0) + float(v)
            with autocast(device, t.amp_dtype):
                loss, metrics = task.loss(model, batch)
            objective = (loss + proximal_term(model, anchor, proximal_mu)) / len(group)
            (scaler.scale(objective) if scaler else objective).backward()
            sums["loss"] += float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_micro += 1
        if scaler:
            scaler.unscale_(optimizer)
        if t.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)  # returns the pre-clip norm
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm_sum += float(norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step + 1, len(steps))
    record = {"lr": float(lr), "grad_norm": norm_sum / max(1, len(steps)), "items": float(n_items), **amounts}
    return {**{k: v / max(1, n_micro) for k, v in sums.items()}, "steps": float(len(steps)), **record}


def fit(task: Task, model: nn.Module, client_id: str, cfg: ClientConfig) -> FitResult:
    """Train `model` in place on one client's data for one round; bitwise reproducible for cfg.seed."""
    t = task.training
    n = task.train_items(client_id)
    peak = t.lr if cfg.instructions.client_lr is None else cfg.instructions.client_lr
    optimizer = make_optimizer(t, model, peak)
    if cfg.keep_optimizer_state and cfg.optimizer_state is not None:
        # deep copy: AdamW updates its moments in place and the engine's copy must stay as it was
        optimizer.load_state_dict(copy.deepcopy(cfg.optimizer_state))
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = schedule(t, n, gen)
    m = train_steps(task, model, optimizer, client_id, steps, gen, peak_lr=peak,
                    step_offset=(cfg.server_round - 1) * t.steps_per_round(n), anchor=cfg.anchor,
                    proximal_mu=cfg.instructions.proximal_mu, on_step=cfg.on_step)
    loss = m.pop("loss")
    steps_taken = m.pop("steps")
    # resource record, unprefixed: the engine sums / averages these per round (see Run.fit_round)
    record = {k: m.pop(k) for k in ("lr", "grad_norm", "items", *task.throughput_units)
              if k in m}
    return FitResult(
        num_examples=task.num_examples(client_id),
        metrics={"train_loss": loss, **{f"train_{k}": v for k, v in m.items()}, "steps": steps_taken, **record},
        optimizer_state=optimizer.state_dict() if cfg.keep_optimizer_state else None,
    )


def train_client(task: Task, model: nn.Module, client_id: str, cfg: ClientConfig,
                 keys: list[str] | None = None) -> FitResult:
    """What every executor runs for a sampled client: local training, update pruning (`federation.prune`), local
    differential privacy (`federation.dp` with mode client: clip and noise the update),
    the task's after-training hook, and the statistics the strategy asked for, measured on the model it shares.

    Pruning happens here, in the client, so that it holds for every workload, strategy, executor and backend,
    and that what leaves the client (saved client deltas included) is the pruned update. It keeps a copy of
    the shared tensors as they arrived (memory: one more model)."""
    from fedctl.core import client_stats
    from fedctl.core.prune import prune_update
    from fedctl.core.strategies.dp import privatise_update

    ins = cfg.instructions
    start = None
    if ins.prune > 0 or ins.dp_clipping_norm is not None:
        params = model.state_dict()
        start = {k: params[k].detach().clone() for k in (params if keys is None else keys)}
    result = fit(task, model, client_id, cfg)
    if start is not None:
        params = model.state_dict()
        shared = {k: params[k] for k in start}
        if ins.prune > 0:
            prune_update(shared, start, ins.prune)
        if ins.dp_clipping_norm is not None:  # federation.dp mode client: local DP, after pruning, before it leaves
            privatise_update(shared, start, ins.dp_clipping_norm, ins.dp_noise_std, cfg.seed)
    task.client_trained(model, client_id, cfg.server_round)
    result.stats.update(client_stats.requested(task, model, client_id, cfg.instructions, cfg.seed, keys))
    return result

