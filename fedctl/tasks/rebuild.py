"""Rebuild a run's task in another process from its resolved config: what a spawned parallel worker
(fedctl.core.parallel) does. The Flower ClientApp does the same (fedctl.flower.client_app)."""

from __future__ import annotations

from typing import Any

import torch

from fedctl.core.config import apply_mapping
from fedctl.core.task import TaskContext
from fedctl.errors import FedctlError


def rebuild_task(config: dict[str, Any], device: str):
    """The task a resolved run config describes, built as `fedctl train` builds it but on `device` and
    without a run directory (a worker writes nothing; a tokenizer the task trains is retrained
    deterministically from the same text). Module-level, so functools.partial of it pickles."""
    from fedctl.tasks import recipe
    from fedctl.tasks.registry import get_workload

    task_name = (config.get("run") or {}).get("task")
    if not task_name:
        raise FedctlError("the run config has no run.task", "start the run with `fedctl train <task>`")
    exp = recipe.new_experiment(task_name)
    apply_mapping(exp, config, "")
    ctx = TaskContext(num_clients=exp.federation.clients, seed=exp.run.seed, device=torch.device(device),
                      run_dir=None, log=lambda text: None)
    return get_workload(task_name).build(exp.task, ctx)
