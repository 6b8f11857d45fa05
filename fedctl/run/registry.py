"""Workloads by name. A workload is its package under `fedctl/tasks/` plus one line here: the package's
`config.py` declares the config dataclass (the `task` section) and the `fedctl train` command (COMMAND,
SUMMARY, EXAMPLES, FLAGS); its task class is built as TaskClass(config, TaskContext). Config modules import
nothing heavy, so listing commands does not load torch or transformers."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fedctl.core.config import Flag
from fedctl.errors import FedctlError


@dataclass(frozen=True)
class Workload:
    name: str  # run.task
    module: str  # the task's package
    config_class: str  # its config dataclass (the `task` section), in `<module>.config`
    task_class: str  # constructed as TaskClass(config, TaskContext)
    prepare_flags: str | None = None  # a function in `<module>.config` that adjusts the command's flag values

    @property
    def declarations(self):
        return importlib.import_module(f"{self.module}.config")

    @property
    def command(self) -> str:
        return self.declarations.COMMAND

    @property
    def summary(self) -> str:
        return self.declarations.SUMMARY

    @property
    def examples(self) -> tuple[str, ...]:
        return tuple(self.declarations.EXAMPLES)

    @property
    def flags(self) -> tuple[Flag, ...]:
        return tuple(self.declarations.FLAGS)

    def adjust_flags(self, values: dict[str, Any], *, config_given: bool, resume: bool) -> dict[str, Any]:
        if self.prepare_flags is None:
            return values
        return getattr(self.declarations, self.prepare_flags)(values, config_given=config_given, resume=resume)

    def config(self):
        return getattr(self.declarations, self.config_class)()

    def build(self, cfg, ctx):
        return getattr(importlib.import_module(f"{self.module}.task"), self.task_class)(cfg, ctx)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("mamba", "fedctl.tasks.mamba", "MambaConfig", "MambaTask"),
    Workload("glue", "fedctl.tasks.glue", "GlueConfig", "GlueTask", prepare_flags="command_flags"),
    Workload("hubert", "fedctl.tasks.hubert", "HubertPretrainConfig", "HubertTask"),
    Workload("distill", "fedctl.tasks.distill", "DistillConfig", "DistillTask"),
    Workload("asr", "fedctl.tasks.asr", "AsrConfig", "AsrTask"),
    Workload("downstream", "fedctl.tasks.downstream", "DownstreamConfig", "DownstreamTask"),
)}


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise FedctlError(f"unknown task '{name}'", f"choose one of: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]
