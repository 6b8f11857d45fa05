"""`fedctl train … --backend flower` on a real loopback deployment: a SuperLink with TLS and SuperNode
authentication and two `fedctl train flower-node` processes (flwr SuperNodes with fedctl's warm ClientApp
executor), all on 127.0.0.1, started and always stopped here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.flower.loopback import free_port as _free_port

TINY = ["task.demo_sentences=400", "task.seq_len=32", "task.vocab_size=300", "task.local_updates=2",
        "task.eval_batches=2"]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # flower-node stops its SuperNode and executor on SIGTERM
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _new_children(before: set[int]) -> list[psutil.Process]:
    """Live children of this test process that were not there before (the suite may hold e.g. a
    multiprocessing resource tracker started by an earlier test)."""
    return [c for c in psutil.Process().children(recursive=True)
            if c.pid not in before and c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def _train(args: list[str]) -> dict:
    config = [] if "--resume" in args else ["--config", "mamba_tiny", *sum((["--set", s] for s in TINY), [])]
    res = CliRunner().invoke(app, ["train", "mamba", *config, *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


@pytest.mark.system
def test_backend_flower_over_tls_matches_local_resumes_and_survives_a_dead_node(tmp_path, monkeypatch):
    """Over TLS with SuperNode authentication (a LoopbackFederation SuperLink, two `fedctl train flower-node`
    processes with the CA and their keys): `--backend flower` for 1 round, then `--resume` to 2, equals the local
    backend bit for bit; a run the ServerApp refuses is one Error line; then node 1 is SIGKILLed after round 1
    of a new run: the SuperLink notices within 2 heartbeats (10 s each on fedctl's nodes), answers with
    NODE_UNAVAILABLE, and round 2 completes without that client (min_fit_clients = 1)."""
    from fedctl.flower.loopback import CONNECTION, LoopbackFederation
    from fedctl.flower.security import make_certs

    bindir = Path(sys.executable).parent
    certs = make_certs(tmp_path / "fed" / "certs", 2)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    procs: list[subprocess.Popen] = []
    flower, local, dying = tmp_path / "flower-run", tmp_path / "local-run", tmp_path / "dying-run"
    with LoopbackFederation(tmp_path / "fed", nodes=0) as fed:
        try:
            fed.register([certs.node_public_key(k) for k in range(2)])
            monkeypatch.setenv("FLWR_HOME", str(fed.flwr_home))
            env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
            for k in range(2):
                procs.append(subprocess.Popen(
                    [str(bindir / "fedctl"), "train", "flower-node", "--superlink", fed.address,
                     "--root-certificates", str(certs.ca_cert), "--auth-key", str(certs.node_key(k)),
                     "--port", str(_free_port()), "--partition-id", str(k), "--num-partitions", "2",
                     "--logs", str(tmp_path / f"node{k}")],
                    env=env, stdout=open(tmp_path / f"node{k}.log", "w"), stderr=subprocess.STDOUT,
                    start_new_session=True))
            first = _train(["--clients", "2", "--rounds", "1", "--out", str(flower), "--backend", "flower",
                            "--federation", CONNECTION])
            assert first["backend"] == "flower" and first["rounds"] == 1
            resumed = _train(["--out", str(flower), "--resume", "--rounds", "2", "--backend", "flower",
                              "--federation", CONNECTION])
            assert resumed["rounds"] == 2 and resumed["final"]["val_loss"] < 6.0
            # both nodes joined through TLS with their registered keys
            assert sorted(n["status"] for n in fed.list_nodes()) == ["online", "online"]
            # each node built its task once and served every message of both runs from the same process
            for k in range(2):
                served = (tmp_path / f"node{k}" / "executor.log").read_text()
                assert served.count("(train, round") == 2, served[-2000:]
            # a run the ServerApp refuses (its data is missing where the SuperLink runs): flwr's reason, exit 1
            res = CliRunner().invoke(app, ["train", "mamba", "--config", "mamba_tiny", "--clients", "2", "--data",
                                           str(tmp_path / "missing.txt"), "--out", str(tmp_path / "bad"),
                                           "--backend", "flower", "--federation", CONNECTION])
            assert res.exit_code == 1 and "did not finish" in res.output and "missing.txt" in res.output, res.output

            def kill_node_1_after_round_1():
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    if (dying / "metrics.jsonl").exists() and '"type": "fit"' in (dying / "metrics.jsonl").read_text():
                        for proc in psutil.Process(procs[1].pid).children(recursive=True):
                            proc.kill()  # the SuperNode and its executor die without a word
                        procs[1].kill()
                        return
                    time.sleep(0.2)

            killer = threading.Thread(target=kill_node_1_after_round_1, daemon=True)
            killer.start()
            _train(["--clients", "2", "--rounds", "2", "--out", str(dying), "--backend", "flower",
                    "--federation", CONNECTION, "--set", "federation.min_fit_clients=1"])
            killer.join()
            _train(["--clients", "2", "--rounds", "2", "--out", str(local)])  # the local reference
        finally:
            _stop(procs)
    assert not fed.survivors() and not _new_children(before)
    remote = torch.load(flower / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    ref = torch.load(local / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    assert remote.keys() == ref.keys() and all(torch.equal(remote[k], ref[k]) for k in ref)
    records = [json.loads(line) for line in (flower / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["type"] == "fit"] == [1, 2]
    fits = [json.loads(line) for line in (dying / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"], r["failed"]) for r in fits if r["type"] == "fit"] == \
        [(1, 2, []), (2, 1, ["client_1"])]


def test_backend_flower_bad_input_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "mamba", "--backend", "flower", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "Error: --backend flower needs --federation NAME" in res.output
    res = runner.invoke(app, ["train", "mamba", "--backend", "flower", "--federation", "nowhere",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and f"Flower has no connection 'nowhere': {tmp_path / 'config.toml'} does not exist" \
        in res.output and "Hint:" in res.output
    (tmp_path / "config.toml").write_text('[superlink.dead]\naddress = "127.0.0.1:1"\ninsecure = true\n')
    t0 = time.monotonic()
    res = runner.invoke(app, ["train", "mamba", "--config", "mamba_tiny", "--backend", "flower", "--federation", "dead",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "did not finish" in res.output and "Connection to the SuperLink is unavailable" \
        in res.output, res.output
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["train", "mamba", "--federation", "dead", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "--federation is only used with --backend flower" in res.output


@pytest.mark.parametrize("args, message", [
    (["--superlink", "nohostport"], "is not HOST:PORT"),
    (["--superlink", "127.0.0.1:9092"], "needs the SuperLink's CA certificate"),
    (["--superlink", "127.0.0.1:9092", "--root-certificates", "/nonexistent/ca.crt"], "does not exist"),
    (["--superlink", "127.0.0.1:9092", "--insecure", "--partition-id", "3", "--num-partitions", "2"], "outside 0..1"),
])
def test_flower_node_refuses_bad_input(args, message):
    res = CliRunner().invoke(app, ["train", "flower-node", *args])
    assert res.exit_code == 1 and message in res.output and "Hint:" in res.output, res.output


@pytest.mark.system
def test_flower_node_gives_up_on_an_unreachable_superlink(tmp_path):
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    t0 = time.monotonic()
    res = subprocess.run([str(Path(sys.executable).parent / "fedctl"), "train", "flower-node", "--superlink",
                          "127.0.0.1:1", "--insecure", "--port", str(_free_port()), "--connect-timeout", "2",
                          "--logs", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "flwr exit code 305" in res.stderr + res.stdout, res.stderr
    assert time.monotonic() - t0 < 60
    assert not _new_children(before)
