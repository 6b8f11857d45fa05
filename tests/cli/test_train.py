"""`fedctl train` through Typer's CliRunner: results, equalities, and bad input."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from fedctl.core.checkpoint import load_checkpoint
from tests.cli.conftest import SMALL


def final_weights(run_dir):
    return load_checkpoint(sorted((run_dir / "checkpoints").glob("round_*.pt"))[-1])["model"]


def test_central_equals_one_client_federation(cli, tmp_path):
    a = cli("train", "central", "--task", "mamba", "--rounds", 2, "--seed", 5, "--out", tmp_path / "c", *SMALL)
    assert a.exit_code == 0, a.output
    b = cli("train", "mamba", "--clients", 1, "--fraction", 1, "--strategy", "fedavg", "--rounds", 2, "--seed", 5,
            "--out", tmp_path / "f", *SMALL)
    assert b.exit_code == 0, b.output
    wa, wb = final_weights(tmp_path / "c"), final_weights(tmp_path / "f")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_run_directory_layout_and_json(cli, tmp_path):
    run = tmp_path / "run"
    res = cli("train", "mamba", "--rounds", 3, "--clients", 2, "--out", run, "--json", *SMALL)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rounds"] == 3 and summary["final"]["val_ppl"] > 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["val_ppl"] for r in records if r["type"] == "eval"]
    assert len(evals) == 3 and evals[-1] < evals[0]
    cfg = (run / "config.yaml").read_text()
    assert "clients: 2" in cfg and "seq_len: 32" in cfg
    assert load_checkpoint(run / "checkpoints" / "round_003.pt")["config"]["federation"]["clients"] == 2
    exported = load_file(str(run / "final" / "hf" / "model.safetensors"))
    ckpt = final_weights(run)
    assert torch.equal(exported["backbone.embeddings.weight"], ckpt["backbone.embeddings.weight"])


def test_plain_lines_when_not_a_terminal(cli, tmp_path):
    res = cli("train", "mamba", "--rounds", 2, "--clients", 2, "--out", tmp_path / "r", *SMALL)
    assert res.exit_code == 0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[round")]
    assert len(lines) == 2 and lines[1].startswith("[round 2/2] clients=2 train_loss=")
    assert "val_ppl=" in lines[1] and "mb_down=" in lines[1]
    assert "Saved run" in res.stdout


def test_resume_via_cli_extends_rounds(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "mamba", "--rounds", 2, "--clients", 2, "--out", run, *SMALL).exit_code == 0
    res = cli("train", "mamba", "--out", run, "--resume", "--rounds", 3)
    assert res.exit_code == 0, res.output
    assert "[round 3/3]" in res.stdout and "[round 1/3]" not in res.stdout
    assert load_checkpoint(run / "checkpoints" / "round_003.pt")["round"] == 3


def test_bad_input_is_one_line_error_exit_1(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory is ./runs/<name>: nothing may appear there
    cases = [
        (["train", "mamba", "--set", "federation.fractoin=0.5"], "unknown config key 'federation.fractoin'", "valid keys"),
        (["train", "mamba", "--strategy", "fedfoo"], "unknown strategy 'fedfoo'", "fedavg"),
        (["train", "mamba", "--fraction", "1.5"], "fraction = 1.5 is outside (0, 1]", "--fraction"),
        (["train", "mamba", "--fraction", "0"], "outside (0, 1]", "Hint"),
        (["train", "mamba", "--data", str(tmp_path / "nope.txt")], "nope.txt", "Hint"),
        (["train", "mamba", "--set", "federation.rounds=ten"], "not a valid int", "Hint"),
        (["train", "mamba", "--config", str(tmp_path / "missing.yaml")], "config file not found", "template"),
        (["train", "mamba", "--out", str(tmp_path / "none"), "--resume"], "config.yaml", "Hint"),
    ]
    for args, message, hint in cases:
        res = cli(*args)
        assert res.exit_code == 1, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
        assert hint in res.stderr
        assert "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 2  # Error: … / Hint: …
        assert not (tmp_path / "runs").exists()


def test_truncated_checkpoint_on_resume_and_inspect(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "mamba", "--rounds", 1, "--clients", 2, "--out", run, *SMALL).exit_code == 0
    ckpt = run / "checkpoints" / "round_001.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4096])
    for args in (["train", "mamba", "--out", run, "--resume", "--rounds", 2], ["inspect", "ckpt", ckpt]):
        res = cli(*args)
        assert res.exit_code == 1
        assert "round_001.pt is unreadable or truncated" in res.stderr and "Hint:" in res.stderr


def test_existing_run_is_not_overwritten(cli, tmp_path):
    run = tmp_path / "r"
    assert cli("train", "mamba", "--rounds", 1, "--clients", 2, "--out", run, *SMALL).exit_code == 0
    res = cli("train", "mamba", "--rounds", 1, "--clients", 2, "--out", run, *SMALL)
    assert res.exit_code == 1 and "already holds checkpoints" in res.stderr and "--resume" in res.stderr


def test_mamba_resume_is_bitwise_identical_to_uninterrupted(cli, tmp_path):
    full = tmp_path / "full"
    assert cli("train", "mamba", "--rounds", 3, "--clients", 2, "--strategy", "fedavgm", "--set",
               "federation.strategy_args.server_momentum=0.9", "--set", "federation.checkpoint_every=1",
               "--out", full, *SMALL).exit_code == 0
    part = tmp_path / "part"
    assert cli("train", "mamba", "--rounds", 2, "--clients", 2, "--strategy", "fedavgm", "--set",
               "federation.strategy_args.server_momentum=0.9", "--set", "federation.checkpoint_every=1",
               "--out", part, *SMALL).exit_code == 0
    (part / "tokenizer.json").unlink()  # a resumed run must rebuild the same tokenizer
    res = cli("train", "mamba", "--out", part, "--resume", "--rounds", 3)
    assert res.exit_code == 0, res.output
    a, b = final_weights(full), final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(part / "checkpoints" / "round_003.pt")
    assert set(ckpt["strategy_state"]["momentum"]) == set(a)
