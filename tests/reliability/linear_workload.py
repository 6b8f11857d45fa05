"""A workload the CLI can train in a fraction of a second: tests/core's LinearTask behind the registry's
interface (config dataclass + Task(config, context)). The `linear_cli` fixture puts it in place of mamba."""

from __future__ import annotations

from dataclasses import dataclass

from tests.core.linear_task import LinearTask


@dataclass
class LinearConfig:
    lr: float = 0.05  # client learning rate
    steps: int = 3  # local steps per round
    data: str | None = None  # unused; lets `--data` reach the config like mamba's


class LinearWorkloadTask(LinearTask):
    name = "mamba"  # it stands in for the mamba workload (see the linear_cli fixture)

    def __init__(self, cfg: LinearConfig, ctx) -> None:
        super().__init__(num_clients=ctx.num_clients, steps=cfg.steps, lr=cfg.lr, seed=ctx.seed, optimizer="sgd")
