"""Magnitude pruning (fedctl.core.prune): exact kept entries, ties, and `federation.prune` in a federated run
(every client's shared update keeps exactly its top (1 − p) per tensor, in process and in parallel workers)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.instructions import ClientInstructions
from fedctl.core.parallel import ParallelExecutor
from fedctl.core.prune import kept_entries, prune_smallest, prune_update, top_magnitude_mask
from fedctl.core.strategies import build_strategy
from tests.core.linear_task import LinearTask


def test_pruning_keeps_exactly_the_largest_magnitudes():
    t = torch.tensor([[0.5, -3.0, 2.0], [-0.1, 2.5, 1.0]])
    assert torch.equal(prune_smallest(t, 0.5), torch.tensor([[0.0, -3.0, 2.0], [0.0, 2.5, 0.0]]))
    assert torch.equal(prune_smallest(t, 0.9), torch.tensor([[0.0, -3.0, 0.0], [0.0, 0.0, 0.0]]))  # int(5.4) go
    assert prune_smallest(t, 0.0) is t
    assert torch.equal(prune_smallest(t, 0.1), t)  # int(0.6) = 0 entries go
    assert [kept_entries(n, 0.9) for n in (1, 9, 10, 11, 1000)] == [1, 1, 1, 2, 100]


def test_ties_at_the_cut_keep_the_earliest_entries_and_counts_stay_exact():
    t = torch.tensor([1.0, -2.0, 1.0, -1.0, 0.5, 1.0])
    assert top_magnitude_mask(t, 3).tolist() == [True, True, True, False, False, False]
    zeros = torch.zeros(7)
    assert top_magnitude_mask(zeros, 2).tolist() == [True, True] + [False] * 5
    assert int(top_magnitude_mask(torch.randn(50, 4), 17).sum()) == 17


def test_prune_update_keeps_trained_values_exactly_and_the_rest_at_the_start():
    start = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "n": torch.tensor(3)}
    params = {"w": torch.tensor([1.3, 0.0, 1.01, 3.0]), "n": torch.tensor(5)}
    kept = prune_update(params, start, 0.5)
    assert kept == {"w": 2}
    assert params["w"].tolist() == pytest.approx([1.0, 0.0, 1.0, 3.0], abs=0)  # |Δ| 0.3 and 0.01 went back
    assert int(params["n"]) == 5  # integer counters travel unpruned


def _nonzeros(path):
    return {k: int((v != 0).sum()) for k, v in load_file(str(path)).items()}


def test_federation_prune_reaches_every_client_update_in_process_and_in_workers(tmp_path):
    fed = FederationConfig(rounds=1, clients=2, prune=0.75, checkpoint_every=100, save_deltas_every=1,
                           save_deltas_entity="clients")
    seq = run_federated(LinearTask(num_clients=2, dim=20), build_strategy("fedavg"), fed, seed=0, run_dir=tmp_path / "a")
    for cid in ("client_0", "client_1"):
        # weight: 20 − int(0.75·20) = 5 entries; bias: 1 − int(0.75) = 1
        assert _nonzeros(tmp_path / "a" / "deltas" / "clients" / "round_001" / f"{cid}.safetensors") == \
            {"weight": 5, "bias": 1}
    with ParallelExecutor(2, threads=1) as ex:
        par = run_federated(LinearTask(num_clients=2, dim=20), build_strategy("fedavg"), fed, seed=0, executor=ex)
    assert all(torch.equal(v, par.model.state_dict()[k]) for k, v in seq.model.state_dict().items())
    plain = run_federated(LinearTask(num_clients=2, dim=20), build_strategy("fedavg"),
                          FederationConfig(rounds=1, clients=2, checkpoint_every=100), seed=0)
    assert not torch.equal(plain.model.weight, seq.model.weight)


def test_prune_travels_in_flower_instructions():
    sent = ClientInstructions(proximal_mu=0.1, prune=0.9)
    assert ClientInstructions.from_dict(json.loads(json.dumps(sent.to_dict()))) == sent
    assert ClientInstructions.from_dict({}).prune == 0.0  # a message from an older server
