"""The Mamba2 workload: data sharding, tokenizer, deterministic local training, evaluation, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tokenizers import Tokenizer

from fedctl.core import local
from fedctl.core.instructions import ClientInstructions
from fedctl.core.task import ClientConfig, TaskContext, proximal_term
from fedctl.errors import FedctlError
from fedctl.tasks.mamba import MambaConfig, MambaTask
from fedctl.tasks.mamba import data as mdata

# The tiny preset (chunk 32 = seq_len: the pure-torch scan pads nothing); 4 local steps keep fits cheap.
SMALL = dict(demo_sentences=800, seq_len=32, batch_size=8, eval_batches=4, local_updates=4)


def make_task(num_clients: int = 2, seed: int = 0, run_dir=None, **overrides) -> MambaTask:
    cfg = MambaConfig(**{**SMALL, **overrides})
    ctx = TaskContext(num_clients=num_clients, seed=seed, device=torch.device("cpu"), run_dir=run_dir, log=lambda _: None)
    return MambaTask(cfg, ctx)



@pytest.fixture(scope="module")
def task() -> MambaTask:
    return make_task(num_clients=3)


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("n,k", [(10, 3), (9, 3), (4, 4), (101, 7)])
def test_contiguous_and_interleaved_partition_the_blocks_exactly(n, k):
    contiguous = mdata.shard_indices(n, k, "contiguous")
    interleaved = mdata.shard_indices(n, k, "interleaved")
    for shards in (contiguous, interleaved):
        assert len(shards) == k
        assert torch.equal(torch.cat(shards).sort().values, torch.arange(n))  # every block exactly once
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    for s in contiguous:  # consecutive runs, in client order
        assert torch.equal(s, torch.arange(int(s[0]), int(s[0]) + len(s)))
    assert torch.equal(torch.cat(contiguous), torch.arange(n))
    for client, s in enumerate(interleaved):
        assert torch.all(s % k == client)


def test_blocks_overlap_by_one_token_so_every_token_is_a_label_once():
    ids = torch.arange(100)
    blocks = mdata.make_blocks(ids, seq_len=8)
    assert blocks.shape == (12, 9)  # (100 - 1) // 8
    assert torch.equal(blocks[1:, 0], blocks[:-1, -1])
    assert torch.equal(blocks[:, 1:].flatten(), torch.arange(1, 97))


def test_task_shards_cover_the_training_blocks(task):
    d = task.describe()
    assert d["train_blocks"] == len(task.data.train_blocks) > 0
    assert sum(d["blocks_per_client"]) == d["train_blocks"] and len(d["blocks_per_client"]) == 3
    assert task.data.train_blocks.shape[1] == 32 + 1
    assert d["vocab_size"] == 2048 and d["parameters"] == sum(p.numel() for p in task.build_model().parameters())
    assert task.client_ids() == ["client_0", "client_1", "client_2"]
    inter = make_task(num_clients=3, shard="interleaved")
    assert torch.equal(inter.data.train_blocks, task.data.train_blocks)
    assert [len(s) for s in inter.data.shards] == d["blocks_per_client"]
    assert torch.equal(inter.data.shards[1], torch.arange(1, d["train_blocks"], 3))


def test_tokenizer_round_trips_and_is_saved_with_the_run(tmp_path):
    t = make_task(num_clients=2, run_dir=tmp_path)
    saved = tmp_path / "tokenizer.json"
    assert saved.is_file()
    text = "the sailor watched the stormy harbor.\nwe were silent and generous.\n"
    ids = t.tokenizer.encode(text).ids
    assert t.tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges learned words, not just bytes
    reloaded = Tokenizer.from_file(str(saved))
    assert reloaded.encode(text).ids == ids
    # the saved tokenizer can be passed back in, and then no new one is written
    t2 = make_task(num_clients=2, tokenizer=str(saved))
    assert t2.vocab_size == t.vocab_size and torch.equal(t2.data.train_blocks, t.data.train_blocks)


def test_local_text_files_directory_and_single_file(tmp_path):
    lines = [f"line {i} about the harbor and the ship.\n" for i in range(400)]
    (tmp_path / "wiki.train.raw").write_text("".join(lines[:360]))
    (tmp_path / "wiki.valid.raw").write_text("".join(lines[360:]))
    t = make_task(num_clients=2, data=str(tmp_path), vocab_size=512)
    assert "wiki.train.raw" in t.data.source and t.data.val_tokens > 0
    single = tmp_path / "all.txt"
    single.write_text("".join(lines))
    t = make_task(num_clients=2, data=str(single), vocab_size=512, val_fraction=0.25)
    assert t.data.val_tokens == pytest.approx(t.data.train_tokens / 3, rel=0.1)  # 100 of 400 lines held out


# ------------------------------------------------------------------------------------- training


def test_build_model_is_deterministic_and_leaves_global_rng_alone(task):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = task.build_model(), task.build_model()
    assert torch.equal(torch.get_rng_state(), before)
    assert_same_weights(a, b)
    assert task.shared_keys(a) == list(a.state_dict().keys())
    other = make_task(num_clients=3, seed=1).build_model()
    assert not torch.equal(a.lm_head.weight, other.lm_head.weight)


def test_fit_is_bitwise_reproducible_and_seed_dependent(task):
    base = task.build_model()
    models = [copy.deepcopy(base) for _ in range(3)]
    cfgs = [ClientConfig(server_round=2, client_index=1, seed=s, keep_optimizer_state=True) for s in (5, 5, 6)]
    results = [local.fit(task, m, "client_1", c) for m, c in zip(models, cfgs)]
    assert_same_weights(models[0], models[1])
    assert not torch.equal(models[0].lm_head.weight, models[2].lm_head.weight)
    assert results[0].metrics == results[1].metrics and results[0].metrics["steps"] == 4.0
    assert results[0].num_examples == len(task.shard("client_1"))
    state = results[0].optimizer_state
    assert state is not None and len(state["state"]) == len(list(base.parameters()))
    # a loaded optimizer state is not modified by the next fit
    snapshot = copy.deepcopy(state)
    local.fit(task, models[0], "client_1", ClientConfig(server_round=3, client_index=1, seed=7, keep_optimizer_state=True, optimizer_state=state))
    assert all(torch.equal(snapshot["state"][i]["exp_avg"], state["state"][i]["exp_avg"]) for i in state["state"])


def test_thirty_steps_reduce_loss_on_the_demo_corpus():
    t = make_task(num_clients=1, local_updates=30)
    model = t.build_model()
    before = t.evaluate(model)
    result = local.fit(t, model, "client_0", ClientConfig(server_round=1, client_index=0, seed=0))
    after = t.evaluate(model)
    assert result.metrics["steps"] == 30.0
    assert before["val_loss"] > 7.0  # ~ln(2048) = 7.6 at init
    assert after["val_loss"] < before["val_loss"] - 1.5
    assert result.metrics["train_loss"] < before["val_loss"] - 0.5


def test_one_client_engine_equals_plain_training_loop():
    from fedctl.core.config import FederationConfig
    from fedctl.core.engine import run_federated
    from fedctl.core.strategies import build_strategy
    from fedctl.core.task import client_seed
    from fedctl.tasks.mamba.task import lm_loss

    rounds, seed, steps, warmup = 3, 7, 3, 4
    t = make_task(num_clients=1, seed=seed, local_updates=steps, warmup_steps=warmup)
    fed = FederationConfig(rounds=rounds, clients=1, keep_optimizer_state=True, checkpoint_every=100)
    engine = run_federated(t, build_strategy("fedavg"), fed, seed=seed)

    # The plain loop, written out: one AdamW for the whole run, linear warmup over the global step, clipping,
    # and each round batches cut from back-to-back seeded permutations of all blocks.
    c = t.cfg
    model = t.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    blocks = t.data.train_blocks
    n = len(blocks)
    for r in range(1, rounds + 1):
        gen = torch.Generator().manual_seed(client_seed(seed, r, 0))
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * c.batch_size // n))])
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = c.lr * min(1.0, ((r - 1) * steps + s + 1) / warmup)
            loss = lm_loss(model, blocks[order[s * c.batch_size : (s + 1) * c.batch_size]])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert_same_weights(model, engine.model)


def test_evaluate_reports_perplexity_and_restores_train_mode(task):
    model = task.build_model()
    metrics = task.evaluate(model)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-12)
    assert math.log(2048) - 1 < metrics["val_loss"] < math.log(2048) + 2
    assert model.training
    client = task.evaluate(model, "client_2")
    assert client["val_ppl"] == pytest.approx(math.exp(client["val_loss"]), rel=1e-12)
    assert task.evaluate(model) == metrics  # deterministic: same blocks, no sampling


def test_fedprox_term_is_zero_at_the_anchor_and_positive_away(task):
    model = task.build_model()
    anchor = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert float(proximal_term(model, anchor, 0.5).detach()) == 0.0
    assert proximal_term(model, anchor, 0.0) == 0.0
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)
    expected = 0.5 * 0.5 * 0.01 * model.lm_head.weight.numel()
    assert float(proximal_term(model, anchor, 0.5).detach()) == pytest.approx(expected, rel=1e-4)
    # and fit uses it: a strong pull keeps the client nearer its anchor
    start = task.build_model()
    anchor = {k: v.detach().clone() for k, v in start.state_dict().items()}
    free, held = copy.deepcopy(start), copy.deepcopy(start)
    local.fit(task, free, "client_0", ClientConfig(server_round=1, client_index=0, seed=1))
    local.fit(task, held, "client_0", ClientConfig(server_round=1, client_index=0, seed=1, instructions=ClientInstructions(proximal_mu=50.0), anchor=anchor))
    dist = [sum((p - anchor[n]).pow(2).sum() for n, p in m.named_parameters()).sqrt() for m in (free, held)]
    assert dist[1] < dist[0]


def test_generate_and_export(task, tmp_path):
    from transformers import AutoTokenizer, Mamba2ForCausalLM

    model = task.build_model()
    sample = task.generate_sample(model, "the ship", max_new_tokens=5)
    assert sample.startswith("the ship") and len(task.tokenizer.encode(sample).ids) == len(task.tokenizer.encode("the ship").ids) + 5
    out = task.export(model, tmp_path / "final")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert_same_weights(Mamba2ForCausalLM.from_pretrained(out), model)
    assert AutoTokenizer.from_pretrained(out)("the ship").input_ids == task.tokenizer.encode("the ship").ids


# --------------------------------------------------------------------------------------- errors


def error_of(**kw) -> FedctlError:
    num_clients = kw.pop("num_clients", 2)
    with pytest.raises(FedctlError) as info:
        make_task(num_clients=num_clients, **kw)
    return info.value


def test_bad_inputs_are_fedctl_errors_naming_the_problem(tmp_path):
    assert "not found" in error_of(data=str(tmp_path / "nope.txt")).message
    (tmp_path / "empty.txt").write_text("  \n")
    assert "empty" in error_of(data=str(tmp_path / "empty.txt")).message
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.md").write_text("hello")
    err = error_of(data=str(tmp_path / "d"))
    assert "no recognised text files" in err.message and "wiki.train.raw" in err.hint and "train.txt" in err.hint
    (tmp_path / "tok.json").write_text("{not json")
    assert "does not load" in error_of(tokenizer=str(tmp_path / "tok.json")).message
    err = error_of(preset="huge")
    assert "huge" in err.message and "pure_ssm_4_layer" in err.hint and "tiny" in err.hint
    assert "head_dim" in error_of(hidden_size=100, head_dim=48).message
    assert "n_groups" in error_of(n_groups=3).message  # tiny has 8 heads
    err = error_of(num_clients=500)
    assert "500 clients" in err.message and "each client would get" in err.message
    assert "shard" in error_of(shard="random").message
    assert "val_fraction" in error_of(val_fraction=1.5).message


def test_wikitext_name_uses_the_local_cache_only(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    err = error_of(data="wikitext-2")
    assert "cache" in err.message and "wiki.train.raw" in err.hint


def test_eval_examples_counts_the_blocks_a_client_evaluation_scores(task, monkeypatch):
    from fedctl.tasks.mamba import task as mamba_task

    seen = []
    real = mamba_task.lm_loss
    monkeypatch.setattr(mamba_task, "lm_loss", lambda model, batch, **kw: seen.append(batch.shape[0]) or real(model, batch, **kw))
    model = task.build_model()
    for cid in task.client_ids():
        seen.clear()
        task.evaluate(model, cid)
        assert task.eval_examples(cid) == sum(seen) > 0
