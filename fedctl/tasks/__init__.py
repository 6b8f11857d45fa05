"""Workloads: one package per task. A task knows its model, data, local step and evaluation;
it knows nothing about rounds or strategies (see fedctl.core.task.Task)."""
