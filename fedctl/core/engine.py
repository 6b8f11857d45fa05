"""The round loop: sample clients, broadcast, train locally, aggregate as updates arrive,
evaluate, checkpoint. In-process simulation; fedctl.flower runs the same task and strategy
across machines.

Memory: the server keeps the global state, one working model that every client trains in turn,
and the strategy's accumulator — O(model) whatever the number of clients (robust strategies
that need all updates at once are the documented exception).
"""

from __future__ import annotations

import dataclasses
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedctl.core import checkpoint as ckpt_io
from fedctl.core import client_stats, stateful
from fedctl.core.aggregate import State, aggregate_metrics, all_finite, state_nbytes
from fedctl.core.client_state import ClientStateStore, flatten_optimizer_state
from fedctl.core.config import FederationConfig
from fedctl.core.events import (
    CheckpointSaved,
    ClientFailed,
    ClientProgress,
    Message,
    RoundFinished,
    RunFinished,
    RunStarted,
)
from fedctl.core.instructions import ClientInstructions
from fedctl.core.memory import TreePeak
from fedctl.core.rundir import RunDir
from fedctl.core.strategies import ClientUpdate, Strategy, innermost
from fedctl.core.task import ClientConfig, Task, client_seed
from fedctl.errors import FedctlError

EventSink = Callable[[object], None]


@dataclass
class RunResult:
    model: nn.Module  # holds the final global state
    history: list[dict[str, Any]] = field(default_factory=list)  # the records of metrics.jsonl
    rounds_done: int = 0
    run_dir: RunDir | None = None

    def last(self, key: str) -> Any:
        """The newest value of a metric in the history (e.g. 'val_ppl'), or None."""
        for rec in reversed(self.history):
            if key in rec:
                return rec[key]
        return None


FIT_STREAM, EVALUATE_STREAM = 999_983, 999_979  # seed salts: evaluation samples independently of training


def sample_size(num_clients: int, fraction: float, min_clients: int) -> int:
    """Flower's count rule: max(int(fraction · K), min_clients), at most K."""
    return min(num_clients, max(int(fraction * num_clients), min_clients))


def sample_clients(num_clients: int, fraction: float, min_fit_clients: int, seed: int, server_round: int,
                   stream: int = FIT_STREAM) -> list[int]:
    """Indices of the clients that train (or, with `stream=EVALUATE_STREAM`, are evaluated) in `server_round`,
    sorted; `sample_size` of them. Seeded per round and stream, so a resumed run samples the same and the
    evaluation sample is drawn independently of the training sample."""
    n = sample_size(num_clients, fraction, min_fit_clients)
    if n >= num_clients:
        return list(range(num_clients))
    gen = torch.Generator().manual_seed(client_seed(seed, server_round, stream))
    return sorted(torch.randperm(num_clients, generator=gen)[:n].tolist())


@dataclass
class ClientOutcome:
    """One sampled client's result: an update to aggregate, or why it was left out."""

    client_id: str
    update: ClientUpdate | None = None
    failure: str | None = None
    client_state: dict[str, torch.Tensor] | None = None  # what the client keeps for its next round (the store's)


Executor = Callable[["Run", int, list[int], ClientInstructions], Iterator[ClientOutcome]]


def prepare_client(
    seed: int,
    server_round: int,
    index: int,
    instructions: ClientInstructions,
    global_state: State,
    keep_optimizer_state: bool = False,
    client_state: dict[str, torch.Tensor] | None = None,
    server_payload: dict[str, torch.Tensor] | None = None,
) -> ClientConfig:
    """Seed every RNG for this (run, round, client) and build its ClientConfig; wherever a client
    trains (here or on a Flower SuperNode) this makes its result identical."""
    cseed = client_seed(seed, server_round, index)
    seed_everything(cseed)
    return ClientConfig(
        server_round=server_round,
        client_index=index,
        seed=cseed,
        instructions=instructions,
        anchor=global_state if instructions.proximal_mu > 0.0 else None,  # FedProx only
        keep_optimizer_state=keep_optimizer_state,
        client_state=client_state,
        server_payload=server_payload or None,
    )


