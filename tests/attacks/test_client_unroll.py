"""The attack's simulated client is the training client: for an SGD, a momentum and an AdamW client taking
N = 1, 2, 4 local steps in a real `fedctl train asr` run (DS1 tiny, float64, clipping on, 3 utterances in
micro-batches of 2 drawn by the trainer's seeded schedule), the attacker's functional unroll at the true
features equals the delta the run saved to 1e-8 relative (measured: ~1e-14)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedctl.attacks.case import run_client
from fedctl.attacks.objective import client_updates, matched_names
from fedctl.cli.app import app
from fedctl.data.speech.demo import demo_partition

CLIENTS = {"sgd": ["task.optimizer=sgd", "task.lr=0.05"],
           "momentum": ["task.optimizer=sgd", "task.momentum=0.9", "task.nesterov=true", "task.lr=0.05",
                        "task.weight_decay=0.01", "task.weight_decay_scope=matrices"],
           "adamw": ["task.lr=0.003", "task.weight_decay=0.01"]}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("unroll_data")
    return demo_partition(root, 2, 2, 4, lambda _: None)


def train(out, parts, client, steps, rounds=1, extra=()):
    sets = [*CLIENTS[client], f"task.local_updates={steps}", "task.batch_size=2", "task.precision=fp64",
            "task.grad_clip=1.0", "run.workers=1", "federation.checkpoint_every=1", *extra]
    res = CliRunner().invoke(app, ["train", "asr", "--config", "asr_ds1_tiny", "--rounds", str(rounds),
                                   "--clients", "2", "--parts", str(parts), "--out", str(out),
                                   "--save-deltas", "entity=clients", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("client", list(CLIENTS))
def test_unroll_reproduces_the_saved_client_delta(parts, tmp_path, client, steps):
    run = train(tmp_path / "run", parts, client, steps)
    case = run_client(run, 1, "client_000", "ds1", match="all")
    assert len(case.plan.steps) == steps and case.plan.spec.optimizer == ("adamw" if client == "adamw" else "sgd")
    x, lengths, targets, target_lengths = case.batch
    assert x.dtype == torch.float64 and x.shape[1] == 3  # the client's 3 training utterances
    dummy, _ = client_updates(case.model, x, lengths, targets, target_lengths, 1, "all", case.plan,
                              create_graph=False)
    delta = load_file(str(run / "deltas" / "clients" / "round_001" / "client_000.safetensors"))
    names = matched_names(case.model, "all")
    for name, got in zip(names, dummy):
        want = -delta[name] / case.plan.peak_lr
        assert want.dtype == torch.float64
        err = float((got[0] - want).norm() / want.norm())
        assert err <= 1e-8, (name, err)
    # and the shared tensors the attack matches are that delta
    for name, shared in zip(names, case.shared):
        assert torch.equal(shared, -delta[name] / case.plan.peak_lr)
