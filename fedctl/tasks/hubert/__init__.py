"""Federated HuBERT pretraining: `HubertTask(HubertPretrainConfig(...), TaskContext(...))`."""

from fedctl.tasks.hubert.config import HubertPretrainConfig
from fedctl.tasks.hubert.model import HubertPretrainModel
from fedctl.tasks.hubert.presets import PRESETS
from fedctl.tasks.hubert.task import HubertTask

__all__ = ["HubertPretrainConfig", "HubertPretrainModel", "HubertTask", "PRESETS"]
