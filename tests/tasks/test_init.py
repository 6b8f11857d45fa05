"""`--init WEIGHTS`: warm starts from a run's export or checkpoint; a mismatch names the first differing tensor."""

from __future__ import annotations

import torch

from fedctl.core.checkpoint import load_checkpoint
from fedctl.core.config import load_yaml
from fedctl.core.task import TaskContext
from fedctl.run.recipe import experiment_from
from fedctl.run.registry import get_workload
from tests.cli.conftest import SMALL, cli  # noqa: F401  (fixture)


def test_mamba_init_from_export_and_checkpoint_and_a_mismatch(cli, tmp_path):  # noqa: F811
    run = tmp_path / "a"
    assert cli("train", "mamba", "--rounds", 1, "--clients", 2, "--out", run, *SMALL).exit_code == 0
    saved = load_checkpoint(run / "checkpoints" / "round_001.pt")["model"]
    for source in (run / "final", run / "checkpoints" / "round_001.pt", run):
        exp = experiment_from(load_yaml(run / "config.yaml"))
        exp.task.init = str(source)
        ctx = TaskContext(num_clients=2, seed=1, device=torch.device("cpu"), run_dir=run, log=lambda s: None)
        model = get_workload("mamba").build(exp.task, ctx).build_model()  # another seed: only init can match
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items()), source
    res = cli("train", "mamba", "--rounds", 1, "--clients", 2, "--init", run / "final", "--out", tmp_path / "b",
              *SMALL, "--set", "task.hidden_size=32")
    assert res.exit_code == 1
    assert "first differing tensor 'backbone.embeddings.weight'" in res.output and "Hint:" in res.output
