"""Issue #3: on the demo corpus, federated Mamba with FedAvg, FedAvgM, FedEntropy and FedFisher
finishes and its validation perplexity falls."""

from __future__ import annotations

import pytest
import torch

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import build_strategy
from fedctl.core.task import TaskContext
from fedctl.tasks.mamba import MambaConfig, MambaTask


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    cfg = MambaConfig(demo_sentences=900, seq_len=32, vocab_size=400, local_updates=4, eval_batches=4, batch_size=8)
    return MambaTask(cfg, TaskContext(num_clients=3, seed=0, device=torch.device("cpu"),
                                     run_dir=tmp_path_factory.mktemp("mamba")))


@pytest.mark.parametrize("name,args", [
    ("fedavg", {}),
    ("fedavgm", {"server_momentum": 0.5}),
    ("fedentropy", {"temperature": 1.0, "max_examples": 8}),
    ("fedfisher", {"max_examples": 8, "chunk": 4}),
])
def test_strategy_perplexity_falls(task, name, args):
    res = run_federated(task, build_strategy(name, args), FederationConfig(rounds=3, clients=3), seed=0)
    ppl = [r["val_ppl"] for r in res.history if r["type"] == "eval"]
    assert len(ppl) == 3
    assert ppl[-1] < 0.8 * ppl[0], ppl
    fits = [r for r in res.history if r["type"] == "fit"]
    assert all(r["clients"] == 3 and not r["failed"] for r in fits)
