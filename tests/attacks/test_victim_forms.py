"""Every victim form the README documents, from a real `fedctl train asr` run (the `asr_run` fixture), attacked
end to end through the CLI: a round checkpoint, `best.pt`, the run folder, its `checkpoints/` and `final/`
folders, the `final/hf` export, and `--run RUN --round k --client ID` on the client's saved delta. A model of
another architecture or workload is refused, naming what it is."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fedctl.attacks.case import load_victim, run_update
from fedctl.cli.app import app
from fedctl.core.checkpoint import load_checkpoint, save_checkpoint
from fedctl.tasks.asr.models import build_asr_model

runner = CliRunner()
FAST = ["--min-dur", "0", "--max-dur", "9000", "--max-iter", "2", "--seeds", "1"]
FORMS = {  # README: `--checkpoint` takes what `fedctl train asr` leaves
    "round checkpoint": "checkpoints/round_001.pt",
    "best.pt": "checkpoints/best.pt",
    "run folder": ".",
    "checkpoints folder": "checkpoints",
    "final folder": "final",
    "final/hf export": "final/hf",
}


def _attack(*args):
    return runner.invoke(app, ["attack", *[str(a) for a in args]])


def _corpus(run):
    return next(p for p in (run / "demo_data").iterdir() if p.is_dir() and "-parts" not in p.name)


def _parts(run):
    return next(p for p in (run / "demo_data").iterdir() if p.name.endswith("-parts2"))


def _rows(out):
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_state(run, form):
    """The weights each form names: the file itself, or the run's newest round checkpoint (its final model)."""
    path = run / FORMS[form]
    return load_checkpoint(path if path.is_file() else run / "checkpoints" / "round_002.pt")["model"]


@pytest.mark.parametrize("form", list(FORMS))
def test_attack_runs_on_every_victim_form_of_a_real_run(asr_run, tmp_path, form):
    victim = load_victim("ds1", "tiny", checkpoint=asr_run / FORMS[form])
    expected = _expected_state(asr_run, form)
    assert set(victim.state_dict()) == set(expected)
    for key, value in victim.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert all(p.requires_grad for p in victim.parameters()) and victim.training

    out = tmp_path / "atk"
    res = _attack("ds1", "--corpus", _corpus(asr_run), *FAST, "--batch-end", 1, "--checkpoint",
                  asr_run / FORMS[form], "--out", out, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["attacked"] == 1 and summary["skipped"] == 0
    rows = _rows(out)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["grad_distance"]))


def test_the_forms_of_one_model_give_one_result(asr_run, tmp_path):
    """The run folder, its final/hf export and its last round checkpoint are the same model: the same attack
    on each writes the same numbers (the export equals round 2's checkpoint bit for bit)."""
    export = load_file(str(asr_run / "final" / "hf" / "model.safetensors"))
    last = load_checkpoint(asr_run / "checkpoints" / "round_002.pt")["model"]
    assert all(torch.equal(export[k], last[k]) for k in last)
    first = load_checkpoint(asr_run / "checkpoints" / "round_001.pt")["model"]
    assert not torch.equal(first["out.weight"], last["out.weight"])  # equal results would not be vacuous
    results = []
    for i, victim in enumerate((asr_run, asr_run / "final" / "hf", asr_run / "checkpoints" / "round_002.pt")):
        res = _attack("ds1", "--corpus", _corpus(asr_run), *FAST, "--batch-end", 1, "--checkpoint", victim,
                      "--out", tmp_path / f"a{i}")
        assert res.exit_code == 0, res.output
        results.append({k: v for k, v in _rows(tmp_path / f"a{i}")[0].items() if k != "seconds"})
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("server_round", [1, 2])
def test_run_round_client_attacks_the_clients_saved_delta(asr_run, tmp_path, server_round):
    out = tmp_path / "atk"
    # the run's client replayed: its own training utterances (3, from the run's data), its config's client
    res = _attack("ds1", "--client", "client_000", *FAST, "--run", asr_run, "--round", server_round, "--out", out)
    assert res.exit_code == 0, res.output
    assert len(_rows(out)) == 3
    res = _attack("ds1", "--client", "client_000", *FAST, "--run", asr_run, "--round", server_round,
                  "--client-lr", 0.5, "--out", tmp_path / "other")
    _refused(res, "--client-lr 0.5 differs from the learning rate", "0.003")

    victim, shared = run_update(asr_run, server_round, "client_000", "ds1", "tiny", match="all", client_lr=0.5)
    delta = load_file(str(asr_run / "deltas" / "clients" / f"round_{server_round:03d}" / "client_000.safetensors"))
    names = [n for n, _ in victim.named_parameters()]
    assert len(shared) == len(names)
    for n, g in zip(names, shared):
        assert torch.equal(g, -delta[n] / 0.5), n
    start = {k: v.detach() for k, v in victim.state_dict().items()}
    after = load_checkpoint(asr_run / "checkpoints" / f"round_{server_round:03d}.pt")["model"]
    if server_round == 2:  # the global model client_000 started round 2 from
        before = load_checkpoint(asr_run / "checkpoints" / "round_001.pt")["model"]
        assert all(torch.equal(start[k], before[k]) for k in before)
    # round k's global = the start + the FedAvg mean of both clients' deltas (3 train utterances each): this
    # holds only for the true starting model, which for round 1 is rebuilt from config.yaml (no round_000.pt)
    other = load_file(str(asr_run / "deltas" / "clients" / f"round_{server_round:03d}" / "client_001.safetensors"))
    for key in after:
        folded = start[key] + 0.5 * delta[key] + 0.5 * other[key]
        assert float((folded - after[key]).abs().max()) < 1e-6, key
    assert max(float((after[k] - start[k]).abs().max()) for k in after) > 1e-3  # the round did move the model


