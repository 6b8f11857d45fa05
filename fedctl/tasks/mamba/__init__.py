"""The Mamba2 language-model workload (issue #2): `MambaTask(MambaConfig(...), TaskContext(...))`."""

from fedctl.tasks.mamba.config import MambaConfig
from fedctl.tasks.mamba.presets import PRESETS
from fedctl.tasks.mamba.task import MambaTask, plain_train_loop

__all__ = ["MambaConfig", "MambaTask", "PRESETS", "plain_train_loop"]
