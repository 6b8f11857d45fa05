"""The stand-in's config and command declarations (the registry reads them like a real workload's)."""

from __future__ import annotations

from dataclasses import dataclass

from fedctl.tasks.mamba.config import EXAMPLES, FLAGS, SUMMARY  # noqa: F401  (it stands in for mamba's command)

COMMAND = "mamba"


@dataclass
class LinearConfig:
    lr: float = 0.05  # client learning rate
    steps: int = 3  # local steps per round
    data: str | None = None  # unused; lets `--data` reach the config like mamba's
