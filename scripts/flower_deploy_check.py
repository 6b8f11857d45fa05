"""A real, secured Flower deployment on loopback, checked against the in-process engine bit for bit.

    python scripts/flower_deploy_check.py            # TLS + SuperNode authentication (the default)
    python scripts/flower_deploy_check.py --insecure # plain HTTP, no node authentication

Starts flower-superlink and two flower-supernodes on 127.0.0.1 with fedctl.flower.loopback.LoopbackFederation
(a fresh CA and server certificate, one registered key per node), writes a Flower App with
`fedctl train flower-app`, runs 2 rounds of a tiny Mamba model with `flwr run`, then trains the same config
in-process and compares the final weights. Everything it starts is stopped at the end, and the check fails
if any process survives. Takes 90–120 s on 2 cores (each train message starts a fresh ClientApp process);
tests/flower/test_security.py runs the same check in the suite.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

TINY = ["task.demo_sentences=400", "task.seq_len=32", "task.vocab_size=300", "task.local_updates=2",
        "task.eval_batches=2"]


def check(tmp_path: Path, *, secure: bool = True) -> dict[str, float]:
    """Run the check in `tmp_path`; returns the federation's step timings (seconds)."""
    from fedctl.cli.app import app
    from fedctl.flower.loopback import LoopbackFederation
    from fedctl.run import recipe

    with LoopbackFederation(tmp_path / "fed", nodes=2, tls=secure, auth=secure,
                            env={"OMP_NUM_THREADS": "1"}) as fed:
        args = ["train", "flower-app", "--config", "mamba_tiny", "--clients", "2", "--rounds", "2", "--out",
                str(tmp_path / "run"), "--app", str(tmp_path / "fa"), "--superlink-port", str(fed.port), "--json"]
        args += ["--certs", str(fed.certs.root)] if secure else ["--insecure"]
        for item in TINY:
            args += ["--set", item]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        code, output = fed.run_app(tmp_path / "fa", timeout=240)
        assert code == 0, output
        deadline = time.monotonic() + 30  # the ServerApp may still be writing its last files
        while time.monotonic() < deadline and not (tmp_path / "run" / "checkpoints" / "round_002.pt").exists():
            time.sleep(0.5)
    assert fed.survivors() == [], f"processes left running: {fed.survivors()}"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fits = [r for r in records if r["type"] == "fit"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [(r["round"], r["clients"], r["sampled"], r["failed"]) for r in fits] == [(1, 2, 2, []), (2, 2, 2, [])]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # three processes over HTTPS reach the in-process engine's weights bit for bit
    exp = recipe.resolve("mamba", str(tmp_path / "fa" / "fedctl.yaml"), flags={"run": {"out": str(tmp_path / "local")}})
    recipe.train(exp)
    remote = torch.load(tmp_path / "run" / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    local = torch.load(tmp_path / "local" / "checkpoints" / "round_002.pt", weights_only=True)["model"]
    assert remote.keys() == local.keys() and all(torch.equal(remote[k], local[k]) for k in local)
    return fed.timings


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    secure = "--insecure" not in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        timings = check(Path(tmp), secure=secure)
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        print(f"PASS: 2 rounds × 2 SuperNodes over loopback ({'TLS + node auth' if secure else 'INSECURE'}) equal "
              f"the in-process run bit for bit ({time.perf_counter() - t0:.0f} s; {steps})")
