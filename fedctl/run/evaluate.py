"""Evaluate a saved model with the metrics training logged: `fedctl eval TARGET`.

TARGET is one of
- a run directory (its newest round checkpoint: the final global model, since the last round is always saved);
- a checkpoint (`checkpoints/round_NNN.pt`, `checkpoints/best.pt`): its embedded resolved config rebuilds the task;
- a model folder with safetensors weights (a run's `final/` or `final/hf/` export);
- a peft adapter folder (`adapter_config.json`: a glue/LoRA run's adapters or a `fedctl merge` output).

Folders take their config from the nearest `config.yaml` above them, or from `config` (a run directory or a
config.yaml) when they live outside a run (e.g. a merged adapter). The task is rebuilt from that config with
its run directory as context, so it reuses the run's tokenizer and demo data; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedctl.core import checkpoint as ckpt_io
from fedctl.core.aggregate import aggregate_metrics
from fedctl.core.config import load_yaml
from fedctl.core.rundir import RunDir
from fedctl.core.task import TaskContext
from fedctl.core.weights import load_weights, read_weights
from fedctl.errors import FedctlError


@dataclass
class EvalResult:
    target: str
    kind: str  # run, checkpoint, export, adapter
    task: str
    round: int | None
    metrics: dict[str, float]  # the global validation split
    clients: dict[str, dict[str, float]] = field(default_factory=dict)  # each client's held-out split (--clients)
    # their aggregate by the run's federation.evaluate_aggregation (weighted: by each client's num_examples)
    clients_aggregate: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)  # CTC workloads: decoded hypotheses next to references


def _find_config(start: Path, config: Path | None) -> tuple[dict[str, Any], Path]:
    """(resolved config, run directory) for a folder target."""
    if config is not None:
        path = config / "config.yaml" if config.is_dir() else config
        if not path.is_file():
            raise FedctlError(f"{config} is neither a run directory nor a config.yaml",
                              "pass --config RUN_DIR of the run the model came from")
        return load_yaml(path), path.parent
    for folder in (start, *start.parents):
        if (folder / "config.yaml").is_file():
            return load_yaml(folder / "config.yaml"), folder
    raise FedctlError(f"no config.yaml in {start} or any folder above it",
                      "pass --config RUN_DIR of the run the model was trained in")


def evaluate_target(target: str | Path, *, config: str | Path | None = None, base: str | None = None,
                    clients: bool = False, device: str | None = None) -> EvalResult:
    """Rebuild the task of `target` and evaluate its model on the validation split (and, with `clients`,
    on each client's held-out split)."""
    from fedctl.run.recipe import experiment_from, resolve_device
    from fedctl.run.registry import get_workload

    target = Path(target)
    config = Path(config) if config is not None else None
    state: dict[str, torch.Tensor] | None = None
    server_round: int | None = None
    if not target.exists():
        raise FedctlError(f"{target} does not exist", "pass a run directory, a checkpoint, an export or an adapter")
    if target.is_file():
        ckpt = ckpt_io.load_checkpoint(target)
        kind, data, state, server_round = "checkpoint", ckpt["config"], ckpt["model"], int(ckpt["round"])
        run_root = target.parent.parent if target.parent.name == "checkpoints" else target.parent
    elif (target / "config.yaml").is_file() and config is None:
        run = RunDir(target)
        path, ckpt = run.load_checkpoint()
        kind, data, state, server_round = "run", ckpt["config"], ckpt["model"], int(ckpt["round"])
        run_root = target
    elif (target / "adapter_config.json").is_file():
        kind = "adapter"
        data, run_root = _find_config(target, config)
    else:
        kind = "export"
        folder = target / "hf" if (target / "hf").is_dir() else target
        if (folder / "adapter_config.json").is_file():
            kind, target = "adapter", folder
        data, run_root = _find_config(folder, config)
        if kind == "export":
            state = read_weights(folder)

    exp = experiment_from(data)
    if kind == "adapter":
        if exp.run.task != "glue" or not hasattr(exp.task, "init_adapter"):
            raise FedctlError(f"{target} is a peft adapter but the config is for task '{exp.run.task}'",
                              "pass --config RUN_DIR of the `fedctl train lora` run it came from")
        exp.task.init_adapter = str(target)  # the task loads it exactly (any rank ≤ lora_r)
    if base is not None:
        if not hasattr(exp.task, "model"):
            raise FedctlError(f"--base does not apply to task '{exp.run.task}'", "leave --base off")
        exp.task.model = base
    from fedctl.core.parallel import resolve_threads

    torch.set_num_threads(resolve_threads(exp.run.threads))
    ctx = TaskContext(num_clients=exp.federation.clients, seed=exp.run.seed,
                      device=resolve_device(device or exp.run.device), run_dir=RunDir(run_root),
                      log=lambda text: None)
    task = get_workload(exp.run.task).build(exp.task, ctx)
    model = task.build_model()
    keys = list(task.shared_keys(model))
    if state is not None:
        load_weights(model, state, target, required=keys)
    metrics = task.evaluate(model)
    samples = task.eval_samples(model)
    per_client = {cid: task.evaluate(model, cid) for cid in task.client_ids()} if clients else {}
    aggregate: dict[str, Any] = {}
    if per_client:
        how = exp.federation.evaluate_aggregation
        rows = list(per_client.values())
        counts = None
        if how == "weighted":
            counts = [int(task.eval_examples(cid)) for cid in per_client]
            for row, n in zip(rows, counts):
                row["num_examples"] = n
            rows = [{k: v for k, v in r.items() if k != "num_examples"} for r in rows]
        aggregate = {"aggregation": how, **({"num_examples": sum(counts)} if counts else {}),
                     **aggregate_metrics(rows, counts, how)}
    return EvalResult(str(target), kind, exp.run.task, server_round, metrics, per_client, aggregate, samples)
