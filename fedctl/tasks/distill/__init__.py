"""Federated HuBERT distillation: `DistillTask(DistillConfig(...), TaskContext(...))`."""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "DistilHubertStudent": "model",
    "DistillConfig": "config",
    "DistillTask": "task",
    "build_distilhubert": "model",
    "build_kd_student": "model",
    "load_teacher": "model",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
