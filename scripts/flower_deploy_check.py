"""A real Flower deployment on loopback, checked against the in-process engine bit for bit.

    python scripts/flower_deploy_check.py

Starts flower-superlink and two flower-supernodes bound to 127.0.0.1 on free ports, writes a
Flower App with `fedctl train flower-app`, runs 2 rounds of a tiny Mamba model with `flwr run`,
then trains the same config in-process and compares the final weights. Everything it starts is
killed at the end. Takes 60–90 s on 2 cores (each train message starts a fresh ClientApp process).
Not part of the test suite for that reason; the suite checks the same message path in process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from typer.testing import CliRunner


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def check(tmp_path: Path) -> None:
    from fedctl.cli.app import app

    bindir = Path(sys.executable).parent
    port, node_ports = _free_port(), [_free_port(), _free_port()]
    tiny = ["task.demo_sentences=400", "task.seq_len=32", "task.vocab_size=300", "task.local_updates=2",
            "task.eval_batches=2"]
    args = ["train", "flower-app", "--config", "mamba_tiny", "--clients", "2", "--rounds", "2", "--out",
            str(tmp_path / "run"), "--app", str(tmp_path / "fa"), "--superlink-port", str(port),
            "--supernode-port", str(node_ports[0]), "--json"]
    for item in tiny:
        args += ["--set", item]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "OMP_NUM_THREADS": "1"}
    logs, procs = tmp_path / "logs", []
    logs.mkdir()

    def start(name, cmd):
        procs.append(subprocess.Popen(cmd, env=env, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("superlink", [str(bindir / "flower-superlink"), "--insecure", "--port", str(port),
                            "--disable-runtime-dependency-installation"])
        _wait_for_port(port, 30)
        for k, node_port in enumerate(node_ports):
            start(f"supernode{k}", [str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                    "--port", str(node_port), "--node-config", f"partition-id={k} num-partitions=2"])
        run = subprocess.run([str(bindir / "flwr"), "run", str(tmp_path / "fa"), "fedctl-local", "--stream"],
                             env={**env, "FLWR_HOME": str(tmp_path / "fa" / ".flwr")}, capture_output=True,
                             text=True, timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
        deadline = time.monotonic() + 30  # the ServerApp may still be writing its last files
        while time.monotonic() < deadline and not (tmp_path / "run" / "checkpoints" / "round_002.pt").exists():
            time.sleep(0.5)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fits = [r for r in records if r["type"] == "fit"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [(r["round"], r["clients"], r["sampled"], r["failed"]) for r in fits] == [(1, 2, 2, []), (2, 2, 2, [])]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # three processes over HTTP reach the in-process engine's weights bit for bit
    from fedctl.run import recipe

    exp = recipe.resolve("mamba", str(tmp_path / "fa" / "fedctl.yaml"), flags={"run": {"out": str(tmp_path / "local")}})
    recipe.train(exp)
    remote = torch.load(tmp_path / "run" / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    local = torch.load(tmp_path / "local" / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    assert remote.keys() == local.keys() and all(torch.equal(remote[k], local[k]) for k in local)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        check(Path(tmp))
        print(f"PASS: 2 rounds × 2 SuperNodes over loopback equal the in-process run bit for bit "
              f"({time.perf_counter() - t0:.0f} s)")
