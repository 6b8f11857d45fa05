"""Workloads by name: their config dataclass and how to build the task. Imports are lazy so that
`fedctl --help` does not load transformers."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from fedctl.errors import FedctlError


@dataclass(frozen=True)
class Workload:
    name: str
    module: str  # the task's package
    config_class: str  # its config dataclass (the `task` section)
    task_class: str  # constructed as TaskClass(config, TaskContext)
    summary: str

    def config(self):
        return getattr(importlib.import_module(self.module), self.config_class)()

    def build(self, cfg, ctx):
        return getattr(importlib.import_module(self.module), self.task_class)(cfg, ctx)


_ALL = (
    Workload("mamba", "fedctl.tasks.mamba", "MambaConfig", "MambaTask", "Mamba2 causal language model (transformers)"),
    Workload("glue", "fedctl.tasks.glue", "GlueConfig", "GlueTask", "LoRA or full fine-tuning on a GLUE task (peft)"),
    Workload("hubert", "fedctl.tasks.hubert", "HubertPretrainConfig", "HubertTask", "HuBERT masked-prediction pretraining"),
    Workload("distill", "fedctl.tasks.distill", "DistillConfig", "DistillTask", "HuBERT teacher → student distillation"),
)
# A workload is listed only once its package exists: no placeholders.
WORKLOADS: dict[str, Workload] = {w.name: w for w in _ALL if importlib.util.find_spec(w.module) is not None}


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise FedctlError(f"unknown task '{name}'", f"choose one of: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]
