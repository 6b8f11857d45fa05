"""`--run RUN --round k --client ID`: the victim is the run's global model before round k and the shared
gradient is the client's saved delta (a run directory crafted here in fedctl's RunDir layout, since
`fedctl train asr` had not landed on this branch)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from fedctl.attacks.case import client_update, run_update
from fedctl.cli.app import app
from fedctl.core.rundir import RunDir
from fedctl.tasks.asr.data import FeatureCache, collate, filter_duration, load_corpus
from fedctl.tasks.asr.models import build_asr_model


def _craft_run(tmp_path, corpus, lr=0.1):
    torch.manual_seed(3)
    model = build_asr_model("ds1", "tiny")
    rundir = RunDir(tmp_path / "run")
    rundir.checkpoint_path(2).parent.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "config": {"task": {"arch": "ds1", "preset": "tiny"}}},
               rundir.checkpoint_path(2))
    utt = filter_duration(load_corpus(corpus), 1000, 1300)[0]
    x, lengths, targets, tlens = collate([FeatureCache("ds1")(utt)], [utt.target])
    grads = client_update(model, x, lengths, targets, tlens, match="all")
    names = [n for n, _ in model.named_parameters()]
    path = rundir.delta_path(3, "client_000")
    path.parent.mkdir(parents=True)
    save_file({n: (-lr * g).contiguous() for n, g in zip(names, grads)}, str(path))
    return rundir, model, (x, lengths, targets, tlens)


def test_run_update_recovers_the_clients_gradient(corpus, tmp_path):
    rundir, model, batch = _craft_run(tmp_path, corpus)
    victim, shared = run_update(rundir.path, 3, "client_000", "ds1", "tiny", client_lr=0.1)
    for a, b in zip(victim.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    expected = client_update(model, *batch, match="last")
    for s, e in zip(shared, expected):
        torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-8)


def test_attack_cli_on_a_run_and_missing_update(corpus, tmp_path):
    rundir, _, _ = _craft_run(tmp_path, corpus)
    runner = CliRunner()
    base = ["attack", "ds1", "--corpus", str(corpus), "--min-dur", "1000", "--max-dur", "1300", "--max-iter", "2",
            "--seeds", "1", "--run", str(rundir.path), "--client-lr", "0.1"]
    res = runner.invoke(app, base + ["--round", "3", "--client", "client_000", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "a" / "metrics.csv").read_text().splitlines()) == 2  # header + the one batch
    res = runner.invoke(app, base + ["--round", "3", "--client", "client_009", "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "has no update of client client_009" in res.output and "--save-deltas" in res.output
