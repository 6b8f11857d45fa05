"""`fedctl train <workload> --backend flower --federation NAME`: the same run, with clients on Flower SuperNodes.

It writes the Flower App for the resolved experiment into RUN_DIR/flower-app, submits it with
`flwr run APP NAME --stream` (NAME: a SuperLink connection `[superlink.NAME]` in Flower's config.toml,
$FLWR_HOME or ~/.flwr; a connection with `options.num-supernodes` is Flower's local simulation),
and renders the ServerApp's event lines (`fedctl-events = "json"`) with the same round table as a local
run. The run directory is written by the ServerApp where the SuperLink runs: on loopback or a shared
filesystem that is RUN_DIR here, exactly as a local run leaves it. `--resume` submits a new Flower run
that continues RUN_DIR from its newest checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import tomllib

from fedctl.core.events import RunFinished
from fedctl.errors import FedctlError


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def check_connection(name: str) -> dict:
    """The `[superlink.NAME]` table of Flower's config.toml, or a FedctlError saying how to add it."""
    path = flwr_home() / "config.toml"
    example = (f'add to {path}:\n  [superlink.{name}]\n  address = "HOST:9092"\n  root-certificates = "/path/ca.crt"'
               f"\n(or `options.num-supernodes = 4` for Flower's local simulation)")
    if not path.is_file():
        raise FedctlError(f"Flower has no connection '{name}': {path} does not exist", example)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise FedctlError(f"{path} is not readable TOML: {exc}", "fix or recreate Flower's config.toml") from exc
    table = (data.get("superlink") or {}).get(name)
    if not isinstance(table, dict):
        known = sorted(k for k, v in (data.get("superlink") or {}).items() if isinstance(v, dict))
        raise FedctlError(f"Flower has no connection '{name}' in {path} (it has: {', '.join(known) or 'none'})",
                          example)
    if table.get("insecure") is True:
        from fedctl.cli.console import warn

        warn(f"connection '{name}' is insecure: messages and weights travel unencrypted and nodes are not "
             "authenticated; use root-certificates (see `fedctl train flower-certs`)")
    return table


def _flwr() -> str:
    exe = Path(sys.executable).parent / "flwr"
    found = str(exe) if exe.exists() else shutil.which("flwr")
    if not found:
        raise FedctlError("the `flwr` command is not installed", "pip install 'fedctl[flower]'")
    return found


def _reason(lines: list[str]) -> str:
    """What flwr said went wrong: the text of its boxed `Error` panel, else the last log lines."""
    clean = [c for c in (re.sub(r"[│╭╮╰╯─]+", " ", line).strip() for line in lines) if c]
    for i, line in enumerate(clean):
        if line == "Error":
            return " ".join(clean[i + 1:i + 5])
    errors = [c for c in clean if c.startswith(("Error", "ERROR"))]
    return " ".join(errors[-2:] or clean[-3:])


def run_on_flower(exp, federation: str, *, resume: bool, on_event: Callable[[object], None],
                  timeout: float | None = None) -> Path:
    """Submit `exp` to the Flower connection `federation`, stream its events to `on_event`; the run dir."""
    from fedctl.flower.project import write_flower_app
    from fedctl.flower.server_app import parse_event_line
    from fedctl.run import recipe

    check_connection(federation)
    run_dir = recipe.run_dir_of(exp).resolve()
    app = write_flower_app(exp, run_dir / "flower-app")
    overrides = ['fedctl-events="json"'] + (["fedctl-resume=true"] if resume else [])
    cmd = [_flwr(), "run", str(app.app_dir), federation, "--stream", "-c", " ".join(overrides)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}  # no network call to PyPI
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    tail: deque[str] = deque(maxlen=40)
    finished = False
    run_id = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            event = parse_event_line(line)
            if event is None:
                tail.append(line)
                if run_id is None and (m := re.search(r"started run (\d+)", line)):
                    run_id = m.group(1)
                continue
            finished = finished or isinstance(event, RunFinished)
            on_event(event)
        rc = proc.wait(timeout=timeout)
    except KeyboardInterrupt:
        if run_id is not None:  # the run lives on the SuperLink: stop it there too
            subprocess.run([_flwr(), "stop", run_id, federation], env=env, capture_output=True, timeout=30)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if not finished:
        shown = _reason(list(tail))
        raise FedctlError(f"the Flower run on '{federation}' did not finish (flwr run exited {rc}): {shown[:600]}",
                          f"check the connection in {flwr_home() / 'config.toml'} and the SuperLink; "
                          f"the whole log: flwr log {run_id or 'RUN_ID'} {federation}")
    return run_dir
