"""A whole Flower deployment on 127.0.0.1, for tests, checks and benchmarks: `LoopbackFederation`.

    with LoopbackFederation(tmp_path, nodes=2) as fed:          # TLS + SuperNode authentication
        returncode, output = fed.run_app(app_dir, timeout=240)
    print(fed.timings)                                           # seconds per step

What `start()` does, with the real flwr 1.41 commands (nothing is simulated):
  1. certificates and node keys (fedctl.flower.security) when `tls` or `auth`;
  2. `flower-superlink` on a free port (Fleet, Control and Runtime HTTP APIs on one port), TLS flags,
     `--enable-supernode-auth`, in-memory state (no `--database`), no runtime dependency installation;
  3. `flwr supernode register KEY.pub CONNECTION` for every node (in parallel; FLWR_HOME = workdir/flwr-home);
  4. one `flower-supernode` per node, each with its own runtime API port and node config, and next to
     each the `node_companion` command if one is given (e.g. a long-running ClientApp executor for
     `isolation="process"`).

Every process runs in its own session with its output in workdir/logs/NAME.log, and carries the
environment variable FEDCTL_LOOPBACK=<id>, inherited by everything it starts (flwr detaches its
SuperExec and app processes into sessions of their own). `stop()` (also on `__exit__`, pass or fail)
sends SIGTERM to each process group and to every descendant, waits, SIGKILLs what is left, and
finally sweeps any process that still carries the marker: nothing outlives the federation.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fedctl.errors import FedctlError
from fedctl.flower.security import FlowerCerts, connection_toml, load_certs, make_certs

CONNECTION = "fedctl-loopback"
MARKER = "FEDCTL_LOOPBACK"

# (node index, the SuperNode's runtime API address "127.0.0.1:PORT", environment) -> a command or None
NodeCompanion = Callable[[int, str, dict[str, str]], list[str] | None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """One process this federation started."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _warm_executor(node: int, runtime_api_address: str, env: dict[str, str]) -> list[str]:
    """fedctl's long-running ClientApp executor for one warm SuperNode (it waits for the node's API)."""
    return [sys.executable, "-m", "fedctl.flower.warm", "--runtime-api-address", runtime_api_address, "--insecure"]


