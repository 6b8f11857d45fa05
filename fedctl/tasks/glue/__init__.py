"""The GLUE workload: federated LoRA or full fine-tuning of a sequence classifier,
`GlueTask(GlueConfig(...), TaskContext(...))`; the LoRA aggregation space lives in `aggregation`."""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "GlueConfig": "config",
    "GlueTask": "task",
    "LoraSpaceStrategy": "aggregation",
    "svd_space_mean": "aggregation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
