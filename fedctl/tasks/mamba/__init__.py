"""The Mamba2 language-model workload: `MambaTask(MambaConfig(...), TaskContext(...))`."""

from fedctl.tasks.mamba.config import MambaConfig
from fedctl.tasks.mamba.presets import PRESETS
from fedctl.tasks.mamba.task import MambaTask

__all__ = ["MambaConfig", "MambaTask", "PRESETS"]
