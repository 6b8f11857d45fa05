"""The resource record in metrics.jsonl (time, throughput, memory, lr, gradient norm) and in-round progress."""

from __future__ import annotations

import json
import math
import time

import torch

from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.events import ClientProgress
from fedctl.core.local import train_steps
from fedctl.core.strategies import build_strategy
from fedctl.core.task import LocalTraining
from tests.core.linear_task import LinearTask


class CountingTask(LinearTask):
    """LinearTask that reports a workload unit: 3 'tokens' per example."""

    throughput_units = ("tokens",)

    def throughput(self, batch):
        return {"tokens": 3.0 * batch[1].shape[0]}


def test_fit_rows_carry_a_sane_resource_record(tmp_path):
    before = time.time()
    events = []
    run_federated(CountingTask(), build_strategy("fedavg"),
                  FederationConfig(rounds=2, clients=4, fraction=1.0, min_fit_clients=1), seed=0,
                  run_dir=tmp_path / "run", on_event=events.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fits = [r for r in rows if r["type"] == "fit"]
    assert len(fits) == 2
    for r in fits:
        for key in ("time", "examples_per_s", "tokens_per_s", "peak_rss_mb", "lr", "grad_norm"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert before <= r["time"] <= time.time()
        assert r["lr"] == 0.05  # LinearTask: constant lr, no warmup
        assert math.isclose(r["tokens_per_s"], 3.0 * r["examples_per_s"])
        assert 10 < r["peak_rss_mb"] < 1e6
        assert 10 < r["peak_rss_tree_mb"] < 1e6  # in-process: the tree is this process (+ any children)
        assert "cuda_max_allocated_mb" not in r  # CPU run
    assert fits[0]["time"] <= fits[1]["time"]
    # progress: every client's every step, in order, 4 clients x 5 steps per round
    progress = [(e.server_round, e.client, e.clients, e.step, e.steps) for e in events if isinstance(e, ClientProgress)]
    assert progress == [(r, c, 4, s, 5) for r in (1, 2) for c in range(1, 5) for s in range(1, 6)]


def test_grad_norm_is_the_pre_clip_norm_and_lr_the_last_one():
    task = LinearTask(num_clients=1)
    task.training = LocalTraining(lr=0.1, batch_size=16, local_updates=1, grad_clip=1e-3, warmup_steps=4)
    model = task.build_model()
    items = torch.arange(16)
    # the norm the clipped step saw, computed by hand on the same batch
    loss, _ = task.loss(model, task.make_batch("client_0", items, None))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    m = train_steps(task, model, opt, "client_0", [[items]], torch.Generator(), peak_lr=0.1, step_offset=1)
    assert expected > 1e-3  # clipping was active, yet the reported norm is the one before clipping
    assert math.isclose(m["grad_norm"], expected, rel_tol=1e-5)
    assert math.isclose(m["lr"], 0.1 * 2 / 4)  # warmup step 2 of 4
    assert m["items"] == 16 and "train_seconds" not in m  # timing lives in the engine: fit metrics stay reproducible
