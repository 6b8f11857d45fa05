"""The Mamba2 language-model workload: `MambaTask(MambaConfig(...), TaskContext(...))`."""

from fedctl.utils.lazy import lazy_exports

_EXPORTS = {
    "MambaConfig": "config",
    "MambaTask": "task",
    "PRESETS": "presets",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
