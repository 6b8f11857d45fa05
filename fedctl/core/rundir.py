"""The run directory: the one object that knows its layout and makes every write into it.

    runs/<name>/
      config.yaml                     the resolved config
      metrics.jsonl                   one JSON object per round and per evaluation
      checkpoints/round_NNN.pt        model, strategy state, RNG states, round, config, metrics history
      checkpoints/best.pt             the same, for the round with the best validation metric (+ "best")
      deltas/server/round_NNN.safetensors, deltas/clients/round_NNN/<client>.safetensors
      adapters/round_NNN/{fused,clients/<client>}/      (LoRA workloads: peft adapters)
      final/hf/                       the workload's export
      plots/                          `fedctl inspect` figures and the JSON beside each
      tokenizer.json, demo_data/      what a workload makes once and reuses

Every file appears whole or not at all (temp file + rename). A writer holds the directory's lock for the
whole run, so two commands cannot interleave their writes; the lock is released when the process ends,
however it ends. Temp files left by a killed write are never taken for results and are cleared by the
next writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedctl.core import checkpoint as ckpt_io
from fedctl.core.aggregate import State
from fedctl.errors import FedctlError
from fedctl.utils.io import MARKER, atomic_path, dumps_json, write_text

_ROUND_FILE = re.compile(r"^round_(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp$")
LOCK_NAME = ".fedctl.lock"


class RunDir:
    """A run directory at `path` (created on first write)."""

    def __init__(self, path: str | os.PathLike, label: str = "run directory"):
        self.path = Path(path)
        self.label = label  # what the folder is called in messages ("attack folder")
        self._lock = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def export_dir(self) -> Path:
        """Where the workload's final model goes (`final/hf`)."""
        return self.path / "final" / "hf"

    @property
    def deltas_dir(self) -> Path:
        return self.path / "deltas"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def left_out_path(self) -> Path:
        """`left_out_utterances.json`: the utterances a speech task left out before training, and why."""
        return self.path / "left_out_utterances.json"

    @property
    def demo_data_dir(self) -> Path:
        return self.path / "demo_data"

    @property
    def best_path(self) -> Path:
        """`checkpoints/best.pt`: never a round checkpoint, so retention (`keep_checkpoints`) never deletes it."""
        return self.checkpoints_dir / "best.pt"

    def checkpoint_path(self, server_round: int) -> Path:
        return self.checkpoints_dir / f"round_{server_round:03d}.pt"

    def adapter_dir(self, server_round: int, client_id: str | None = None) -> Path:
        """`adapters/round_NNN/fused` (the server's) or `adapters/round_NNN/clients/<client_id>`."""
        base = self.path / "adapters" / f"round_{server_round:03d}"
        return base / "fused" if client_id is None else base / "clients" / client_id

    def delta_path(self, server_round: int, client_id: str | None = None) -> Path:
        if client_id is None:
            return self.deltas_dir / "server" / f"round_{server_round:03d}.safetensors"
        return self.deltas_dir / "clients" / f"round_{server_round:03d}" / f"{client_id}.safetensors"

    # -- the writer's lock ------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the directory's lock (an OS file lock: released when the process dies); a second writer is
        refused with the holder's PID. Clears temp files that a killed write left behind."""
        from filelock import FileLock, Timeout

        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        self.path.mkdir(parents=True, exist_ok=True)
        lock_file = self.path / LOCK_NAME
        lock = FileLock(str(lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use() from None
        pid_file = self.path / f"{LOCK_NAME}.pid"
        try:
            pid_file.write_text(f"{os.getpid()}\n")
            self.clear_temp()
            yield self
        finally:
            lock.release()
            if created and {p.name for p in self.path.iterdir()} <= {LOCK_NAME, pid_file.name}:
                # a run that wrote nothing (it failed before round 1) leaves no directory behind
                lock_file.unlink(missing_ok=True)
                pid_file.unlink(missing_ok=True)
                for folder in created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()

    # -- ownership: whose folder this is, and with which settings it was written ----------------------
    def owner(self) -> str | None:
        """The kind of fedctl output this folder holds by its marker (`utils.io.MARKER`): e.g. "attack";
        "" for a folder fedctl wrote without naming a kind (an export, demo data); None without a marker."""
        marker = self.path / MARKER
        if not marker.is_file():
            return None
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return ""
        return str(data.get("kind") or "") if isinstance(data, dict) else ""

    def check_owner(self, kind: str, legacy: Callable[[Path], bool] | None = None) -> None:
        """Refuse, touching nothing, a path that is not a new or empty folder or a folder of fedctl output of
        `kind` (`legacy(path)` true: one written by a fedctl from before the marker)."""
        path = self.path
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            raise FedctlError(f"--out {path} exists and is a {'symlink' if path.is_symlink() else 'file'}: "
                              "fedctl will not replace it", "choose another --out (a folder name that does not exist yet)")
        owner = self.owner()
        if owner == kind:
            return
        if owner is not None:
            what = f"fedctl {owner} output" if owner else "another fedctl output"
            raise FedctlError(f"--out {path} holds {what}, not a {kind} folder: fedctl will not write into it",
                              "choose another --out (a new folder name)")
        if not self._entries() or (legacy is not None and legacy(path)):
            return
        raise FedctlError(f"--out {path} is a folder fedctl did not write: fedctl will not write into it or "
                          "replace anything in it", "choose another --out (a new folder name), or empty that folder yourself")

    def claim(self, kind: str, settings: dict[str, Any], *, settings_name: str, volatile: Collection[str] = (),
              overwrite: bool = False, outputs: Collection[str] = (),
              legacy: Callable[[Path], bool] | None = None) -> dict[str, Any] | None:
        """Make this folder `kind`'s output with `settings` (call it inside `locked()`) and return the settings
        it already held, whose results may be resumed (None: a new folder, or one `overwrite` cleared).

        A folder that is not ours is refused (`check_owner`). One written with other settings (dotted keys
        outside `volatile` differ) is refused naming them, or with `overwrite` its `outputs` (glob patterns:
        fedctl's own files, never the user's) are removed first. The marker and the settings file
        (`settings_name`, JSON) are then written atomically."""
        self.check_owner(kind, legacy)
        settings_path = self.path / settings_name
        saved = None
        if settings_path.is_file():
            try:
                saved = json.loads(settings_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                saved = None
            if not isinstance(saved, dict):
                raise FedctlError(f"{settings_path} is not a fedctl {kind} settings file (damaged or edited)",
                                  f"choose another --out, or pass --overwrite to replace the {kind} results in it")
        if saved is not None:
            changed = [k for k in config_changes(saved, settings) if k not in volatile]
            if changed and not overwrite:
                shown = "; ".join(f"{k}: {_dotted(saved, k)!r} → {_dotted(settings, k)!r}" for k in changed[:8])
                raise FedctlError(
                    f"--out {self.path} holds {kind} results of other settings ({shown}"
                    f"{'; …' if len(changed) > 8 else ''}): resuming would mix them",
                    f"choose another --out for these settings, or pass --overwrite to replace the {kind} results in "
                    "it (only fedctl's own files are removed)")
            if changed:
                for pattern in outputs:
                    for p in self.path.glob(pattern):
                        if p.is_file() and not p.is_symlink():
                            p.unlink()
                saved = None
        self.mark(kind)
        write_text(settings_path, json.dumps(settings, default=str, indent=1) + "\n")
        return saved

    def mark(self, kind: str) -> Path:
        """Write the ownership marker: this folder holds fedctl output of `kind`."""
        return write_text(self.path / MARKER, json.dumps({"written_by": "fedctl", "kind": kind}) + "\n")

    def _entries(self) -> list[Path]:
        """What the folder holds besides fedctl's lock files and killed writes' temp files."""
        ours = {LOCK_NAME, f"{LOCK_NAME}.pid"}
        return [p for p in self.path.iterdir() if p.name not in ours and not _TEMP.match(p.name)]

    def check_unlocked(self) -> None:
        """Refuse now, as `locked()` would, when another process holds the lock (creates nothing): for a
        caller that reports what it is about to do ("resuming") before the writer takes the lock."""
        from filelock import FileLock, Timeout

        lock_file = self.path / LOCK_NAME
        if not lock_file.is_file():  # a holder has created it
            return
        lock = FileLock(str(lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use() from None
        lock.release()

    def _in_use(self) -> FedctlError:
        return FedctlError(
            f"{self.label} {self.path} is in use by another fedctl process (PID {self._holder()})",
            "wait for it to finish, stop it, or choose another --out"
            + (" / --set run.name=…" if self.label == "run directory" else ""),
        )

    def _holder(self) -> str:
        try:
            return (self.path / f"{LOCK_NAME}.pid").read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def clear_temp(self) -> list[Path]:
        """Remove `.NAME.*.tmp` leftovers of writes killed mid-way (only fedctl's own temp names)."""
        removed = []
        for folder in (self.path, self.checkpoints_dir):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.is_file() and _TEMP.match(p.name):
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed

    # -- config and metrics -------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> Path:
        from fedctl.core.config import dump_yaml

        return write_text(self.config_path, dump_yaml(config))

    def read_config(self) -> dict[str, Any]:
        from fedctl.core.config import load_yaml

        if not self.config_path.is_file():
            raise FedctlError(f"{self.path} has no config.yaml", "pass --out RUN_DIR of a run started by `fedctl train`")
        return load_yaml(self.config_path)

    def write_metrics(self, history: list[dict[str, Any]]) -> Path:
        return write_text(self.metrics_path, "".join(dumps_json(rec) + "\n" for rec in history))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl: one JSON object per line, `round` an integer where given; a damaged
        file is a FedctlError naming the line."""
        path = self.metrics_path
        if not path.is_file():
            raise FedctlError(f"{self.path} has no metrics.jsonl", "pass run directories written by `fedctl train`")
        damaged = "the file was edited or damaged; re-run, or resume the run to rewrite it"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FedctlError(f"{path} is not UTF-8 text (byte {exc.start})", damaged) from None
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise FedctlError(f"{path} is not valid JSON lines (line {number})", damaged) from None
            if not isinstance(record, dict):
                raise FedctlError(f"{path} line {number} is a JSON {type(record).__name__}, not an object", damaged)
            rnd = record.get("round")
            if rnd is not None and (not isinstance(rnd, int) or isinstance(rnd, bool)):
                raise FedctlError(f"{path} line {number}: 'round' = {rnd!r} is not an integer", damaged)
            records.append(record)
        return records

    # -- checkpoints --------------------------------------------------------------------------------
    def list_checkpoints(self) -> list[Path]:
        """Round checkpoints, oldest first; temp files of killed writes never count."""
        folder = self.checkpoints_dir
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ROUND_FILE.match(p.name)) and p.is_file()]
        return [p for _, p in sorted(found)]

    def has_checkpoints(self) -> bool:
        return bool(self.list_checkpoints())

    def latest_checkpoint(self) -> Path:
        ckpts = self.list_checkpoints()
        if not ckpts:
            raise FedctlError(
                f"no checkpoint to resume from in {self.checkpoints_dir}",
                "check --out points at an existing run, or start it without --resume",
            )
        return ckpts[-1]

    def save_checkpoint(self, server_round: int, payload: dict[str, Any], keep: int = 0) -> Path:
        """Write round `server_round`'s checkpoint atomically; with keep > 0, delete all but the newest `keep`."""
        path = ckpt_io.save_checkpoint(self.checkpoint_path(server_round), payload)
        if keep > 0:
            for old in self.list_checkpoints()[:-keep]:
                old.unlink(missing_ok=True)
                snapshot = old.with_name(old.stem.replace("round_", "client_state_"))
                if snapshot.is_dir():  # the client state that checkpoint referenced (fedctl.core.client_state)
                    shutil.rmtree(snapshot, ignore_errors=True)
        return path

    def client_state_snapshot(self, server_round: int) -> Path:
        """`checkpoints/client_state_NNN/`: the per-client state round NNN's checkpoint refers to."""
        return self.checkpoints_dir / f"client_state_{server_round:03d}"

    def save_best(self, payload: dict[str, Any]) -> Path:
        """Write `checkpoints/best.pt` atomically (replacing the previous best)."""
        return ckpt_io.save_checkpoint(self.best_path, payload)

    def load_checkpoint(self, path: Path | None = None) -> tuple[Path, dict[str, Any]]:
        path = path or self.latest_checkpoint()
        return path, ckpt_io.load_checkpoint(path)

    # -- deltas ---------------------------------------------------------------------------------------
    def save_delta(self, server_round: int, client_id: str | None, new: State, old: State,
                   meta: dict[str, Any]) -> Path:
        """new − old for every floating tensor, as safetensors (atomic): in float32, or float64 for a float64
        model (so that an attack can reproduce a client's update to float64 precision)."""
        import torch
        from safetensors.torch import save_file

        def full(t: torch.Tensor) -> torch.Tensor:
            return t if t.dtype == torch.float64 else t.float()

        delta = {k: (full(new[k]) - full(old[k])).contiguous().cpu() for k in new if new[k].is_floating_point()}
        path = self.delta_path(server_round, client_id)
        with atomic_path(path) as tmp:
            save_file(delta, str(tmp), metadata={k: str(v) for k, v in meta.items()})
        return path


def config_changes(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (nested dicts). A key the saved config
    lacks altogether is not a change: a newer fedctl added it with a default the old run could not set."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            if key not in saved and prefix.count(".") >= 1:  # a new key inside a section (task., federation., …)
                continue
            out += config_changes(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if isinstance(saved, float) and isinstance(current, (int, float)) and not isinstance(current, bool):
        return [] if float(current) == saved else [prefix.rstrip(".")]
    return [] if saved == current else [prefix.rstrip(".")]


def _dotted(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def check_resume(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path, checkpoint_round: int) -> None:
    """Refuse to resume unless `current` equals the checkpoint's resolved config except for a round count that
    leaves rounds to train (RunConfig keys that only choose where/how fast it runs may change)."""
    volatile = {"run.out", "run.threads", "run.workers", "run.device", "run.track", "federation.rounds"}
    changed = [k for k in config_changes(saved, current) if k not in volatile]
    if changed:
        raise FedctlError(
            f"config.yaml differs from the checkpoint {checkpoint} in {', '.join(changed)}; --resume continues the "
            "run as it was started",
            "restore those values in config.yaml (the checkpoint holds the original), or start a new run with --out",
        )
    rounds = int((current.get("federation") or {}).get("rounds", 0))
    if rounds <= checkpoint_round:
        raise FedctlError(
            f"the run already finished round {checkpoint_round} and --rounds is {rounds}: nothing left to train",
            f"pass a larger --rounds (e.g. --rounds {checkpoint_round + 10}) to train further",
        )

