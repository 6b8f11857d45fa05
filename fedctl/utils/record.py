"""The run record every folder fedctl writes carries: `run.log` and `meta.json`.

    run.log     what the terminal showed (rows, warnings, errors, the final line), plain text, appended on
                resume, one `== fedctl …` header line per invocation
    meta.json   {"invocations": [...]}: per invocation the fedctl version (and git commit/dirty when it runs
                from a checkout), the versions of python/torch/transformers/peft/flwr actually imported, host,
                CPU, GPU when used, the exact command line, start and end time and exit status

One process-wide `Record` is begun by the CLI (`begin`), fed every line the consoles print (`write`), and
attached to the folders the command writes (`attach`): a run directory when its run starts, a sweep's root,
an attack or data folder. `finish` writes each attached folder's end time and exit status. The entry is written
atomically when the folder is attached (end and status null) and again at the end, so a killed command leaves
an entry that says it never finished. Library calls without `begin` record nothing.

No typer or rich here: the engine's layers may call `attach` (a no-op when no record is active).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "run.log"
META_NAME = "meta.json"
RECORD_NAMES = (LOG_NAME, META_NAME)
LIBRARIES = ("torch", "transformers", "peft", "flwr")
_GIT_TIMEOUT = 2.0  # seconds: a hung git (network file system, lock) must not delay the run


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def library_versions() -> dict[str, Any]:
    """{name: version} of python and LIBRARIES: the imported module's `__version__` where the module is loaded
    (what ran), else the installed distribution's version; `imported` lists the loaded ones, None = absent."""
    out: dict[str, Any] = {"python": platform.python_version()}
    imported = []
    for name in LIBRARIES:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is not None:
            imported.append(name)
        else:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = None
        out[name] = str(version) if version is not None else None
    out["imported"] = imported
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def fedctl_source() -> dict[str, Any]:
    """fedctl's version, and its git commit and dirtiness when it runs from a checkout (else null)."""
    from fedctl import __version__

    root = Path(__file__).resolve().parent.parent.parent
    commit = dirty = None
    if (root / ".git").exists():  # a checkout (a worktree has a .git file); an installed wheel has none
        commit = _git(["rev-parse", "HEAD"], root)
        status = _git(["status", "--porcelain", "--untracked-files=no"], root) if commit else None
        dirty = bool(status) if status is not None else None
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty}


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable}


def gpu() -> dict[str, Any] | None:
    """Name and driver of the GPU when this process used CUDA (torch initialised it), else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    index = torch.cuda.current_device()
    driver = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"-i={index}"],
                              capture_output=True, text=True, timeout=_GIT_TIMEOUT)
        driver = done.stdout.strip() or None if done.returncode == 0 else None
    return {"name": torch.cuda.get_device_name(index), "driver": driver, "cuda": torch.version.cuda}


class Record:
    """One command invocation's record, written into every folder attached to it."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)
        self.started = _now()
        self.id = uuid.uuid4().hex  # this invocation's entry in meta.json (two may start in the same second)
        self.backlog: list[str] = []  # lines since the command began, or since the last `run` folder detached
        self.logs: dict[Path, TextIO] = {}  # attached folder → its run.log, open for appending
        self.scopes: dict[Path, str] = {}
        self._static: dict[str, Any] | None = None

    # -- what the terminal showed ----------------------------------------------------------------------
    def write(self, text: str) -> None:
        """Append printed text (plain, may hold several lines) to every attached run.log."""
        if not text:
            return
        self.backlog.append(text)
        for handle in self.logs.values():
            with contextlib.suppress(OSError, ValueError):  # a full disk must not stop the run it records
                handle.write(text)
                handle.flush()

    # -- folders -----------------------------------------------------------------------------------------
    def attach(self, folder: str | os.PathLike, scope: str = "command") -> None:
        """Record into `folder` from now on, starting with what was printed before. scope "run": one run of a
        command that trains several (a sweep's cells) — attaching another "run" finishes the previous one;
        scope "command": a folder for the whole command (a sweep's root, an attack or data folder)."""
        folder = Path(folder)
        if folder in self.logs:
            return
        if scope == "run":
            for other in [f for f, s in self.scopes.items() if s == "run"]:
                self.detach(other, 0)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115 (kept open until detach)
            handle.write(f"== {' '.join(self.argv)}  [{self.started}]\n" + "".join(self.backlog))
            handle.flush()
        except OSError:
            return  # the folder cannot take a log: the command's own writes will report it
        self.logs[folder], self.scopes[folder] = handle, scope
        self._write_meta(folder, None, None)

    def detach(self, folder: Path, status: int | None) -> None:
        handle = self.logs.pop(folder, None)
        scope = self.scopes.pop(folder, None)
        if handle is None:
            return
        with contextlib.suppress(OSError, ValueError):
            handle.close()
        if scope == "run":
            self.backlog = []  # the next run's log starts with its own lines
        if folder.is_dir():  # a run that wrote nothing removes its folder
            self._write_meta(folder, _now(), status)

    def finish(self, status: int) -> None:
        for folder in list(self.logs):
            self.detach(folder, status)

    # -- meta.json ---------------------------------------------------------------------------------------
    def entry(self, ended: str | None, status: int | None) -> dict[str, Any]:
        if self._static is None:
            self._static = {"fedctl": fedctl_source(), "machine": machine()}
        return {"invocation": self.id, "command": self.argv, "cwd": os.getcwd(), "pid": os.getpid(), "started": self.started, "ended": ended,
                "exit_status": status, **self._static, "versions": library_versions(), "gpu": gpu()}

    def _write_meta(self, folder: Path, ended: str | None, status: int | None) -> None:
        from fedctl.utils.io import dumps_json, write_text

        path = folder / META_NAME
        invocations: list[Any] = []
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            invocations = list(json.loads(path.read_text(encoding="utf-8"))["invocations"])
        entry = self.entry(ended, status)
        last = invocations[-1] if invocations and isinstance(invocations[-1], dict) else {}
        if last.get("invocation") == self.id:
            invocations[-1] = entry  # this invocation's own entry, now finished
        else:
            invocations.append(entry)
        with contextlib.suppress(Exception):  # the record never turns a finished run into a failure
            write_text(path, dumps_json({"invocations": invocations}, indent=2) + "\n")


_current: Record | None = None


def begin(argv: list[str]) -> Record:
    global _current
    _current = Record(argv)
    return _current


def current() -> Record | None:
    return _current


def attach(folder: str | os.PathLike, scope: str = "command") -> None:
    """Attach `folder` to the active record (no-op outside a CLI command)."""
    if _current is not None:
        _current.attach(folder, scope)


def end(status: int) -> None:
    global _current
    if _current is not None:
        _current.finish(status)
    _current = None
