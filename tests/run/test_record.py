"""The run record: run.log holds what the terminal showed, meta.json the versions actually imported, the command
line, the machine and the exit status of every invocation; shell completion offers templates and strategies."""

from __future__ import annotations

import json
import os
import platform
import sys

from typer.testing import CliRunner

from fedctl.cli.app import app
from tests.reliability.conftest import linear_cli  # noqa: F401 (fixture)
from tests.reliability.helpers import assert_user_error

ARGS = ("--clients", "2", "--workers", "1", "--set", "federation.checkpoint_every=1")


def test_a_run_records_its_log_and_the_versions_it_imported(linear_cli, tmp_path):  # noqa: F811
    import torch

    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run)
    assert res.exit_code == 0, res.output
    log = (run / "run.log").read_text()
    assert "\x1b[" not in log  # plain text
    rows = [line for line in log.splitlines() if line.startswith("[round ")]
    assert rows == [line for line in res.stdout.splitlines() if line.startswith("[round ")]
    assert [r.split("]")[0] for r in rows] == ["[round 1/3", "[round 2/3", "[round 3/3"]
    assert log.rstrip().splitlines()[-1] == f"✓ Saved run {run}"  # the final line
    assert log.splitlines()[0].startswith(f"== fedctl train mamba --rounds 3 --clients 2 --workers 1 --set "
                                          f"federation.checkpoint_every=1 --out {run}")
    (entry,) = json.loads((run / "meta.json").read_text())["invocations"]
    assert entry["command"] == ["fedctl", "train", "mamba", "--rounds", "3", *ARGS, "--out", str(run)]
    assert entry["exit_status"] == 0 and entry["ended"] >= entry["started"]
    assert entry["versions"]["torch"] == torch.__version__ and "torch" in entry["versions"]["imported"]
    assert entry["versions"]["python"] == platform.python_version()
    for name in ("transformers", "peft", "flwr"):  # what ran, where loaded; else what is installed
        module = sys.modules.get(name)
        if module is not None:
            assert entry["versions"][name] == module.__version__
    assert entry["machine"]["cpu_cores"] == os.cpu_count()
    assert entry["gpu"] is None  # CUDA never initialised on this CPU run
    assert entry["fedctl"]["git_commit"] is None or len(entry["fedctl"]["git_commit"]) == 40

    # a resume refused before the run starts leaves the run's record as it was (nothing of the run is touched)
    res = linear_cli("train", "mamba", "--rounds", "2", "--out", run, "--resume")
    assert "nothing left to train" in assert_user_error(res)
    assert (run / "run.log").read_text() == log
    assert json.loads((run / "meta.json").read_text())["invocations"] == [entry]


def test_a_resumed_run_appends_to_its_record(linear_cli, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    assert linear_cli("train", "mamba", "--rounds", "2", *ARGS, "--out", run).exit_code == 0
    first = (run / "run.log").read_text()
    assert linear_cli("train", "mamba", "--rounds", "3", "--out", run, "--resume").exit_code == 0
    log = (run / "run.log").read_text()
    assert log.startswith(first)  # appended, never rewritten
    assert log.count("== fedctl train mamba") == 2 and "[round 3/3]" in log[len(first):]
    invocations = json.loads((run / "meta.json").read_text())["invocations"]
    assert [i["exit_status"] for i in invocations] == [0, 0]
    assert invocations[1]["command"][-1] == "--resume"


def test_a_run_that_fails_after_starting_records_the_error(linear_cli, tmp_path, monkeypatch):  # noqa: F811
    """The Error/Hint lines reach run.log and the exit status 1 reaches meta.json."""
    from fedctl.core import engine
    from fedctl.errors import FedctlError

    cls = engine.Run
    real = cls.fit_round

    def fit_round(self, server_round):
        if server_round == 2:
            raise FedctlError("round 2: made to fail", "nothing to fix: a test")
        return real(self, server_round)

    monkeypatch.setattr(cls, "fit_round", fit_round)
    run = tmp_path / "run"
    res = linear_cli("train", "mamba", "--rounds", "3", *ARGS, "--out", run)
    assert_user_error(res)
    log = (run / "run.log").read_text().splitlines()
    assert log[-2:] == ["Error: round 2: made to fail", "Hint: nothing to fix: a test"]
    assert any(line.startswith("[round 1/3]") for line in log)
    (entry,) = json.loads((run / "meta.json").read_text())["invocations"]
    assert entry["exit_status"] == 1


def test_install_completion_is_offered_and_completes_names(monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["--show-completion", "bash"], prog_name="fedctl")
    assert res.exit_code == 0 and "_fedctl_completion" in res.stdout and "_FEDCTL_COMPLETE" in res.stdout
    from fedctl.cli.options import complete_config, complete_strategy
    from fedctl.core.strategies import STRATEGIES
    from fedctl.utils.templates import list_templates

    assert complete_config("mamba_") == sorted(p.stem for p in list_templates() if p.stem.startswith("mamba_"))
    assert "mamba_tiny" in complete_config("")
    assert complete_strategy("fedav") == ["fedavg", "fedavgm"]
    assert set(complete_strategy("")) == set(STRATEGIES)
    # end to end through click's completion protocol, as the shell calls it
    monkeypatch.setenv("_FEDCTL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "fedctl train mamba --config mamba_t")
    monkeypatch.setenv("COMP_CWORD", "4")
    res = runner.invoke(app, [], prog_name="fedctl")
    assert res.stdout.split() == ["mamba_tiny"]
    monkeypatch.setenv("COMP_WORDS", "fedctl train mamba --strategy fedy")
    res = runner.invoke(app, [], prog_name="fedctl")
    assert res.stdout.split() == ["fedyogi"]
