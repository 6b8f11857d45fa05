"""Experiment trackers, opt-in and offline: `--track tensorboard|wandb|mlflow` or `run.track: [...]`.

A `Tracking` object is an event subscriber like the terminal renderer (the engine knows nothing of it): on
`RunStarted` it opens the trackers the run's resolved config names (`run.track` in `config.yaml`) inside the run
directory, on `RoundFinished` it logs every metrics record of the round (fit, global eval, per-client eval, DP ε,
resources: the same records as metrics.jsonl) with the round as step, on `RunFinished` the final global
evaluation as the summary. Each tracker stays on local disk:

    <run>/tensorboard/          TensorBoard event files (`tensorboard --logdir <run or sweep folder>`)
    <run>/wandb/                W&B offline run(s) (`wandb sync <run>/wandb/offline-run-*`); no login, no network
    <run>/mlflow.db             MLflow's SQLite store (the file store is refused by MLflow ≥ 3.7 unless opted in),
    <run>/mlartifacts/          its artifacts (`mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`)
    <run>/tracking.json         each tracker's run id and last logged step, so that a resumed run continues the
                                same tracker run and logs every step once

A sweep is one group: W&B `group`, one MLflow experiment (one store at the sweep's root), TensorBoard runs side
by side under the sweep's folder. Metric names: `fit/<key>`, `eval/<key>` (global), `eval/<client_id>/<key>`, `eval/clients/<key>`
(the clients' aggregate), `eval/personal/<client_id>/<key>` and `eval/personals/<key>`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

from fedctl.errors import FedctlError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name → package it needs
INSTALL = "pip install 'fedctl[tracking]'"
STATE_NAME = "tracking.json"
# what a sweep's folder holds besides its runs: its run record and the sweep's MLflow store
SWEEP_OWN = ("run.log", "meta.json", "mlflow.db", "mlartifacts")


def check(names: list[str] | None, key: str = "run.track") -> list[str]:
    """The tracker names, each known and importable; else a FedctlError naming it and the install command.
    Called when a config is validated, so a missing package stops the command before anything trains."""
    wanted: list[str] = []
    for item in names or []:
        for name in str(item).replace(",", " ").split():
            if name not in TRACKERS:
                raise FedctlError(f"{key}: '{name}' is not a tracker",
                                  f"use one or more of {', '.join(TRACKERS)} (e.g. --track tensorboard)")
            if name not in wanted:
                wanted.append(name)
    for name in wanted:
        try:
            importlib.import_module(TRACKERS[name])
        except ImportError:
            raise FedctlError(f"tracker '{name}' needs the Python package '{TRACKERS[name]}', which is not installed",
                              f"install the tracking extra: {INSTALL}") from None
    return wanted


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as {metric name: number}: finite numbers only (bools, strings, lists and nulls are
    not metrics), nested dicts joined with '/'."""
    if record.get("type") == "eval":
        scope, cid = record.get("scope", "global"), record.get("client_id")
        prefix = ("eval/" if scope == "global" else f"eval/{cid}/" if scope == "client"
                  else f"eval/{scope}/{cid}/" if cid is not None else f"eval/{scope}/")  # personal rows; aggregates
    else:
        prefix = f"{record.get('type') or 'fit'}/"
    out: dict[str, float] = {}

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{name}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = value

    for key, value in record.items():
        if key not in ("type", "scope", "client_id", "round"):
            walk(prefix + key, value)
    return out


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, state: dict, config: dict, run_name: str, group: str | None, start: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard drops whatever a killed invocation wrote after the last step tracking.json
        # records (it died between the write and the record); the steps up to it stay, each once
        after = int(state.get("last_step", 0)) + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=after if after > 1 else None,
                                    flush_secs=3600)
        state.setdefault("log_dir", "tensorboard")
        if start <= 1:
            from fedctl.core.config import dump_yaml

            self.writer.add_text("config", "```\n" + dump_yaml(config) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def summary(self, metrics: dict[str, float], step: int) -> None:
        self.log({f"final/{k.split('/', 1)[-1]}": v for k, v in metrics.items()}, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        import matplotlib.image

        pixels = matplotlib.image.imread(str(path))  # H×W×C floats in [0, 1]
        self.writer.add_image(tag, pixels[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, state: dict, config: dict, run_name: str, group: str | None, start: int):
        os.environ["WANDB_MODE"] = "offline"  # never the network, never a login prompt
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        state.setdefault("id", secrets.token_hex(6))  # the W&B run id a resumed run reuses
        settings = wandb.Settings(mode="offline", console="off", silent=True, disable_git=True, save_code=False,
                                  disable_job_creation=True, x_disable_stats=True, x_save_requirements=False)
        # console="off": no capture of the terminal (the renderer owns it); x_disable_stats: no sampler thread
        self.run = wandb.init(project=group or "fedctl", group=group, name=run_name, id=state["id"], resume="allow",
                              dir=str(run_dir), config=config, settings=settings, reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update({f"final/{k.split('/', 1)[-1]}": v for k, v in metrics.items()})

    def image(self, tag: str, path: Path, step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    name = "mlflow"

    def __init__(self, run_dir: Path, state: dict, config: dict, run_name: str, group: str | None, start: int,
                 store: Path | None = None):
        store = Path(store or run_dir).resolve()
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables…"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mlflow.tracking import MlflowClient

            # the store's place relative to the run folder: a moved run (or sweep) folder still finds its store
            store = (run_dir / state.setdefault("store", os.path.relpath(store, run_dir.resolve()))).resolve()
            self.client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
            if "run_id" not in state:
                experiment = group or run_name
                found = self.client.get_experiment_by_name(experiment)
                exp_id = found.experiment_id if found is not None else self.client.create_experiment(
                    experiment, artifact_location=(store / "mlartifacts").as_uri())
                run = self.client.create_run(exp_id, run_name=run_name, tags={"fedctl.group": group or ""})
                state.update(experiment_id=exp_id, run_id=run.info.run_id)
                from mlflow.entities import Param

                params = [Param(k, v[:6000]) for k, v in _flat_config(config).items()]
                for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                    self.client.log_batch(state["run_id"], params=params[i:i + 100])
            else:
                self.client.update_run(state["run_id"], status="RUNNING")
        self.run_id = state["run_id"]

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def summary(self, metrics: dict[str, float], step: int) -> None:
        self.log({f"final/{k.split('/', 1)[-1]}": v for k, v in metrics.items()}, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


def _read_state(run_dir: Path) -> dict[str, Any]:
    import json

    with contextlib.suppress(OSError, ValueError):
        data = json.loads((run_dir / STATE_NAME).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


class RunTrackers:
    """The trackers of one run directory, opened from its resolved config; remembers each one's last step."""

    def __init__(self, run_dir: Path, names: list[str], config: dict[str, Any], *, group: str | None = None,
                 store: Path | None = None, start: int = 1):
        self.run_dir = Path(run_dir)
        self.state = _read_state(self.run_dir)
        self.backends: list[Any] = []
        run_name = str((config.get("run") or {}).get("name") or self.run_dir.name)
        for name in names:
            mine = self.state.setdefault(name, {})
            args = (self.run_dir, mine, config, run_name, group, start)
            try:
                backend = _MLflow(*args, store=store) if name == "mlflow" else _BACKENDS[name](*args)
            except Exception as exc:  # noqa: BLE001 (any library's failure to start is reported the same way)
                self.close()
                if os.environ.get("FEDCTL_DEBUG"):
                    raise
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise FedctlError(f"tracker '{name}' could not start in {self.run_dir}: {detail}",
                                  f"check the run folder is writable, or drop '{name}' from --track / run.track "
                                  "(resume with --resume to continue)") from None
            self.backends.append(backend)
        self.save()

    def save(self) -> None:
        from fedctl.utils.io import write_json

        write_json(self.run_dir / STATE_NAME, self.state)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log `metrics` at `step` in every tracker that has not logged this step yet. A resumed run repeats the
        rounds after its newest checkpoint: every tracker keeps the first logging of such a round (the same
        model numbers: resume is exact; its wall-clock ones, seconds and rates, are the first execution's)."""
        changed = False
        for backend in self.backends:
            mine = self.state[backend.name]
            if step > int(mine.get("last_step", 0)) and metrics:
                backend.log(metrics, step)
                mine["last_step"] = step
                changed = True
        if changed:
            self.save()

    def summary(self, metrics: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.summary(metrics, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        for backend in self.backends:
            backend.image(tag, path, step)

    def close(self) -> None:
        for backend in self.backends:
            with contextlib.suppress(Exception):
                backend.close()
        self.backends = []


class Tracking:
    """Event subscriber: opens a run's trackers on RunStarted, logs each round, closes on RunFinished or at the
    end of the `with` block. `group`: a sweep's name (its runs form one W&B group / MLflow experiment, in one
    MLflow store at `store`)."""

    def __init__(self, group: str | None = None, store: Path | None = None):
        self.group, self.store = group, store
        self.current: RunTrackers | None = None
        self.final: dict[str, float] = {}
        self.last_round = 0

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def __call__(self, event: object) -> None:
        from fedctl.core.events import RoundFinished, RunFinished, RunStarted

        if isinstance(event, RunStarted):
            self.close()
            if event.run_dir is None:
                return
            from fedctl.core.config import load_yaml

            run_dir = Path(event.run_dir)
            config = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
            names = check((config.get("run") or {}).get("track"))
            if names:
                self.current = RunTrackers(run_dir, names, config, group=self.group, store=self.store,
                                           start=event.start_round)
            self.final = {}
        elif isinstance(event, RoundFinished) and self.current is not None:
            records = getattr(event, "records", None) or [{"type": "fit", **event.metrics}]
            metrics: dict[str, float] = {}
            for rec in records:
                metrics.update(flat_metrics(rec))
                if rec.get("type") == "eval" and rec.get("scope", "global") == "global":
                    self.final = flat_metrics(rec)
            self.last_round = event.server_round
            self.current.log(metrics, event.server_round)
        elif isinstance(event, RunFinished) and self.current is not None:
            if self.final:
                self.current.summary(self.final, event.rounds_done)
            self.close()


def fan_out(*subscribers: Any):
    """One event sink that calls each subscriber in turn (the renderer first: the terminal shows a round before
    the trackers spend time on it)."""
    def emit(event: object) -> None:
        for subscriber in subscribers:
            subscriber(event)
    return emit

