"""The one client trainer: every workload's local training runs here, so that a round means the same thing
in every workload.

Schedule (documented once, for every workload):
- A client holds `n` items: examples, text blocks, or prebuilt length batches (the task says which);
  `min(batch_size, n)` items make a micro-batch and `grad_accum` micro-batches make one optimizer step.
  A micro-batch never holds an item twice: a client with fewer items than `batch_size` trains on each of
  them once per micro-batch, not on copies.
- Items are drawn **without replacement** from a stream of seeded permutations of the client's items,
  one permutation after another, so within any window of `n` consecutive draws every item appears once,
  across epoch boundaries too. Where a micro-batch straddles two permutations, the next permutation's
  items already in that micro-batch are moved behind the first ones that are not (it stays a permutation).
  The stream is seeded per (run seed, round, client).
- Length bucketing (`bucket_batches = B > 0`, tasks with `item_costs`): each permutation is cut into runs of
  B micro-batches' worth of items and each run is sorted by cost (stable), so consecutive draws, hence a
  micro-batch's items, have similar sizes. It reorders a permutation, so every property above holds.
- A cap on one forward pass (`max_pass_cost = C > 0`): a micro-batch whose padded cost (items × largest)
  exceeds C runs as several passes over cost-sorted consecutive items, each within C (an item larger than C
  alone), its loss the item-weighted mean of theirs: the same objective (up to batch statistics such as
  BatchNorm's), bounded memory. The schedule (steps, micro-batches, items) is unchanged.
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
from collections.abc import Callable

import torch
from torch import nn

from fedctl.core import client
from fedctl.core.task import ClientConfig, FitResult, LocalTraining, Task, proximal_term


class ItemStream:
    """Item positions from back-to-back seeded permutations: every window of `num_items` draws (the first,
    the second, …) holds each item once, and one `take` never returns an item twice."""

    def __init__(self, num_items: int, gen: torch.Generator, costs: list[float] | None = None, bucket: int = 0):
        self.num_items, self.gen = num_items, gen
        self.costs, self.bucket = costs, bucket  # bucket > 0: runs of `bucket` draws sorted by cost
        self.perm: list[int] = []
        self.pos = 0

    def _permutation(self) -> list[int]:
        perm = torch.randperm(self.num_items, generator=self.gen).tolist()
        if self.bucket > 0 and self.costs is not None:
            cost = self.costs
            perm = [i for s in range(0, len(perm), self.bucket)
                    for i in sorted(perm[s : s + self.bucket], key=lambda i: cost[i])]
        return perm

    def take(self, size: int) -> list[int]:
        """The next `size` (≤ num_items) draws, all distinct."""
        if not 0 < size <= self.num_items:
            raise ValueError(f"a draw of {size} items from {self.num_items}")
        out: list[int] = []
        taken: set[int] = set()
        while len(out) < size:
            if self.pos == len(self.perm):
                self.perm, self.pos = self._permutation(), 0
            # only a draw that straddles two permutations can meet an item twice; the permutation holds
            # num_items - pos items ahead, at most len(out) of them taken, and needs size - len(out) ≤ the rest
            j = self.pos
            while self.perm[j] in taken:
                j += 1
            self.perm[self.pos], self.perm[j] = self.perm[j], self.perm[self.pos]
            out.append(self.perm[self.pos])
            taken.add(out[-1])
            self.pos += 1
        return out


def schedule(training: LocalTraining, num_items: int, gen: torch.Generator,
             costs: list[float] | None = None) -> list[list[torch.Tensor]]:
    """One round's optimizer steps, each a list of micro-batches (tensors of item positions); `costs` (one
    per item) sort the buckets when `training.bucket_batches` > 0."""
    if num_items < 1:
        raise ValueError("a client needs at least one training item")
    size = training.micro_batch_size(num_items)
    stream = ItemStream(num_items, gen, costs, training.bucket_batches * size)
    if training.local_updates > 0:
        sizes = [size] * training.micro_batches(num_items)
    else:
        total = max(1, round(training.local_epochs * num_items))
        sizes = [min(size, total - start) for start in range(0, total, size)]
    micro = [torch.tensor(stream.take(s), dtype=torch.long) for s in sizes]
    return [micro[i : i + training.grad_accum] for i in range(0, len(micro), training.grad_accum)]


def passes(items: torch.Tensor, costs: list[float] | None, cap: float) -> list[torch.Tensor]:
    """A micro-batch's forward passes: itself when its padded cost (items × largest) is within `cap` (or
    there is no cap), else its items sorted by cost (stable) cut greedily into runs of padded cost ≤ cap
    (an item costlier than cap runs alone)."""
    if cap <= 0 or costs is None or len(items) * max(costs[i] for i in items.tolist()) <= cap:
        return [items]
    out: list[list[int]] = [[]]
    for i in sorted(items.tolist(), key=lambda i: costs[i]):
        if out[-1] and (len(out[-1]) + 1) * costs[i] > cap:  # sorted: the new item is the largest
            out.append([])
        out[-1].append(i)
    return [torch.tensor(p, dtype=torch.long) for p in out]


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
    on_gradients: Callable[[float], None] | None = None,
    costs: list[float] | None = None,
) -> dict[str, float]:
    """The loop. Returns the mean of the task's loss (without the proximal term) and of each batch metric
    over the micro-batches, the number of optimizer steps taken, and the resource record: `lr` (the last
    learning rate set), `grad_norm` (mean pre-clip global gradient norm over the steps), `items` (items
    trained on) and the task's `throughput` amounts summed (e.g. `tokens`) — all deterministic for a seed; the
    engine times the round. `on_step(j, n)` is called after optimizer step j of n (progress display). `costs`
    (one per item) split micro-batches over `training.max_pass_cost` into several passes."""
    t = task.training
    device = model_device(model)
    scaler = torch.amp.GradScaler(device.type) if t.amp_dtype == torch.float16 else None
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {"loss": 0.0}
    amounts: dict[str, float] = {}
    n_micro, n_items, norm_sum, lr = 0, 0, 0.0, peak_lr
    initial_loss = float("nan")
    for step, group in enumerate(steps):
        lr = t.lr_at(peak_lr, step_offset + step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        task.step_begins(model, step_offset + step)
        for items in group:
            for part in passes(items, costs, t.max_pass_cost):
                weight = len(part) / len(items)  # 1.0 unless the micro-batch is split
                batch = task.make_batch(client_id, part, gen)
                for k, v in task.throughput(batch).items():
                    amounts[k] = amounts.get(k, 0.0) + float(v)
                with autocast(device, t.amp_dtype):
                    loss, metrics = task.loss(model, batch)
                objective = (loss + proximal_term(model, anchor, proximal_mu)) * (weight / len(group))
                (scaler.scale(objective) if scaler else objective).backward()
                sums["loss"] += float(loss.detach()) * weight
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * weight
            n_items += len(items)
            n_micro += 1
        if step == 0:  # every micro-batch of the first step saw the received model: its mean loss estimates F_k(w)
            initial_loss = sums["loss"] / max(1, n_micro)
        if scaler:
            scaler.unscale_(optimizer)
        if t.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)  # returns the pre-clip norm
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm_sum += float(norm)
        if on_gradients is not None:  # a strategy's correction of the final gradient (SCAFFOLD: + c − c_i)
            on_gradients(lr)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step + 1, len(steps))
    record = {"lr": float(lr), "grad_norm": norm_sum / max(1, len(steps)), "items": float(n_items), **amounts}
    return {**{k: v / max(1, n_micro) for k, v in sums.items()}, "initial_loss": initial_loss,
            "steps": float(len(steps)), **record}


def client_schedule(task: Task, client_id: str, num_items: int, gen: torch.Generator
                    ) -> tuple[list[list[torch.Tensor]], list[float] | None]:
    """A client's round of micro-batches as the trainer draws them, and the item costs its buckets and pass cap
    used: one function for the trainer and for the attack that replays a real run's client."""
    t = task.training
    costs = task.item_costs(client_id) if t.bucket_batches > 0 or t.max_pass_cost > 0 else None
    return schedule(t, num_items, gen, costs), costs


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
    steps, costs = client_schedule(task, client_id, n, gen)
    m = train_steps(task, model, optimizer, client_id, steps, gen, peak_lr=peak,
                    step_offset=(cfg.server_round - 1) * t.steps_per_round(n), anchor=cfg.anchor,
                    proximal_mu=cfg.instructions.proximal_mu, on_step=cfg.on_step,
                    on_gradients=cfg.on_gradients, costs=costs)
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
    if ins.evaluate_personal:  # this client's own trained model, before pruning and noise change what it shares
        personal = task.personal_evaluate(model, client_id) or {}
        result.metrics.update({f"personal_{k}": float(v) for k, v in personal.items()})
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

