"""The stand-in's task: tests/core's LinearTask built as Task(config, context)."""

from __future__ import annotations

from tests.core.linear_task import LinearTask
from tests.reliability.linear_workload.config import LinearConfig


class LinearWorkloadTask(LinearTask):
    name = "mamba"  # it stands in for the mamba workload (see the linear_cli fixture)

    def __init__(self, cfg: LinearConfig, ctx) -> None:
        super().__init__(num_clients=ctx.num_clients, steps=cfg.steps, lr=cfg.lr, seed=ctx.seed)
