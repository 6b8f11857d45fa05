"""A run's task rebuilt in another process from its resolved config: what a spawned parallel worker
(fedctl.core.parallel) and a Flower SuperNode (fedctl.flower.client_app) do."""

from __future__ import annotations

from typing import Any

import torch

from fedctl.core.config import apply_mapping, parse_set
from fedctl.core.task import Task, TaskContext
from fedctl.errors import FedctlError


def rebuild_task(config: dict[str, Any], device: str | torch.device | None = None, sets: list[str] | tuple = ()) -> Task:
    """The task a resolved run config describes, built as `fedctl train` builds it but without a run directory
    (a worker writes nothing; a tokenizer the task trains is retrained deterministically from the same text).
    `sets` are `--set` overrides (a Flower node's own data paths); `device` defaults to the config's.
    Module-level, so functools.partial of it pickles."""
    from fedctl.run import recipe
    from fedctl.run.registry import get_workload

    if not (config.get("run") or {}).get("task"):
        raise FedctlError("the run config has no run.task", "start the run with `fedctl train <task>`")
    exp = recipe.experiment_from(config)
    apply_mapping(exp, parse_set(list(sets)), "")
    recipe.validate(exp)
    where = recipe.resolve_device(exp.run.device) if device is None else torch.device(device)
    ctx = TaskContext(num_clients=exp.federation.clients, seed=exp.run.seed, device=where, run_dir=None,
                      log=lambda text: None)
    return get_workload(exp.run.task).build(exp.task, ctx)
