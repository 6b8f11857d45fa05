"""`fedctl train flower-node`: one Flower SuperNode for one client host, with a long-running ClientApp.

Starts two processes and supervises them until Ctrl-C / SIGTERM or until one of them exits:
  1. flwr 1.41's SuperNode (`flower-supernode --isolation process ...`, run through
     fedctl.flower.latency so its hard-coded 3 s polls and 1 s pull back-offs are shortened);
  2. fedctl's warm executor (fedctl.flower.warm) on the SuperNode's Runtime API, which trains every
     message of a run in one process with the task built once.
`cold=True` runs flwr's stock SuperNode instead (`--isolation subprocess`: a fresh ClientApp process per
message), for comparison. Both processes get their own session and are always stopped together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedctl.errors import FedctlError


@dataclass
class NodeSpec:
    superlink: str  # HOST:PORT of the SuperLink's Fleet API
    partition_id: int | None = None
    num_partitions: int | None = None
    node_sets: list[str] = field(default_factory=list)  # fedctl --set overrides for this node only
    root_certificates: Path | None = None  # CA of the SuperLink's TLS certificate
    auth_key: Path | None = None  # this node's private key (SuperNode authentication)
    insecure: bool = False
    port: int = 9094  # the SuperNode's Runtime API (127.0.0.1)
    connect_timeout: float = 60.0  # give up when the SuperLink cannot be reached for this long
    cold: bool = False

    def check(self) -> None:
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise FedctlError(f"--superlink '{self.superlink}' is not HOST:PORT", "e.g. --superlink 10.0.0.5:9092")
        if not 1 <= self.port <= 65535:
            raise FedctlError(f"--port {self.port} is not a TCP port", "use a free port in 1-65535, e.g. 9094")
        if self.insecure and (self.root_certificates or self.auth_key):
            raise FedctlError("--insecure cannot be combined with --root-certificates/--auth-key",
                              "drop --insecure to use TLS")
        if not self.insecure and self.root_certificates is None:
            raise FedctlError("a SuperNode needs the SuperLink's CA certificate (or an explicit --insecure)",
                              "pass --root-certificates ca.crt (made by `fedctl train flower-certs`)")
        for flag, path in (("--root-certificates", self.root_certificates), ("--auth-key", self.auth_key)):
            if path is not None and not Path(path).is_file():
                raise FedctlError(f"{flag} {path} does not exist", f"give the path of the file ({flag})")
        if (self.partition_id is None) != (self.num_partitions is None):
            raise FedctlError("--partition-id and --num-partitions go together",
                              "pass both (this node trains client PARTITION_ID of NUM_PARTITIONS), or neither")
        if self.partition_id is not None and not 0 <= self.partition_id < self.num_partitions:
            raise FedctlError(f"--partition-id {self.partition_id} is outside 0..{self.num_partitions - 1}",
                              "partition ids count from 0 to --num-partitions minus 1")
        for item in self.node_sets:
            if "=" not in item or '"' in item:
                raise FedctlError(f"--set '{item}' is not KEY=VALUE (without double quotes)",
                                  "e.g. --set task.data=/srv/my_corpus")

    def node_config(self) -> str:
        parts = []
        if self.partition_id is not None:
            parts += [f"partition-id={self.partition_id}", f"num-partitions={self.num_partitions}"]
        if self.node_sets:
            parts.append('fedctl-set="' + " ".join(self.node_sets) + '"')
        return " ".join(parts)

    def supernode_command(self) -> list[str]:
        if self.cold:
            cmd = [str(Path(sys.executable).parent / "flower-supernode")]
        else:
            cmd = [sys.executable, "-m", "fedctl.flower.latency", "--isolation", "process"]
        cmd += ["--superlink", self.superlink, "--port", str(self.port), "--max-wait-time", str(self.connect_timeout)]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.root_certificates)]
        if self.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.auth_key)]
        if self.node_config():
            cmd += ["--node-config", self.node_config()]
        return cmd

    def executor_command(self, supernode_pid: int) -> list[str]:
        # the Runtime API is loopback-only and plain HTTP (flwr's default for a SuperNode without --ssl-*)
        return [sys.executable, "-m", "fedctl.flower.warm", "--runtime-api-address", f"127.0.0.1:{self.port}",
                "--insecure", "--parent-pid", str(supernode_pid)]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, seconds: float) -> None:
    """Until something listens on 127.0.0.1:`port`; TimeoutError after `seconds`."""
    deadline = time.monotonic() + seconds
    while not _port_open(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process group, then SIGKILL what is still alive after 10 s."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _why(path: Path) -> str:
    """The reason a flwr process gave up: its `Exit Code` block (flwr prints one), else its last lines."""
    import re

    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
    except OSError:
        return "no log"
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    for i, line in enumerate(lines):
        if "Exit Code:" in line:
            code = line.split("Exit Code:")[1].strip()
            block = [t for t in lines[i + 1:i + 5] if not t.startswith(("For more information", "INFO"))]
            return f"flwr exit code {code}: " + " ".join(block)
    return " | ".join(lines[-3:])


class Node:
    """The running SuperNode (+ executor) of a NodeSpec; a context manager that always stops both."""

    def __init__(self, spec: NodeSpec, log_dir: Path, env: dict[str, str] | None = None) -> None:
        spec.check()
        self.spec = spec
        self.log_dir = Path(log_dir)
        self.env = {**os.environ, **(env or {})}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # no network call to PyPI at start-up
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, ready_timeout: float = 60.0) -> Node:
        if _port_open(self.spec.port):
            raise FedctlError(f"port {self.spec.port} on 127.0.0.1 is already in use",
                              "pick another --port for this SuperNode's Runtime API")
        supernode = self._start("supernode", self.spec.supernode_command())
        deadline = time.monotonic() + ready_timeout
        while not _port_open(self.spec.port):
            if supernode.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise FedctlError(f"the SuperNode did not start: {_why(self.log_dir / 'supernode.log')}",
                                  f"see {self.log_dir / 'supernode.log'}")
            time.sleep(0.1)
        if not self.spec.cold:
            self._start("executor", self.spec.executor_command(supernode.pid))
        return self

    def wait(self) -> None:
        """Until one process exits (then stop the other and say why) or Ctrl-C (then stop both)."""
        try:
            while all(p.poll() is None for p in self.procs):
                time.sleep(0.5)
        finally:
            self.stop()
        names = ["supernode", "executor"]
        for name, p in zip(names, self.procs):
            if p.returncode not in (0, -signal.SIGTERM):
                raise FedctlError(f"the {name} exited with {p.returncode}: {_why(self.log_dir / f'{name}.log')}",
                                  f"see {self.log_dir / f'{name}.log'}; an unreachable SuperLink or a wrong "
                                  "CA gives up after --connect-timeout seconds")

    def stop(self) -> None:
        _stop(self.procs)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
