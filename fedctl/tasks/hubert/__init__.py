"""Federated HuBERT pretraining: `HubertTask(HubertPretrainConfig(...), TaskContext(...))`."""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "HubertPretrainConfig": "config",
    "HubertPretrainModel": "model",
    "HubertTask": "task",
    "PRESETS": "presets",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