def local_executor(run: Run, server_round: int, sampled: list[int],
                   instructions: ClientInstructions) -> Iterator[ClientOutcome]:
    """Trains the sampled clients one after another in this process, on one working model.

    Each yielded update refers to the working model's tensors: the engine folds it into the
    aggregate before asking for the next client, which is what keeps memory O(model).
    """
    for index in sampled:
        cid = run.client_ids[index]
        run.load_global()
        cfg = prepare_client(run.seed, server_round, index, instructions, run.global_state,
                             run.fed.keep_optimizer_state, run.client_entry(cid), run.payload)
        cfg.on_step = run.progress_hook(server_round, sampled.index(index) + 1, len(sampled))
        try:
            result = stateful.train(run.task, run.model, cid, cfg, run.keys)
        except FedctlError:
            raise
        except Exception as exc:  # a failing client is left out, not fatal
            yield ClientOutcome(cid, failure=f"raised {type(exc).__name__}: {exc}")
            continue
        state = {k: run.params[k] for k in run.keys}
        yield ClientOutcome(cid, ClientUpdate(cid, state, result.num_examples, result.metrics, result.stats),
                            client_state=result.client_state)


def peak_rss_mb() -> float:
    """The server process's own peak resident set size so far, in MB (10^6 bytes): Linux reports KiB, macOS
    bytes. Worker processes are not in it: see `peak_rss_tree_mb` (fedctl.core.memory)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6


# Metrics of where and how fast a round ran, not of what it computed: they differ between identical runs.
VOLATILE_METRICS = frozenset({"seconds", "time", "examples_per_s", "peak_rss_mb", "peak_rss_tree_mb",
                              "cuda_max_allocated_mb"})


def is_volatile(key: str) -> bool:
    """True for a metric that measures the machine (time, memory, throughput), not the training."""
    return key in VOLATILE_METRICS or key.endswith("_per_s")


def resource_record(clients: list[dict[str, float]], units: tuple[str, ...], seconds: float) -> dict[str, Any]:
    """A round's resource record from its clients' training metrics and the wall `seconds` of its training
    phase (sampling to the last client's update, aggregation folded in): `time` (UNIX seconds, now),
    `examples_per_s` (items trained on per second of that phase, all clients together) and
    `<unit>_per_s` for the task's throughput units, `peak_rss_mb` (the server process's peak since it
    started; the caller adds `peak_rss_tree_mb`, server + workers over the round), `cuda_max_allocated_mb` (on CUDA),
    `lr` (the last client's last learning rate) and `grad_norm` (mean pre-clip gradient norm)."""
    rec: dict[str, Any] = {"time": time.time()}
    if seconds > 0:
        rec["examples_per_s"] = sum(c.get("items", 0.0) for c in clients) / seconds
        for unit in units:
            if any(unit in c for c in clients):
                rec[f"{unit}_per_s"] = sum(c.get(unit, 0.0) for c in clients) / seconds
    rec["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1e6
    lrs = [c["lr"] for c in clients if "lr" in c]
    if lrs:
        rec["lr"] = lrs[-1]
    norms = [c["grad_norm"] for c in clients if "grad_norm" in c]
    if norms:
        rec["grad_norm"] = sum(norms) / len(norms)
    return rec


def non_finite_metrics(record: dict[str, Any]) -> list[str]:
    """'key = value' for each float metric of an evaluation record that is NaN or infinite."""
    return [f"{k} = {v}" for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class Run:
    """One federated run's server state; executors read the global state and task from it."""

    def __init__(self, task, strategy, federation, seed, config, run_dir, on_event, executor=None):
        self.task: Task = task
        self.strategy: Strategy = strategy
        self.fed: FederationConfig = federation
        self.seed: int = seed
        self.config: dict[str, Any] = config
        self.run_dir: RunDir | None = None if run_dir is None else (
            run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir))
        self.emit: EventSink = on_event or (lambda event: None)
        self.executor: Executor = executor or local_executor
        self.history: list[dict[str, Any]] = []
        self.personal: list[tuple[str, dict[str, float]]] = []
        self.memory = TreePeak()  # server + worker processes' summed RSS (peak_rss_tree_mb)

        self.client_ids = list(task.client_ids())
        self.model = task.build_model()
        self.keys = list(task.shared_keys(self.model))
        self.params = self.model.state_dict()  # tensors share storage with the model
        missing = [k for k in self.keys if k not in self.params]
        if missing:
            raise FedctlError(f"task {task.name} shares keys its model lacks: {missing[:3]}", "fix shared_keys()")
        # tensors that stay on each client (FedBN's BatchNorm, federation.local_keys): they leave the shared keys
        self.local_keys = local_keys_of(innermost(strategy), self.model, self.keys, list(federation.local_keys))
        self.keys = [k for k in self.keys if k not in set(self.local_keys)]
        self.local_init = {f"local/{k}": self.params[k].detach().clone() for k in self.local_keys}
        innermost(strategy).bind(num_clients=len(self.client_ids))
        strategy.check_model(self.model, self.keys)  # e.g. DP refuses BatchNorm statistics it would not protect
        self.client_state = ClientStateStore(
            None if self.run_dir is None else self.run_dir.path / "client_state", federation.client_state_memory)
        self.payload: State = {}  # Strategy.broadcast() of the round being trained
        self.global_state: State = {k: self.params[k].detach().clone() for k in self.keys}
        self.shared_bytes = state_nbytes(self.global_state)
        self.spare: State | None = None  # buffers the aggregator may reuse (see fit_round)
        self._best_warned = False

    def progress_hook(self, server_round: int, client: int, clients: int) -> Callable[[int, int], None]:
        """The trainer's per-step callback for client `client` of `clients`: emits ClientProgress."""
        return lambda step, steps: self.emit(ClientProgress(server_round, client, clients, step, steps))

    # -- state movement -------------------------------------------------------------------------
    def client_entry(self, client_id: str) -> dict[str, torch.Tensor] | None:
        """What client `client_id` kept from its last round (its local tensors start as the initial model's)."""
        entry = self.client_state.get(client_id)
        if self.local_init and (entry is None or not any(k.startswith("local/") for k in entry)):
            entry = {**self.local_init, **(entry or {})}
        return entry

    def stateful(self) -> str | None:
        """What the clients of this run keep between rounds, in words, or None (backends that cannot keep client
        state refuse the run by this)."""
        what = innermost(self.strategy).client_state
        if what is not None:
            return f"strategy {innermost(self.strategy).name} keeps {what} on every client"
        if self.local_keys:
            return "federation.local_keys keeps tensors on every client"
        if self.fed.keep_optimizer_state:
            return "federation.keep_optimizer_state keeps each client's optimizer state"
        return None

    @torch.no_grad()
    def load_global(self) -> None:
        """The working model as the server holds it: the global state, and the initial local tensors (each
        client's own ones live in the client-state store, never here)."""
        for k in self.keys:
            self.params[k].copy_(self.global_state[k])
        for k in self.local_keys:
            self.params[k].copy_(self.local_init[f"local/{k}"])

    def checkpoint_payload(self, server_round: int, with_client_state: bool = True) -> dict[str, Any]:
        return {
            "round": server_round,
            "task": self.task.name,
            "strategy": self.strategy.name,
            "model": {k: v.detach().cpu() for k, v in self.global_state.items()},
            "strategy_state": self.strategy.state_dict(),
            "client_state": self.snapshot_client_state(server_round) if with_client_state else None,
            "rng": ckpt_io.rng_state(),
            "config": self.config,
            "metrics": self.history,
        }

    def snapshot_client_state(self, server_round: int) -> dict[str, Any] | None:
        """Copy the client-state store beside round `server_round`'s checkpoint (hard links: cheap) and return
        the reference the checkpoint holds; None when no client keeps state."""
        if self.run_dir is None or len(self.client_state) == 0:
            return None
        target = self.run_dir.client_state_snapshot(server_round)
        target.parent.mkdir(parents=True, exist_ok=True)
        clients = self.client_state.snapshot(target)
        return {"dir": target.name, "clients": clients}

    def checkpoint(self, server_round: int) -> Path | None:
        if self.run_dir is None:
            return None
        if self.client_state.dirty:  # clients of an unfinished round already changed it: no true snapshot
            return None
        path = self.run_dir.save_checkpoint(server_round, self.checkpoint_payload(server_round),
                                            keep=self.fed.keep_checkpoints)
        self.emit(CheckpointSaved(server_round, path))
        return path

    def best_so_far(self) -> float | None:
        """The best logged global value of `best_metric` (after a resume: from the checkpoint's history)."""
        values = [r[self.fed.best_metric] for r in self.history
                  if r.get("type") == "eval" and r.get("scope") == "global"
                  and isinstance(r.get(self.fed.best_metric), (int, float))]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return None
        return min(values) if self.fed.best_mode == "min" else max(values)

    def improves_best(self, metrics: dict[str, Any]) -> bool:
        """True when this evaluation's global `best_metric` beats every logged one (strictly: ties keep the
        earlier round). Call before its record joins the history."""
        key = self.fed.best_metric
        if self.run_dir is None or key is None:
            return False
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            if key not in metrics and not self._best_warned:
                self._best_warned = True
                self.emit(Message(f"no best.pt: the evaluation has no '{key}' (it has {', '.join(sorted(metrics))}); "
                                  "set federation.best_metric to one of those, or null", "warning"))
            return False
        best = self.best_so_far()
        return best is None or (value < best if self.fed.best_mode == "min" else value > best)

    def save_best(self, server_round: int, metrics: dict[str, Any]) -> Path:
        """checkpoints/best.pt: this round's checkpoint plus {"best": metric, mode, value, round}."""
        payload = self.checkpoint_payload(server_round, with_client_state=False)  # for evaluation, not resume
        key = self.fed.best_metric
        payload["best"] = {"metric": key, "mode": self.fed.best_mode, "value": float(metrics[key]),
                           "round": server_round}
        return self.run_dir.save_best(payload)

    def resume(self) -> int:
        """Load the newest checkpoint of the run directory; return the round to start from."""
        assert self.run_dir is not None
        path, ckpt = self.run_dir.load_checkpoint()
        if ckpt["task"] != self.task.name:
            raise FedctlError(
                f"checkpoint {path} is from task '{ckpt['task']}', not '{self.task.name}'",
                f"resume it with `fedctl train {ckpt['task']} --out {self.run_dir} --resume`",
            )
        saved = ckpt["model"]
        for k in self.keys:
            if k not in saved or saved[k].shape != self.global_state[k].shape:
                raise FedctlError(
                    f"checkpoint {path} does not match the model: tensor '{k}' is missing or has another shape",
                    "resume with the same config the run was started with (see its config.yaml)",
                )
            self.global_state[k].copy_(saved[k])
        self.strategy.load_state_dict(ckpt.get("strategy_state") or {})
        ref = ckpt.get("client_state")
        if ref:
            source = path.parent / str(ref["dir"])
            if not source.is_dir():
                raise FedctlError(f"checkpoint {path} refers to client state {source}, which is missing",
                                  "resume from another checkpoint of the run (move the newer ones aside)")
            self.client_state.restore(source, [str(c) for c in ref["clients"]])
        else:
            self.client_state.restore_empty()
        for cid, opt in (ckpt.get("client_optimizer_states") or {}).items():  # checkpoints before the store
            self.client_state.put(cid, {f"optim/{k}": v for k, v in flatten_optimizer_state(opt).items()})
        self.client_state.commit()
        self.history = list(ckpt.get("metrics") or [])
        ckpt_io.restore_rng(ckpt.get("rng") or {})
        self.write_metrics()
        self.emit(Message(f"resumed from {path} (round {ckpt['round']})"))
        return int(ckpt["round"]) + 1

    def write_metrics(self) -> None:
        if self.run_dir is not None:
            self.run_dir.write_metrics(self.history)

    # -- client statistics and deltas ---------------------------------------------------------------
    def deltas_for(self, entity: str, server_round: int) -> bool:
        every = self.fed.save_deltas_every
        return (
            self.run_dir is not None and every > 0 and server_round % every == 0
            and self.fed.save_deltas_entity in (entity, "all")
        )

    # -- one round --------------------------------------------------------------------------------
    def fit_round(self, server_round: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.memory.reset()
        sampled = sample_clients(len(self.client_ids), self.fed.fraction, self.fed.min_fit_clients, self.seed, server_round)
        instructions = self.strategy.configure_fit(server_round)
        if self.fed.prune > 0:  # the run's setting, not the strategy's: it travels with every client's instructions
            instructions = dataclasses.replace(instructions, prune=self.fed.prune)
        if self.local_keys:
            instructions = dataclasses.replace(instructions, local_keys=tuple(self.local_keys))
        self.payload = innermost(self.strategy).broadcast(server_round)
        if self.fed.eval_clients and self.evaluates(server_round):  # personalised evaluation, where a task has one
            instructions = dataclasses.replace(instructions, evaluate_personal=True)
        aggregator = self.strategy.begin(server_round, self.global_state, self.spare)
        failed: list[str] = []
        loss_sum, examples, local_steps = 0.0, 0, 0
        trained: list[dict[str, float]] = []  # each aggregated client's metrics, for the resource record
        self.personal = []  # (client, its own trained model's evaluation): see Task.personal_evaluate
        for outcome in self.executor(self, server_round, sampled, instructions):
            cid = outcome.client_id
            if outcome.failure is not None:
                failed.append(cid)
                self.emit(ClientFailed(server_round, cid, outcome.failure))
                continue
            update = outcome.update
            if not all_finite(update.state) or not all(
                all_finite(v) if isinstance(v, dict) else math.isfinite(v)
                for v in update.stats.values() if isinstance(v, (dict, float))
            ):
                failed.append(cid)
                self.emit(ClientFailed(server_round, cid, "returned a non-finite update (NaN or Inf)"))
                continue
            if update.num_examples <= 0:
                failed.append(cid)
                self.emit(ClientFailed(server_round, cid, "reported num_examples <= 0"))
                continue
            if self.deltas_for("clients", server_round):
                self.run_dir.save_delta(server_round, cid, update.state, self.global_state,
                                        {"round": server_round, "entity": "client", "client_id": cid})
            aggregator.add(update)
            self.memory.sample()  # a worker that just finished a client is near its peak
            trained.append(dict(update.metrics))
            personal = {k.removeprefix("personal_"): v for k, v in update.metrics.items() if k.startswith("personal_")}
            if personal:
                self.personal.append((cid, personal))
            local_steps += int(update.metrics.get("steps", 0))
            if outcome.client_state is not None:  # in sampled order: the store spills the same for any executor
                self.client_state.put(cid, outcome.client_state)
            loss = update.metrics.get("train_loss")
            if loss is not None and math.isfinite(loss):
                loss_sum += loss * update.num_examples
                examples += update.num_examples
        fit_seconds = time.perf_counter() - t0  # the training phase, for throughput

        need = max(self.fed.min_fit_clients, aggregator.min_count)  # a robust rule may need more (Bulyan: 4f + 3)
        if aggregator.count < need:
            saved = self.checkpoint(server_round - 1) if server_round > 1 else None
            if saved is None and self.client_state.dirty and self.run_dir is not None and self.run_dir.has_checkpoints():
                then = "then continue with --resume (from the newest checkpoint: client state changed this round)"
            else:
                then = ("then continue with --resume" if saved is not None
                        else "then start the run again (round 1 failed, so nothing was saved to resume)")
            raise FedctlError(
                f"round {server_round}: only {aggregator.count} of {len(sampled)} clients returned usable updates "
                f"(min_fit_clients = {self.fed.min_fit_clients}"
                + (f", {self.strategy.name} needs {aggregator.min_count}" if aggregator.min_count > 1 else "")
                + f"); failed: {', '.join(failed)}",
                f"fix the failing clients (see the messages above) or lower federation.min_fit_clients, {then}",
            )
        old = self.global_state
        self.global_state = self.strategy.step(server_round, old, aggregator.result(old))
        if not all_finite(self.global_state):  # a diverged server step: keep the last good global state
            self.global_state = old
            raise FedctlError(
                f"round {server_round}: the {self.strategy.name} server step made the global model non-finite "
                f"(NaN or Inf); stopped, the newest checkpoint holds the last good state",
                "lower the server step (federation.strategy_args, e.g. eta or server_learning_rate) or task.lr",
            )
        self.client_state.commit()
        self.task.round_end(server_round, self.global_state)
        if self.deltas_for("server", server_round):
            self.run_dir.save_delta(server_round, None, self.global_state, old,
                                    {"round": server_round, "entity": "server"})
        # Double buffering: the old global becomes next round's accumulator unless the new state aliases it.
        in_use = {t.data_ptr() for t in self.global_state.values()}
        self.spare = old if not any(t.data_ptr() in in_use for t in old.values()) else None
        mb = self.shared_bytes / 1e6
        return {
            **aggregator.summary(),
            "type": "fit",
            "round": server_round,
            "clients": aggregator.count,
            "sampled": len(sampled),
            "fit_clients": [self.client_ids[i] for i in sampled],
            "failed": failed,
            "train_loss": loss_sum / examples if examples else None,
            "num_examples": examples,
            "local_steps": local_steps,
            "mb_down": mb * len(sampled),
            "mb_up": mb * aggregator.count,
            "seconds": time.perf_counter() - t0,
            **resource_record(trained, self.task.throughput_units, fit_seconds),
            "peak_rss_tree_mb": self.memory_peak_mb(),
        }

    def memory_peak_mb(self) -> float:
        """The round's peak summed RSS of the server and its worker processes (MB), sampled through it."""
        self.memory.sample()
        return self.memory.peak_mb

    def evaluate(self, server_round: int) -> list[dict[str, Any]]:
        """The global evaluation first; with `eval_clients`, then one row per sampled client (`scope: client`,
        with its `num_examples` for the weighted aggregate) and their aggregate (`scope: clients`, with the
        sampled `evaluate_clients` and the `aggregation` used). Sampling: `fraction_evaluate` and
        `min_evaluate_clients`, seeded per round independently of the training sample."""
        if self.local_keys:
            return self.evaluate_personalised(server_round)
        self.load_global()
        records = [{"type": "eval", "round": server_round, "scope": "global", **self.task.evaluate(self.model)}]
        samples = self.task.eval_samples(self.model)
        if samples:
            records[0]["samples"] = samples
        if self.fed.eval_clients:
            how = self.fed.evaluate_aggregation
            sampled = [self.client_ids[i] for i in sample_clients(
                len(self.client_ids), self.fed.fraction_evaluate, self.fed.min_evaluate_clients, self.seed,
                server_round, EVALUATE_STREAM)]
            rows, counts = [], []
            for cid in sampled:
                metrics = self.task.evaluate(self.model, cid)
                row = {"type": "eval", "round": server_round, "scope": "client", "client_id": cid, **metrics}
                if how == "weighted":
                    counts.append(int(self.task.eval_examples(cid)))
                    row["num_examples"] = counts[-1]
                records.append(row)
                rows.append(metrics)
            records.append({"type": "eval", "round": server_round, "scope": "clients", "aggregation": how,
                            "evaluate_clients": sampled, **({"num_examples": sum(counts)} if counts else {}),
                            **aggregate_metrics(rows, counts or None, how)})
        return records

    @torch.no_grad()
    def load_client(self, client_id: str) -> None:
        """The working model as client `client_id` holds it: the global tensors and its own local ones."""
        self.load_global()
        entry = self.client_entry(client_id) or {}
        for k in self.local_keys:
            self.params[k].copy_(entry[f"local/{k}"])

    def evaluate_personalised(self, server_round: int) -> list[dict[str, Any]]:
        """With local tensors there is no single global model: every client is evaluated with the global
        tensors and its own local ones on its own held-out data (`task.evaluate(model, client_id)`); the global
        record is the num_examples-weighted mean of those metrics (`personalised: true`). Cost: one evaluation
        per client per eval round; per-client rows are logged with federation.eval_clients."""
        rows, totals, weight = [], {}, 0.0
        for cid in self.client_ids:
            self.load_client(cid)
            metrics = self.task.evaluate(self.model, cid)
            rows.append({"type": "eval", "round": server_round, "scope": "client", "client_id": cid, **metrics})
            n = float(self.task.num_examples(cid))
            weight += n
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    totals[k] = totals.get(k, 0.0) + n * float(v)
        self.load_global()
        merged = {k: v / weight for k, v in totals.items()}
        head = {"type": "eval", "round": server_round, "scope": "global", "personalised": True, **merged}
        return [head, *rows] if self.fed.eval_clients else [head]

    def evaluates(self, server_round: int) -> bool:
        """Whether `server_round` ends with an evaluation (every eval_every rounds, and the last)."""
        return server_round % self.fed.eval_every == 0 or server_round == self.fed.rounds

    def personal_records(self, server_round: int) -> list[dict[str, Any]]:
        """This round's trained clients' own models on their own held-out data (`scope: personal`, one row each,
        `num_examples` included when the client reported it) and their aggregate (`scope: personals`)."""
        if not self.personal:
            return []
        how = self.fed.evaluate_aggregation
        rows = [{"type": "eval", "round": server_round, "scope": "personal", "client_id": cid, **m}
                for cid, m in self.personal]
        metrics = [{k: v for k, v in m.items() if k != "num_examples"} for _, m in self.personal]
        counts = [int(m.get("num_examples", 0)) for _, m in self.personal]
        weighted = how == "weighted" and all(n > 0 for n in counts)
        how = how if how != "weighted" or weighted else "mean"  # a client that did not count its examples
        return [*rows, {"type": "eval", "round": server_round, "scope": "personals", "aggregation": how,
                        "evaluate_clients": [cid for cid, _ in self.personal],
                        **({"num_examples": sum(counts)} if weighted else {}),
                        **aggregate_metrics(metrics, counts if weighted else None, how)}]

    def run(self, resume: bool) -> RunResult:
        start = 1
        if resume:
            start = self.resume()
        if self.run_dir is not None and (self.config or not resume):  # on resume: records a larger round count
            self.run_dir.write_config(self.config)
        total = self.fed.rounds
        if self.strategy.configure_fit(start).wants_stats:
            client_stats.require_client_stats(self.task, self.strategy.name)
        if self.fed.eval_clients and self.fed.evaluate_aggregation == "weighted":
            self.task.eval_examples(self.client_ids[0])  # a task that cannot count them is refused before training
        self.emit(
            RunStarted(
                task=self.task.name, strategy=self.strategy.name, rounds=total, start_round=start,
                num_clients=len(self.client_ids), num_parameters=sum(p.numel() for p in self.model.parameters()),
                shared_bytes=self.shared_bytes, run_dir=self.run_dir,
            )
        )
        self.memory.start()
        try:
            self._rounds(start, total)
        finally:
            self.memory.stop()
        self.load_global()
        self.emit(RunFinished(total, {}))
        return RunResult(self.model, self.history, total, self.run_dir)

    def _rounds(self, start: int, total: int) -> None:
        for server_round in range(start, total + 1):
            fit = self.fit_round(server_round)
            self.history.append(fit)
            row = {k: v for k, v in fit.items() if k != "type"}
            personal = self.personal_records(server_round)
            self.history.extend(personal)
            row.update({f"personal_{k}": v for k, v in (personal[-1] if personal else {}).items()
                        if isinstance(v, float) and k != "num_examples"})
            best: dict[str, Any] | None = None  # this round's global eval, when it is the best so far
            evals: list[dict[str, Any]] = []
            broken: list[str] = []  # this round's non-finite global metrics
            if self.evaluates(server_round):
                t0 = time.perf_counter()
                evals = self.evaluate(server_round)
                best = evals[0] if self.improves_best(evals[0]) else None
                broken = non_finite_metrics(evals[0])
                self.history.extend(evals)
                row.update({k: v for k, v in evals[0].items() if k not in ("type", "scope", "round")})
                for rec in evals[1:]:  # the aggregate of the sampled clients' evaluations, beside the global one
                    if rec["scope"] == "clients":
                        row.update({f"clients_{k}": v for k, v in rec.items()
                                    if isinstance(v, float) and k != "num_examples"})
                row["seconds"] += time.perf_counter() - t0
            self.write_metrics()
            if server_round % self.fed.checkpoint_every == 0 or server_round == total or broken:
                self.checkpoint(server_round)
            if best is not None:  # after the round checkpoint: a failed best.pt write leaves that one on disk
                self.save_best(server_round, best)
            self.emit(RoundFinished(server_round, row, [fit, *evals]))
            if broken:  # a model that no longer evaluates is no result: stop loudly, with its state saved
                raise FedctlError(
                    f"round {server_round}: the global evaluation is not finite ({', '.join(broken)}); stopped"
                    + (f", metrics.jsonl has null there and checkpoint round {server_round} holds the model"
                       if self.run_dir is not None else ""),
                    "likely too much noise for the model (federation.dp.noise_multiplier; BatchNorm statistics, "
                    "see federation.dp.buffers) or a diverging step (task.lr, federation.strategy_args)")
        self.load_global()
        self.client_state.close()
        self.emit(RunFinished(total, {}))
        return RunResult(self.model, self.history, total, self.run_dir)


def local_keys_of(strategy: Strategy, model: nn.Module, shared_keys: list[str], patterns: list[str]) -> list[str]:
    """The shared tensors that stay on every client: the strategy's own (FedBN) and those matching a
    `federation.local_keys` glob pattern; each pattern must match a shared tensor."""
    import fnmatch

    keys = list(strategy.local_keys(model, shared_keys, patterns))
    for pattern in patterns:
        hits = [k for k in shared_keys if fnmatch.fnmatchcase(k, str(pattern))]
        if not hits:
            close = ", ".join(shared_keys[:4]) + (", …" if len(shared_keys) > 4 else "")
            raise FedctlError(f"federation.local_keys pattern '{pattern}' matches no shared tensor of the model",
                              f"use glob patterns over the tensor names (e.g. {close}); "
                              "`fedctl inspect ckpt` lists them")
        keys += [k for k in hits if k not in keys]
    if keys and len(keys) == len(shared_keys):
        raise FedctlError("federation.local_keys / the strategy keep every shared tensor local: nothing would travel",
                          "keep only the personal layers local (e.g. the classifier head)")
    return keys


def run_federated(
    task: Task,
    strategy: Strategy,
    federation: FederationConfig,
    *,
    seed: int,
    config: dict[str, Any] | None = None,
    run_dir: RunDir | str | Path | None = None,
    on_event: EventSink | None = None,
    resume: bool = False,
    executor: Executor | None = None,
) -> RunResult:
    """Train `task` federatedly with `strategy` for `federation.rounds` rounds.

    Writes config.yaml, metrics.jsonl and checkpoints/round_NNN.pt under `run_dir` when given (the caller
    holds its lock: see `RunDir.locked`).
    With `resume`, continues from the newest checkpoint there and reaches the same final
    weights as an uninterrupted run. `executor` decides where clients train (default: one
    after another in this process; fedctl.flower sends them to Flower SuperNodes).
    """
    if resume and run_dir is None:
        raise FedctlError("--resume needs a run directory", "pass --out RUN_DIR of the run to continue")
    seed_everything(seed)
    run = Run(task, strategy, federation, seed, config or {}, run_dir, on_event, executor)
    return run.run(resume)
