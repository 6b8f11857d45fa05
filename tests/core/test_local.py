"""The one client trainer: its schedule, and that `local_updates` / `local_epochs` mean the same in every workload."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedctl.core import local
from fedctl.core.local import LocalTraining, schedule
from fedctl.core.task import ClientConfig, TaskContext

CPU = torch.device("cpu")


def windows_without_repeats(draws: list[int], n: int) -> bool:
    """Every run of n consecutive draws (epoch 1, epoch 2, …) holds each item at most once."""
    return all(len(set(draws[i : i + n])) == len(draws[i : i + n]) for i in range(0, len(draws), n))


# ---------------------------------------------------------------------------------- the schedule


def test_local_updates_take_full_batches_without_replacement_across_epochs():
    t = LocalTraining(lr=1.0, batch_size=4, local_updates=7, grad_accum=2)
    steps = schedule(t, 10, torch.Generator().manual_seed(0))
    assert len(steps) == 7 == t.steps_per_round(10)
    assert all(len(group) == 2 and all(len(mb) == 4 for mb in group) for group in steps)
    draws = [int(i) for group in steps for mb in group for i in mb]
    assert len(draws) == 56 and windows_without_repeats(draws, 10)
    assert sorted(draws[:10]) == list(range(10)) and sorted(draws[40:50]) == list(range(10))
    # the same seed draws the same schedule, another seed another one
    again = schedule(t, 10, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for ga, gb in zip(steps, again) for a, b in zip(ga, gb))
    other = [int(i) for g in schedule(t, 10, torch.Generator().manual_seed(1)) for mb in g for i in mb]
    assert other != draws


def test_local_epochs_visit_every_item_once_per_epoch():
    t = LocalTraining(lr=1.0, batch_size=8, local_updates=0, local_epochs=2.0)
    steps = schedule(t, 20, torch.Generator().manual_seed(0))
    sizes = [len(mb) for group in steps for mb in group]
    assert sizes == [8, 8, 8, 8, 8] and len(steps) == 5 == t.steps_per_round(20)  # 40 items, batches cross epochs
    draws = [int(i) for group in steps for mb in group for i in mb]
    assert sorted(draws[:20]) == list(range(20)) and sorted(draws[20:]) == list(range(20))
    half = LocalTraining(lr=1.0, batch_size=8, local_updates=0, local_epochs=0.5, grad_accum=2)
    steps = schedule(half, 20, torch.Generator().manual_seed(0))
    assert [len(mb) for g in steps for mb in g] == [8, 2] and len(steps) == 1 == half.steps_per_round(20)


def test_a_client_with_one_item_trains_on_it_once_per_step_not_on_copies():
    t = LocalTraining(lr=1.0, batch_size=8, local_updates=8)
    steps = schedule(t, 1, torch.Generator().manual_seed(0))
    assert [[mb.tolist() for mb in group] for group in steps] == [[[0]]] * 8
    assert t.micro_batch_size(1) == 1 and t.steps_per_round(1) == 8
    epochs = LocalTraining(lr=1.0, batch_size=8, local_updates=0, local_epochs=2.0)
    steps = schedule(epochs, 3, torch.Generator().manual_seed(0))  # 6 items of 3: two micro-batches of 3, not one of 6
    assert [sorted(mb.tolist()) for g in steps for mb in g] == [[0, 1, 2], [0, 1, 2]] and epochs.steps_per_round(3) == 2


@pytest.mark.parametrize("n,batch_size,grad_accum,updates", [(3, 2, 1, 9), (5, 4, 3, 7), (7, 7, 2, 5), (4, 9, 1, 6),
                                                              (10, 3, 2, 11), (2, 2, 4, 3)])
def test_no_micro_batch_holds_an_item_twice_even_across_permutations(n, batch_size, grad_accum, updates):
    t = LocalTraining(lr=1.0, batch_size=batch_size, local_updates=updates, grad_accum=grad_accum)
    for seed in range(20):
        steps = schedule(t, n, torch.Generator().manual_seed(seed))
        micro = [mb.tolist() for g in steps for mb in g]
        assert len(steps) == updates and all(len(mb) == min(batch_size, n) for mb in micro)
        assert all(len(set(mb)) == len(mb) for mb in micro), (seed, micro)
        assert windows_without_repeats([i for mb in micro for i in mb], n)


def test_a_draw_that_meets_no_repeat_is_the_plain_permutation_stream():
    # moving repeats back changes nothing else: batches that fit a permutation are its consecutive items
    t = LocalTraining(lr=1.0, batch_size=5, local_updates=4)
    gen = torch.Generator().manual_seed(3)
    perms = torch.cat([torch.randperm(10, generator=gen) for _ in range(2)]).tolist()
    steps = schedule(t, 10, torch.Generator().manual_seed(3))
    assert [i for g in steps for mb in g for i in mb.tolist()] == perms


def test_warmup_is_linear_over_the_global_step():
    t = LocalTraining(lr=0.4, warmup_steps=4)
    assert [t.lr_at(0.4, s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert LocalTraining(lr=0.4).lr_at(0.4, 0) == 0.4


# ------------------------------------------------------------------------- every workload, one meaning


def _mamba(tmp):
    from fedctl.tasks.mamba import MambaConfig, MambaTask

    cfg = MambaConfig(preset="tiny", demo_sentences=100, seq_len=16, vocab_size=300, batch_size=8, chunk_size=16)
    return MambaTask(cfg, TaskContext(num_clients=2, seed=0, device=CPU, log=lambda _: None))


def _glue(tmp):
    from fedctl.tasks.glue import GlueConfig, GlueTask

    cfg = GlueConfig(demo_train_examples=60, demo_val_examples=10, max_length=16, batch_size=4)
    return GlueTask(cfg, TaskContext(num_clients=2, seed=0, device=CPU, log=lambda _: None))


def _speech(tmp):
    from fedctl.tasks.hubert import data as hdata

    return hdata.demo_data(tmp, 2, 4, 4, 8, lambda _: None)


def _hubert(tmp):
    from fedctl.tasks.hubert import HubertPretrainConfig, HubertTask

    parts, labels = _speech(tmp)
    cfg = HubertPretrainConfig(preset="tiny", parts=str(parts), labels=str(labels), max_batch_seconds=3.0)
    return HubertTask(cfg, TaskContext(num_clients=2, seed=0, device=CPU, run_dir=tmp, log=lambda _: None))


def _distill(tmp):
    from fedctl.tasks.distill import DistillConfig, DistillTask
    from fedctl.tasks.hubert.model import export_pretrained

    teacher_task = _hubert(tmp)
    hf = export_pretrained(teacher_task.build_model().eval(), tmp / "teacher")
    parts, labels = _speech(tmp)
    cfg = DistillConfig(teacher=str(hf), parts=str(parts), labels=str(labels), student_layers=1, max_batch_seconds=3.0)
    return DistillTask(cfg, TaskContext(num_clients=2, seed=0, device=CPU, run_dir=tmp, log=lambda _: None))


def _asr(tmp):
    from fedctl.data.speech.demo import demo_partition
    from fedctl.tasks.asr import AsrConfig, AsrTask

    parts = demo_partition(tmp, 2, 2, 5, lambda _: None)
    return AsrTask(AsrConfig(parts=str(parts), batch_size=3), TaskContext(num_clients=2, seed=0, device=CPU, log=lambda _: None))


@pytest.mark.parametrize("build", [_mamba, _glue, _hubert, _distill, _asr], ids=lambda f: f.__name__[1:])
def test_every_workload_takes_exactly_its_steps_and_sees_each_item_once_per_epoch(build, tmp_path, monkeypatch):
    task = build(tmp_path)
    cid = task.client_ids()[0]
    n = task.train_items(cid)
    drawn: list[int] = []
    make_batch = task.make_batch
    monkeypatch.setattr(task, "make_batch", lambda c, items, gen: (drawn.extend(items.tolist()), make_batch(c, items, gen))[1])
    steps_taken = []
    make_optimizer = local.make_optimizer

    def counting_optimizer(*args, **kwargs):
        opt = make_optimizer(*args, **kwargs)
        step = opt.step
        opt.step = lambda *a, **k: (steps_taken.append(1), step(*a, **k))[1]
        return opt

    monkeypatch.setattr(local, "make_optimizer", counting_optimizer)
    per_micro = task.training.batch_size
    for mode in (dict(local_updates=3, grad_accum=2), dict(local_updates=0, local_epochs=1.0, grad_accum=1)):
        task.training = dataclasses.replace(task.training, **mode)
        drawn.clear()
        steps_taken.clear()
        model = task.build_model()
        result = local.fit(task, model, cid, ClientConfig(server_round=1, client_index=0, seed=5))
        expected = task.training.steps_per_round(n)
        assert len(steps_taken) == expected == result.metrics["steps"], (task.name, mode)
        if mode["local_updates"]:
            assert expected == 3 and len(drawn) == 3 * 2 * per_micro  # full micro-batches, 2 per step
        else:
            assert sorted(drawn) == list(range(n))  # one epoch: every item exactly once
        assert windows_without_repeats(drawn, n), (task.name, mode)
        assert result.num_examples == task.num_examples(cid) and math.isfinite(result.metrics["train_loss"])


# ------------------------------------------------------------------- length buckets and the pass cap


def test_a_micro_batch_over_the_cap_runs_as_cost_sorted_passes_within_it():
    costs = [1.0, 5.0, 2.0, 3.0, 4.0]
    items = torch.tensor([0, 1, 2, 3, 4])
    as_lists = lambda cap: [p.tolist() for p in local.passes(items, costs, cap)]  # noqa: E731
    assert as_lists(8.0) == [[0, 2], [3, 4], [1]]  # padded costs 2·2, 2·4, 1·5
    assert as_lists(25.0) == [[0, 1, 2, 3, 4]] == as_lists(0.0)  # within the cap (5·5) or no cap: untouched
    assert as_lists(0.5) == [[0], [2], [3], [4], [1]]  # costlier than the cap: alone


def test_buckets_sort_each_run_of_a_permutation_by_cost():
    costs = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5]
    t = LocalTraining(lr=1.0, batch_size=2, local_updates=7, bucket_batches=2)  # runs of 4 draws
    steps = schedule(t, 7, torch.Generator().manual_seed(4), costs)
    gen = torch.Generator().manual_seed(4)
    expected = []
    for _ in range(2):
        perm = torch.randperm(7, generator=gen).tolist()
        expected += sorted(perm[:4], key=lambda i: costs[i]) + sorted(perm[4:], key=lambda i: costs[i])
    draws = [i for g in steps for mb in g for i in mb.tolist()]
    assert draws == expected[:14] and windows_without_repeats(draws, 7)


def test_the_asr_cap_bounds_every_forward_pass_and_keeps_the_update(tmp_path, monkeypatch):
    task = _asr(tmp_path)
    cid = task.client_ids()[0]
    costs = task.item_costs(cid)
    assert costs == [u.duration_ms / 1000 for u in task.train[cid]]
    cap = 2.5 * min(costs)  # at most 2 of the shortest utterances per pass
    task.training = dataclasses.replace(task.training, batch_size=4, local_updates=2, grad_accum=2, bucket_batches=0)
    passes: list[list[int]] = []
    make_batch = task.make_batch
    monkeypatch.setattr(task, "make_batch", lambda c, items, gen: (passes.append(items.tolist()), make_batch(c, items, gen))[1])

    def one_round():
        passes.clear()
        model = task.build_model()
        result = local.fit(task, model, cid, ClientConfig(server_round=1, client_index=0, seed=5))
        return model, result, list(passes)

    whole_model, whole, whole_passes = one_round()
    task.training = dataclasses.replace(task.training, max_pass_cost=cap)
    split_model, split, split_passes = one_round()
    assert len(whole_passes) == 4 and len(split_passes) > 4
    for p in split_passes:  # within the cap, or one utterance alone
        assert len(p) * max(costs[i] for i in p) <= cap or len(p) == 1, p
    # the passes of each micro-batch are exactly its items
    merged, k = [], 0
    for mb in whole_passes:
        got = []
        while len(got) < len(mb):
            got += split_passes[k]
            k += 1
        merged.append(sorted(got))
    assert merged == [sorted(mb) for mb in whole_passes] and k == len(split_passes)
    assert split.metrics["items"] == whole.metrics["items"] == 16 and split.metrics["steps"] == 2
    # ds1 has no batch statistics: the same update, up to float summation order
    assert split.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-5)
    for a, b in zip(whole_model.state_dict().values(), split_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
