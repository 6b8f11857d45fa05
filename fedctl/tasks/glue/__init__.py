"""The GLUE workload: federated LoRA or full fine-tuning of a sequence classifier,
`GlueTask(GlueConfig(...), TaskContext(...))`; the LoRA aggregation space lives in `aggregation`."""

from fedctl.tasks.glue.aggregation import LoraSpaceStrategy, svd_space_mean
from fedctl.tasks.glue.config import GlueConfig
from fedctl.tasks.glue.task import GlueTask

__all__ = ["GlueConfig", "GlueTask", "LoraSpaceStrategy", "svd_space_mean"]
