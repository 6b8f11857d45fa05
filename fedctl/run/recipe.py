"""A training run from a config, top to bottom: resolve config → build task and strategy →
run the engine → export. `fedctl train <task>` and `fedctl train central` call `train()`."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedctl.core import parallel
from fedctl.core.config import (
    FederationConfig,
    RunConfig,
    apply_mapping,
    check_fields,
    load_yaml,
    parse_set,
    to_dict,
)
from fedctl.core.engine import EventSink, Executor, RunResult, run_federated, sample_size
from fedctl.core.events import Message
from fedctl.core.rundir import RunDir, check_resume
from fedctl.core.strategies import build_strategy
from fedctl.core.strategies.dp import check_strategy, dp_config, wrap_dp
from fedctl.core.task import TaskContext
from fedctl.errors import FedctlError
from fedctl.run.rebuild import rebuild_task
from fedctl.run.registry import get_workload
from fedctl.utils.templates import resolve_template


@dataclass
class Experiment:
    """The resolved config of one run: sections `run`, `federation` and `task` (the workload's own)."""

    run: RunConfig
    federation: FederationConfig
    task: Any


@dataclass
class TrainOutcome:
    result: RunResult
    experiment: Experiment
    run_dir: RunDir
    summary: dict[str, Any] = field(default_factory=dict)
    sample: str | None = None


def new_experiment(task_name: str) -> Experiment:
    return Experiment(RunConfig(name=task_name, task=task_name), FederationConfig(), get_workload(task_name).config())


def resolve(
    task_name: str,
    config: str | Path | None = None,
    flags: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
    central: bool = False,
) -> Experiment:
    """Defaults ← YAML file ← flags ← --set, all checked strictly; then validated."""
    exp = new_experiment(task_name)
    if config is not None:
        data = load_yaml(resolve_template(config))
        apply_mapping(exp, data, "")
        if exp.run.task != task_name:
            raise FedctlError(
                f"config {config} is for task '{exp.run.task}', not '{task_name}'",
                f"run it with `fedctl train {exp.run.task} --config {config}`",
            )
    for section, values in (flags or {}).items():
        target = getattr(exp, section)
        given = {k: v for k, v in values.items() if v is not None}
        if section == "task":
            known = {f.name for f in dataclasses.fields(target)}
            for key in given:
                if key not in known:  # a shared flag (e.g. --data) this workload has no key for
                    raise FedctlError(
                        f"--{key.replace('_', '-')} does not apply to task '{task_name}'",
                        f"its keys: {', '.join(sorted(known))} (set them with --set task.KEY=VALUE)",
                    )
        apply_mapping(target, given, section)
    apply_mapping(exp, parse_set(sets), "")
    if central:
        # the centralized baseline is the engine with one client holding all data
        exp.federation.clients, exp.federation.fraction, exp.federation.min_fit_clients = 1, 1.0, 1
        exp.federation.strategy, exp.federation.strategy_args = "fedavg", {}
        if exp.run.name == task_name:
            exp.run.name = f"{task_name}-central"
    validate(exp)
    pin_changed_defaults(exp, new_run=True)
    return exp


def pin_changed_defaults(exp: Experiment, *, new_run: bool) -> None:
    """Write into the config the strategy options whose default changed, so a run keeps the value it started with:
    FedAvgM's server_momentum became 0.9 (it was 0.0, Flower's). A new run records 0.9; a run whose config has no
    server_momentum was started before the change, so it resumes with 0.0, as it trained."""
    f = exp.federation
    if build_strategy(f.strategy, f.strategy_args).name == "fedavgm" and "server_momentum" not in f.strategy_args:
        f.strategy_args = {**f.strategy_args, "server_momentum": 0.9 if new_run else 0.0}


def validate(exp: Experiment) -> None:
    f = exp.federation
    if not (0.0 < f.fraction <= 1.0):
        raise FedctlError(f"federation.fraction = {f.fraction} is outside (0, 1]", "use e.g. --fraction 0.5 (half the clients per round)")
    if f.rounds < 1:
        raise FedctlError(f"federation.rounds = {f.rounds} must be at least 1", "use e.g. --rounds 10")
    if f.clients < 1:
        raise FedctlError(f"federation.clients = {f.clients} must be at least 1", "use e.g. --clients 4")
    if not (1 <= f.min_evaluate_clients <= f.clients):
        raise FedctlError(
            f"federation.min_evaluate_clients = {f.min_evaluate_clients} must be between 1 and clients ({f.clients})",
            "lower --set federation.min_evaluate_clients or raise --clients",
        )
    if not (1 <= f.min_fit_clients <= f.clients):
        raise FedctlError(
            f"federation.min_fit_clients = {f.min_fit_clients} must be between 1 and clients ({f.clients})",
            "lower --set federation.min_fit_clients or raise --clients",
        )
    if exp.run.threads < 0:
        raise FedctlError(f"run.threads = {exp.run.threads} must be >= 0", "use 0 (auto: 1 per worker process, else the usable cores) or a thread count")
    if exp.run.workers < 0:
        raise FedctlError(f"run.workers = {exp.run.workers} must be >= 0", "use 0 (auto), 1 (sequential) or a worker count")
    for key in ("eval_every", "checkpoint_every"):
        if getattr(f, key) < 1:
            raise FedctlError(f"federation.{key} must be at least 1", f"--set federation.{key}=1")
    if f.save_deltas_every < 0 or f.save_deltas_entity not in ("server", "clients", "all"):
        raise FedctlError(
            f"federation.save_deltas_every = {f.save_deltas_every}, save_deltas_entity = '{f.save_deltas_entity}' is invalid",
            "use --save-deltas every=N entity=server|clients|all (N ≥ 1), or leave it off",
        )
    if f.best_mode not in ("min", "max"):
        raise FedctlError(f"federation.best_mode = '{f.best_mode}' must be min or max",
                          "--set federation.best_mode=max for accuracy-like metrics, min for losses")
    strategy = build_strategy(f.strategy, f.strategy_args)  # checks name and options
    strategy.check_clients(sample_size(f.clients, f.fraction, f.min_fit_clients))  # e.g. Bulyan: 4f + 3
    check_fields(f, "federation")  # the field checks (prune, …) also for a config built in code
    if f.dp:
        check_strategy(strategy, dp_config(dict(f.dp)))  # before any data is read: DP refuses what it cannot account
    resolve_device(exp.run.device)
    from fedctl.run import tracking

    exp.run.track = tracking.check(exp.run.track)  # known names, packages installed: before anything trains


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FedctlError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FedctlError(f"device '{name}' requested but CUDA is not available", "use --device cpu (or auto)")
    return dev


def run_dir_of(exp: Experiment) -> Path:
    return Path(exp.run.out) if exp.run.out else Path("runs") / exp.run.name


def experiment_from(data: dict[str, Any]) -> Experiment:
    """An Experiment from a resolved config mapping (config.yaml, a checkpoint's `config`)."""
    task_name = (data.get("run") or {}).get("task", "mamba")
    exp = new_experiment(task_name)
    apply_mapping(exp, data, "")
    return exp


def load_run_config(run_dir: Path, rounds: int | None = None) -> Experiment:
    """The experiment a run directory was started with (for --resume); only rounds may grow. The newest
    checkpoint's resolved config is the reference: a config.yaml edited since is refused, naming the keys."""
    run = RunDir(run_dir)
    exp = experiment_from(run.read_config())
    if rounds is not None:
        exp.federation.rounds = rounds
    exp.run.out = str(run_dir)
    validate(exp)
    pin_changed_defaults(exp, new_run=False)
    if run.has_checkpoints():
        path, ckpt = run.load_checkpoint()
        check_resume(ckpt["config"], to_dict(exp), path, int(ckpt["round"]))
    return exp


def train(
    exp: Experiment,
    on_event: EventSink | None = None,
    resume: bool = False,
    executor: Executor | None = None,
    resume_hint: str = "continue it with --resume, or choose another --out / --set run.name=…",
) -> TrainOutcome:
    """Build the task and strategy from `exp`, run the engine, export the final model.

    `executor` decides where clients train (default in-process; fedctl.flower passes its grid's).
    """
    run_dir = RunDir(run_dir_of(exp))
    with run_dir.locked():
        return _train_locked(exp, run_dir, on_event, resume, executor, resume_hint)


def _train_locked(exp: Experiment, run_dir: RunDir, on_event: EventSink | None, resume: bool,
                  executor: Executor | None, resume_hint: str) -> TrainOutcome:
    emit = on_event or (lambda e: None)
    if not resume and run_dir.has_checkpoints():
        raise FedctlError(f"run directory {run_dir.path} already holds checkpoints", resume_hint)
    # run.threads 0: the cores this process may use (affinity, cgroup quota); the parallel executor sets the
    # server to 1 thread when it starts several workers (see parallel.default_threads)
    torch.set_num_threads(parallel.resolve_threads(exp.run.threads))
    ctx = TaskContext(
        num_clients=exp.federation.clients,
        seed=exp.run.seed,
        device=resolve_device(exp.run.device),
        run_dir=run_dir,
        log=lambda text: emit(Message(text)),
    )
    task = get_workload(exp.run.task).build(exp.task, ctx)
    # A task may aggregate in its own space around the chosen strategy (glue: LoRA ΔW-space merging).
    strategy = task.wrap_strategy(build_strategy(exp.federation.strategy, exp.federation.strategy_args))
    # Differential privacy wraps outermost: it clips and noises exactly the tensors that travel.
    f = exp.federation
    strategy = wrap_dp(strategy, f.dp, num_clients=f.clients, fraction=f.fraction,
                       min_fit_clients=f.min_fit_clients, seed=exp.run.seed)
    summary = task.describe()
    # run.workers: clients train in parallel worker processes unless it is 1 or another executor is given
    with parallel.executor_for(exp.run.workers if executor is None else 1, exp.run.threads,
                               functools.partial(rebuild_task, to_dict(exp)), ctx.device) as workers:
        result = run_federated(
            task, strategy, exp.federation, seed=exp.run.seed, config=to_dict(exp),
            run_dir=run_dir, on_event=emit, resume=resume, executor=executor or workers,
        )
    task.export(result.model, run_dir.export_dir)
    return TrainOutcome(result, exp, run_dir, summary, task.sample(result.model))


def final_metrics(result: RunResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rec in result.history:
        if rec.get("type") == "eval" and rec.get("scope") == "global":
            out = {k: v for k, v in rec.items() if k not in ("type", "scope")}
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}