class LoopbackFederation:
    """flower-superlink + N flower-supernode on 127.0.0.1, secured like a real deployment (see module doc).

    workdir        folder for certs/, flwr-home/, logs/ (created; certs are never overwritten)
    nodes          SuperNodes started by start(); node k gets 'partition-id=k num-partitions=N'
    tls, auth      HTTPS with a fresh CA; --enable-supernode-auth with one registered key per node
    node_configs   one --node-config string per node instead of the default
    isolation      the SuperNodes' --isolation: "subprocess" (a fresh ClientApp process per message)
                   or "process" (the ClientApp runs in a long-lived process: see node_companion)
    node_companion callable giving the extra command to start next to node k (or None)
    warm           nodes as `fedctl train flower-node` runs them: flwr's SuperNode with fedctl's shortened
                   waits (fedctl.flower.latency), --isolation process, and fedctl's warm ClientApp
                   executor (fedctl.flower.warm) as each node's companion
    env            extra environment variables for every process
    ready_timeout  seconds to wait for the SuperLink's port and for each registration
    """

    def __init__(self, workdir: str | os.PathLike, nodes: int = 2, *, tls: bool = True, auth: bool = True,
                 node_configs: list[str] | None = None, isolation: str = "subprocess",
                 node_companion: NodeCompanion | None = None, warm: bool = False,
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0):
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        if node_configs is not None and len(node_configs) != nodes:
            raise ValueError(f"{len(node_configs)} node_configs for {nodes} nodes")
        if isolation not in ("subprocess", "process"):
            raise ValueError(f"isolation must be 'subprocess' or 'process', got {isolation!r}")
        if warm:
            if node_companion is not None:
                raise ValueError("warm nodes bring their own companion (the warm executor)")
            isolation, node_companion = "process", _warm_executor
        self.warm = warm
        self.workdir = Path(workdir).absolute()
        self.nodes, self.tls, self.auth = nodes, tls, auth
        self.node_configs = node_configs or [f"partition-id={k} num-partitions={nodes}" for k in range(nodes)]
        self.isolation, self.node_companion, self.ready_timeout = isolation, node_companion, ready_timeout
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.flwr_home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.certs: FlowerCerts | None = None
        self.marker = uuid.uuid4().hex
        bindir = str(Path(sys.executable).parent)  # flower-superlink starts `flower-superexec` from PATH
        self.env = {**os.environ, **(env or {}), MARKER: self.marker,
                    "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
        self.bindir = Path(bindir)
        self.superlink: Service | None = None
        self.supernodes: list[Service] = []
        self.companions: list[Service] = []
        self.services: list[Service] = []
        self.timings: dict[str, float] = {}  # seconds: certs, superlink, register, supernodes, run, stop

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> LoopbackFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LoopbackFederation:
        """Certificates, SuperLink, registrations, SuperNodes (+ companions). Raises FedctlError with the
        log's last lines when a step fails or exceeds `ready_timeout`."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with self._timed("certs"):
            if self.tls or self.auth:
                certs_dir = self.workdir / "certs"
                self.certs = (load_certs(certs_dir, self.nodes) if (certs_dir / "certs.json").exists()
                              else make_certs(certs_dir, max(self.nodes, 1)))
            self._write_flwr_home()
        with self._timed("superlink"):
            self.superlink = self._spawn("superlink", self.superlink_command())
            self._wait_listening(self.superlink, self.port)
        with self._timed("register"):
            if self.auth:
                self.register([self.certs.node_public_key(k) for k in range(self.nodes)])
        with self._timed("supernodes"):
            for k in range(self.nodes):
                key = self.certs.node_key(k) if self.auth else None
                self.add_node(self.node_configs[k], name=f"supernode-{k}", auth_key=key, companion_index=k)
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this federation started, and everything they started: SIGTERM to each
        process group and descendant, `grace` seconds to exit, then SIGKILL. Safe to call twice."""
        t0 = time.monotonic()
        self._terminate([s.pid for s in self.services], grace)  # all at once: the whole stop takes one grace period
        for service in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.popen.wait(timeout=1.0)  # reap: no zombies left behind
        self._terminate([p.pid for p in self.survivors()], grace)
        self.timings["stop"] = time.monotonic() - t0

    def stop_service(self, service: Service, grace: float = 10.0) -> int | None:
        """Stop one process (and its descendants) now, e.g. the SuperLink to test an unreachable link."""
        self._terminate([service.pid], grace)
        return service.wait(1.0)

    def survivors(self) -> list[psutil.Process]:
        """Processes still alive that this federation started, directly or not (they carry its marker)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == self.marker:
                    found.append(proc)
        return found

    # ---- commands --------------------------------------------------------------------------------------------

    def superlink_command(self) -> list[str]:
        cmd = [str(self.bindir / "flower-superlink"), "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        cmd += self.certs.superlink_flags(auth=False) if self.tls else ["--insecure"]
        return cmd + (["--enable-supernode-auth"] if self.auth else [])

    def supernode_command(self, node_config: str, port: int, *, auth_key: Path | None,
                          root_certificates: Path | None = None, max_wait_time: float | None = None) -> list[str]:
        exe = [sys.executable, "-m", "fedctl.flower.latency"] if self.warm else [str(self.bindir / "flower-supernode")]
        cmd = [*exe, "--superlink", self.address, "--port", str(port), "--node-config", node_config,
               "--isolation", self.isolation]
        if self.tls:
            cmd += ["--root-certificates", str(root_certificates or self.certs.ca_cert)]
        else:
            cmd += ["--insecure"]
        if auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(auth_key)]
        if max_wait_time is not None:
            cmd += ["--max-wait-time", str(max_wait_time)]
        return cmd

    def add_node(self, node_config: str, *, name: str | None = None, auth_key: Path | None = None,
                 root_certificates: Path | None = None, max_wait_time: float | None = None,
                 companion_index: int | None = None) -> Service:
        """Start one more flower-supernode (not registered here: call `register` for its key first).
        `root_certificates`: another CA than the federation's; `max_wait_time`: seconds it keeps
        retrying an unreachable SuperLink before exiting (flwr's default: forever)."""
        port = free_port()
        name = name or f"node-{len(self.services)}"
        node = self._spawn(name, self.supernode_command(node_config, port, auth_key=auth_key,
                                                        root_certificates=root_certificates,
                                                        max_wait_time=max_wait_time))
        self.supernodes.append(node)
        if companion_index is not None and self.node_companion is not None:
            extra = self.node_companion(companion_index, f"127.0.0.1:{port}", dict(self.env))
            if extra:
                self.companions.append(self._spawn(f"{name}-companion", list(extra)))
        return node

    def register(self, public_keys: list[Path]) -> list[int]:
        """`flwr supernode register` each key (all at once); returns the node IDs the SuperLink gave."""
        procs = [subprocess.Popen(self.flwr("supernode", "register", str(key), CONNECTION, "--format", "json"),
                                  env=self._flwr_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) for key in public_keys]
        node_ids = []
        for key, proc in zip(public_keys, procs):
            try:
                output, _ = proc.communicate(timeout=self.ready_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                output, _ = proc.communicate()
            reply = _json_tail(output)
            if proc.returncode != 0 or not reply.get("success"):
                raise FedctlError(f"`flwr supernode register {key}` failed (exit {proc.returncode}): "
                                  f"{_last_lines(output)}", f"see {self.logs}/superlink.log")
            node_ids.append(int(reply["node-id"]))
        return node_ids

    def list_nodes(self, timeout: float = 60.0) -> list[dict]:
        """`flwr supernode list --format json`: one dict per node the SuperLink knows (node-id, status)."""
        res = subprocess.run(self.flwr("supernode", "list", CONNECTION, "--format", "json"), env=self._flwr_env(),
                             capture_output=True, text=True, timeout=timeout, start_new_session=True)
        reply = _json_tail(res.stdout)
        if not reply.get("success"):  # flwr exits 0 with success=false when the SuperLink is unreachable
            raise FedctlError(f"`flwr supernode list` failed: {_last_lines(res.stdout + res.stderr)}",
                              f"see {self.logs}/superlink.log")
        return reply["nodes"]

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> list[dict]:
        """Poll until `count` nodes are online; returns them. FedctlError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            online = [n for n in self.list_nodes() if n["status"] == "online"]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise FedctlError(f"{len(online)} of {count} SuperNodes online after {timeout:.0f} s",
                                  f"see the supernode logs in {self.logs}")
            time.sleep(1.0)

    def run_app(self, app_dir: str | os.PathLike, timeout: float, *, run_config: str | None = None) -> tuple[int, str]:
        """`flwr run APP CONNECTION --stream` against this federation; (returncode, stdout+stderr).
        Past `timeout` seconds the command is killed and the return code is 124 (as `timeout` does)."""
        cmd = self.flwr("run", str(app_dir), CONNECTION, "--stream")
        if run_config:
            cmd += ["--run-config", run_config]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=self._flwr_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            self._terminate([proc.pid], grace=5.0)
            output, _ = proc.communicate()
            output += f"\n[fedctl] `flwr run` killed after {timeout:.0f} s\n"
            code = 124
        self.timings["run"] = time.monotonic() - t0
        return code, output

    def flwr(self, *args: str) -> list[str]:
        return [str(self.bindir / "flwr"), *args]

    # ---- internals -------------------------------------------------------------------------------------------

    def _flwr_env(self) -> dict[str, str]:
        return {**self.env, "FLWR_HOME": str(self.flwr_home)}

    def _write_flwr_home(self) -> None:
        # flwr 1.41 reads connections from $FLWR_HOME/config.toml (flwr/cli/flower_config.py)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            + connection_toml(CONNECTION, self.address, self.certs.ca_cert if self.tls else None))

    def _spawn(self, name: str, command: list[str]) -> Service:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as handle:
            popen = subprocess.Popen(command, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        service = Service(name, command, log, popen)
        self.services.append(service)
        return service

    def _wait_listening(self, service: Service, port: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not _listening(port):
            code = service.popen.poll()
            if code is not None:
                raise FedctlError(f"{service.name} exited with code {code} before listening on port {port}: "
                                  f"{_last_lines(service.output())}", f"see {service.log}")
            if time.monotonic() > deadline:
                raise FedctlError(f"{service.name} does not listen on 127.0.0.1:{port} after "
                                  f"{self.ready_timeout:.0f} s", f"see {service.log}")
            time.sleep(0.2)

    @contextlib.contextmanager
    def _timed(self, step: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = time.monotonic() - t0

    @staticmethod
    def _terminate(pids: list[int], grace: float) -> None:
        """SIGTERM each pid's process group (they lead their own sessions) and every descendant, wait up to
        `grace` seconds, then SIGKILL whatever is left. Descendants are listed before anything is signalled:
        once a parent dies its children are re-parented and no longer found under it."""
        procs: dict[int, psutil.Process] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    procs[proc.pid] = proc
        for proc in procs.values():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    child.kill()
                proc.kill()
        psutil.wait_procs(alive, timeout=5.0)


def _json_tail(output: str) -> dict:
    """The JSON object flwr's `--format json` prints last (status lines may precede it)."""
    start = output.find("{")
    with contextlib.suppress(ValueError):
        return json.loads(output[start:]) if start >= 0 else {}
    return {}


def _last_lines(text: str, count: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"
