"""Federated HuBERT distillation: `DistillTask(DistillConfig(...), TaskContext(...))`."""

from fedctl.tasks.distill.config import DistillConfig
from fedctl.tasks.distill.model import DistilHubertStudent, build_distilhubert, build_kd_student, load_teacher
from fedctl.tasks.distill.task import DistillTask

__all__ = ["DistilHubertStudent", "DistillConfig", "DistillTask", "build_distilhubert", "build_kd_student", "load_teacher"]
