"""Atomic file writes: every file fedctl writes appears whole or not at all, with the modes the user's
umask asks for, and never in place of something fedctl did not write."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedctl.errors import FedctlError

# Every folder fedctl writes with `atomic_dir` holds this small file: it is how fedctl tells its own
# outputs (which `--overwrite` may replace) from the user's (which it never replaces or moves).
MARKER = ".fedctl-output"

_UMASK_LOCK = threading.Lock()
# errnos that mean "this disk or folder cannot take the write": reported as Error/Hint, not a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                 errno.EISDIR, errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG}


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, hence the lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def os_error(exc: OSError, path: str | os.PathLike | None = None, doing: str = "write") -> FedctlError:
    """An OSError as a user-facing error that names the path and what to do about it."""
    where = exc.filename or path
    reason = exc.strerror or str(exc) or type(exc).__name__
    hints = {
        errno.ENOSPC: "free space on that disk (or pass an --out on another disk); finished files were kept",
        errno.EDQUOT: "your disk quota is used up: free space or pass an --out elsewhere",
        errno.EACCES: "you lack permission there: fix the folder's permissions or choose another --out",
        errno.EPERM: "you lack permission there: fix the folder's permissions or choose another --out",
        errno.EROFS: "that file system is read-only: choose an --out on a writable disk",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another --out",
        errno.EISDIR: "a folder stands where a file is needed: choose another path",
        errno.EEXIST: "something already exists there: choose another path",
        errno.ENOENT: "check the path exists",
        errno.ENAMETOOLONG: "use a shorter path",
    }
    return FedctlError(f"cannot {doing} {where}: {reason}", hints.get(exc.errno, "check the path, free space and permissions"))


def _first_existing(path: Path) -> Path:
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def make_parents(path: str | os.PathLike) -> None:
    """Create the folders above `path`; a file in the way is a FedctlError naming it."""
    parent = Path(path).parent
    existing = _first_existing(parent)
    if os.path.lexists(existing) and not existing.is_dir():
        raise FedctlError(
            f"cannot write {path}: {existing} is a file, not a folder",
            "choose an output path whose parent folders are folders (or move that file away)",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, parent, "create folder") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The file gets the mode a plain `open(path, "w")` would (0666 & ~umask), not mkstemp's 0600:
    colleagues on a shared machine must be able to read results. A full disk or a folder that
    cannot be written is a FedctlError naming the path; whatever was at `path` stays as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise FedctlError(f"cannot write file {path}: it is a folder", "choose another output file name")
    make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
    except OSError as exc:
        raise os_error(exc, path) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # again after the block: a writer may have replaced the file with its own mode (safetensors
            # writes 0600 whatever the umask)
            os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, path)
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS:
                raise os_error(exc, path) from None
            raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by None, in dicts, lists and tuples: JSON has no
    NaN, and Python's json.dumps would write a bare `NaN` that other JSON readers refuse. fedctl's convention:
    null in a metrics file means the value was not finite (or not measured)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of `obj` (non-finite floats → null, see json_safe)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, dumps_json(obj, indent=indent, sort_keys=False) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write (full disk) as RuntimeError
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise FedctlError(
                f"cannot write {path} ({detail})",
                "check free disk space and write permission there; the previous files were kept",
            ) from None
    return Path(path)


def is_fedctl_output(path: str | os.PathLike) -> bool:
    """True for a folder fedctl wrote (it holds the MARKER file)."""
    return (Path(path) / MARKER).is_file()


def check_not_input(out: str | os.PathLike, inputs: list[str | os.PathLike], what: str = "--out") -> None:
    """Refuse an output that is, or contains, one of the command's inputs (writing it would destroy them)."""
    target = Path(out).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == target or target in source.parents:
            raise FedctlError(
                f"{what} {out} would replace the input {item}",
                f"choose an {what} that is not one of the inputs (nor a folder holding them)",
            )


def check_out_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to replace anything fedctl did not write: a file, a symlink, a non-empty folder without
    fedctl's marker; a folder fedctl wrote only with `overwrite`. Call before doing the work."""
    path = Path(path)
    make_parents(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise FedctlError(
            f"--out {path} exists and is a {'symlink' if path.is_symlink() else 'file'}: fedctl will not replace it",
            "choose another --out (an output folder name that does not exist yet)",
        )
    try:
        empty = not any(path.iterdir())
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    if empty:
        return
    if not is_fedctl_output(path):
        raise FedctlError(
            f"--out {path} is a folder fedctl did not write: fedctl will not replace or move it",
            "choose another --out (a new folder name), or empty that folder yourself",
        )
    if not overwrite:
        raise FedctlError(
            f"--out {path} already holds fedctl output",
            "pass --overwrite to replace it, or choose another --out",
        )


def umask_modes(root: Path) -> None:
    """Give every file under `root` 0666 & ~umask and every folder 0777 & ~umask, the modes plain open() and
    mkdir() give: libraries that write private files (safetensors writes 0600 whatever the umask, and
    so save_pretrained) must not make results unreadable to colleagues on a shared machine."""
    mask = current_umask()
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            full = os.path.join(folder, name)
            if not os.path.islink(full):
                os.chmod(full, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it into place only if the block succeeds.

    The folder is marked as fedctl's (MARKER). What is already at `path` is replaced only when it is an
    empty folder or a folder fedctl wrote and `overwrite` is true; anything else is a FedctlError, and
    the user's file or folder stays untouched (never moved aside). Modes follow the umask.
    """
    path = Path(path)
    check_out_dir(path, overwrite=overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"written_by": "fedctl"}) + "\n")
            umask_modes(tmp)
            if os.path.lexists(path):
                check_out_dir(path, overwrite=overwrite)  # it may have appeared while we worked
                old = path.with_name(f".{path.name}.{os.getpid()}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS:
                raise os_error(exc, path) from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file without unpickling code (weights_only=True); a damaged file is a FedctlError."""
    path = Path(path)
    if not path.is_file():
        raise FedctlError(f"{what} not found: {path}", "check the path; `ls` the run's checkpoints/ folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt zips
        detail = str(exc).splitlines()[0].split(". ")[0][:100] if str(exc) else type(exc).__name__
        raise FedctlError(
            f"{what} {path} is unreadable or truncated ({detail})",
            "use an earlier checkpoint or re-run; fedctl writes checkpoints atomically, so this file was damaged afterwards",
        ) from None