def _refused(res, *phrases):
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    for phrase in phrases:
        assert phrase in res.output, res.output


def test_a_model_of_another_workload_is_refused_naming_what_it_is(asr_run, tmp_path):
    corpus = _corpus(asr_run)
    state = {"backbone.embeddings.weight": torch.zeros(8, 4), "lm_head.weight": torch.zeros(8, 4)}
    ckpt = tmp_path / "mamba" / "checkpoints" / "round_001.pt"
    save_checkpoint(ckpt, {"round": 1, "task": "mamba", "model": state, "config": {"run": {"task": "mamba"}}})
    (tmp_path / "mamba" / "config.yaml").write_text("run:\n  task: mamba\n")
    export = tmp_path / "mamba_hf"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "mamba2"}))
    save_file(state, str(export / "model.safetensors"))
    bare = tmp_path / "bare.pt"
    torch.save(state, bare)
    for victim, phrase in ((ckpt, "is a mamba checkpoint"), (tmp_path / "mamba", "is a mamba run"),
                           (export, "is a Hugging Face mamba2 export"), (bare, "holds no DeepSpeech model")):
        for arch in ("ds1", "ds2"):
            res = _attack(arch, "--corpus", corpus, *FAST, "--checkpoint", victim, "--out", tmp_path / "x")
            _refused(res, phrase)
            assert "ds2 model" not in res.output and "ds1 model" not in res.output
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_of_the_other_architecture_is_refused_naming_both(asr_run, tmp_path):
    corpus = _corpus(asr_run)
    ds2 = tmp_path / "round_001.pt"  # a fedctl checkpoint of a ds2 run, as `fedctl train asr --model ds2` saves
    save_checkpoint(ds2, {"round": 1, "task": "asr", "model": build_asr_model("ds2", "tiny").state_dict(),
                          "config": {"run": {"task": "asr"}, "task": {"arch": "ds2", "preset": "tiny"}}})
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--checkpoint", ds2, "--out", tmp_path / "x"),
             "is a ds2 model, not ds1", "fedctl attack ds2")
    for victim in (asr_run, asr_run / "final" / "hf", asr_run / "checkpoints" / "best.pt"):
        _refused(_attack("ds2", "--corpus", corpus, *FAST, "--checkpoint", victim, "--out", tmp_path / "x"),
                 "is a ds1 model, not ds2", "fedctl attack ds1")
    for server_round in (1, 2):
        res = _attack("ds2", "--corpus", corpus, *FAST, "--run", asr_run, "--round", server_round, "--client",
                      "client_000", "--out", tmp_path / "x")
        _refused(res, "ds1 model, not ds2", "fedctl attack ds1")
    assert not (tmp_path / "x").exists()


def test_model_sizes_that_contradict_the_saved_model_are_refused(asr_run, tmp_path):
    corpus = _corpus(asr_run)
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--checkpoint", asr_run, "--hidden", 32,
                     "--out", tmp_path / "x"), "n_hidden = 16, not n_hidden = 32", "--hidden")
    _refused(_attack("ds1", "--corpus", corpus, *FAST, "--run", asr_run, "--round", 1, "--client", "client_000",
                     "--hidden", 32, "--out", tmp_path / "x"), "n_hidden = 16", "--hidden")
