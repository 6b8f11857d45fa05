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
from fedctl.core import client_stats, local
from fedctl.core.aggregate import State, all_finite, state_nbytes
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
from fedctl.core.strategies import ClientUpdate, Strategy
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


def sample_clients(num_clients: int, fraction: float, min_fit_clients: int, seed: int, server_round: int) -> list[int]:
    """Indices of the clients that train in `server_round`, sorted; Flower's count rule:
    max(int(fraction · K), min_fit_clients). Seeded per round, so a resumed run samples the same."""
    n = min(num_clients, max(int(fraction * num_clients), min_fit_clients))
    if n >= num_clients:
        return list(range(num_clients))
    gen = torch.Generator().manual_seed(client_seed(seed, server_round, 999_983))
    return sorted(torch.randperm(num_clients, generator=gen)[:n].tolist())


@dataclass
class ClientOutcome:
    """One sampled client's result: an update to aggregate, or why it was left out."""

    client_id: str
    update: ClientUpdate | None = None
    failure: str | None = None
    optimizer_state: dict[str, Any] | None = None


Executor = Callable[["Run", int, list[int], ClientInstructions], Iterator[ClientOutcome]]


def prepare_client(
    seed: int,
    server_round: int,
    index: int,
    instructions: ClientInstructions,
    global_state: State,
    keep_optimizer_state: bool = False,
    optimizer_state: dict[str, Any] | None = None,
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
        optimizer_state=optimizer_state,
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
                             run.fed.keep_optimizer_state, run.optimizer_states.get(cid))
        cfg.on_step = run.progress_hook(server_round, sampled.index(index) + 1, len(sampled))
        try:
            result = local.train_client(run.task, run.model, cid, cfg, run.keys)
        except FedctlError:
            raise
        except Exception as exc:  # a failing client is left out, not fatal
            yield ClientOutcome(cid, failure=f"raised {type(exc).__name__}: {exc}")
            continue
        state = {k: run.params[k] for k in run.keys}
        yield ClientOutcome(cid, ClientUpdate(cid, state, result.num_examples, result.metrics, result.stats),
                            optimizer_state=result.optimizer_state)


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
        self.optimizer_states: dict[str, Any] = {}
        self.memory = TreePeak()  # server + worker processes' summed RSS (peak_rss_tree_mb)

        self.client_ids = list(task.client_ids())
        self.model = task.build_model()
        self.keys = list(task.shared_keys(self.model))
        self.params = self.model.state_dict()  # tensors share storage with the model
        missing = [k for k in self.keys if k not in self.params]
        if missing:
            raise FedctlError(f"task {task.name} shares keys its model lacks: {missing[:3]}", "fix shared_keys()")
        self.global_state: State = {k: self.params[k].detach().clone() for k in self.keys}
        self.shared_bytes = state_nbytes(self.global_state)
        self.spare: State | None = None  # buffers the aggregator may reuse (see fit_round)
        self._best_warned = False

    def progress_hook(self, server_round: int, client: int, clients: int) -> Callable[[int, int], None]:
        """The trainer's per-step callback for client `client` of `clients`: emits ClientProgress."""
        return lambda step, steps: self.emit(ClientProgress(server_round, client, clients, step, steps))

    # -- state movement -------------------------------------------------------------------------
    @torch.no_grad()
    def load_global(self) -> None:
        for k in self.keys:
            self.params[k].copy_(self.global_state[k])

    def checkpoint_payload(self, server_round: int) -> dict[str, Any]:
        return {
            "round": server_round,
            "task": self.task.name,
            "strategy": self.strategy.name,
            "model": {k: v.detach().cpu() for k, v in self.global_state.items()},
            "strategy_state": self.strategy.state_dict(),
            "client_optimizer_states": self.optimizer_states,
            "rng": ckpt_io.rng_state(),
            "config": self.config,
            "metrics": self.history,
        }

    def checkpoint(self, server_round: int) -> Path | None:
        if self.run_dir is None:
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
        payload = self.checkpoint_payload(server_round)
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
        self.optimizer_states = ckpt.get("client_optimizer_states") or {}
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
        aggregator = self.strategy.begin(server_round, self.global_state, self.spare)
        failed: list[str] = []
        loss_sum, examples, local_steps = 0.0, 0, 0
        trained: list[dict[str, float]] = []  # each aggregated client's metrics, for the resource record
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
            local_steps += int(update.metrics.get("steps", 0))
            if self.fed.keep_optimizer_state and outcome.optimizer_state is not None:
                self.optimizer_states[cid] = outcome.optimizer_state
            loss = update.metrics.get("train_loss")
            if loss is not None and math.isfinite(loss):
                loss_sum += loss * update.num_examples
                examples += update.num_examples
        fit_seconds = time.perf_counter() - t0  # the training phase, for throughput

        if aggregator.count < self.fed.min_fit_clients:
            saved = self.checkpoint(server_round - 1) if server_round > 1 else None
            then = ("then continue with --resume" if saved is not None
                    else "then start the run again (round 1 failed, so nothing was saved to resume)")
            raise FedctlError(
                f"round {server_round}: only {aggregator.count} of {len(sampled)} clients returned usable updates "
                f"(min_fit_clients = {self.fed.min_fit_clients}); failed: {', '.join(failed)}",
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
        self.load_global()
        records = [{"type": "eval", "round": server_round, "scope": "global", **self.task.evaluate(self.model)}]
        examples = self.task.eval_examples(self.model)
        if examples:
            records[0]["examples"] = examples
        if self.fed.eval_clients:
            for cid in self.client_ids:
                records.append(
                    {"type": "eval", "round": server_round, "scope": "client", "client_id": cid,
                     **self.task.evaluate(self.model, cid)}
                )
        return records

    def run(self, resume: bool) -> RunResult:
        start = 1
        if resume:
            start = self.resume()
        if self.run_dir is not None and (self.config or not resume):  # on resume: records a larger round count
            self.run_dir.write_config(self.config)
        total = self.fed.rounds
        if self.strategy.configure_fit(start).wants_stats:
            client_stats.require_client_stats(self.task, self.strategy.name)
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
            best: dict[str, Any] | None = None  # this round's global eval, when it is the best so far
            if server_round % self.fed.eval_every == 0 or server_round == total:
                t0 = time.perf_counter()
                evals = self.evaluate(server_round)
                best = evals[0] if self.improves_best(evals[0]) else None
                self.history.extend(evals)
                row.update({k: v for k, v in evals[0].items() if k not in ("type", "scope", "round")})
                row["seconds"] += time.perf_counter() - t0
            self.write_metrics()
            if server_round % self.fed.checkpoint_every == 0 or server_round == total:
                self.checkpoint(server_round)
            if best is not None:  # after the round checkpoint: a failed best.pt write leaves that one on disk
                self.save_best(server_round, best)
            self.emit(RoundFinished(server_round, row))


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
