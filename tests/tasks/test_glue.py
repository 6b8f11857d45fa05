"""The GLUE workload: ΔW-space (svd) aggregation math, the strategy wrapper, LoRA model contract,
peft-format export and warm start, client statistics under vmap, bad input, and the demo learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedctl.core import local
from fedctl.core.client_stats import diagonal_fisher, diagonal_fisher_loop, softmax_weights
from fedctl.core.config import FederationConfig
from fedctl.core.engine import run_federated
from fedctl.core.strategies import ClientUpdate, build_strategy
from fedctl.core.task import ClientConfig, TaskContext
from fedctl.errors import FedctlError
from fedctl.tasks.glue import GlueConfig, GlueTask, LoraSpaceStrategy, svd_space_mean

SMALL = dict(demo_train_examples=90, demo_val_examples=30, max_length=32, local_updates=2, batch_size=8)
MOD = "base_model.model.enc.query"


def make_task(num_clients: int = 3, seed: int = 0, run_dir=None, **overrides) -> GlueTask:
    ctx = TaskContext(num_clients=num_clients, seed=seed, device=torch.device("cpu"), run_dir=run_dir, log=lambda _: None)
    return GlueTask(GlueConfig(**{**SMALL, **overrides}), ctx)



@pytest.fixture(scope="module")
def task() -> GlueTask:
    return make_task()


@pytest.fixture(scope="module")
def model(task):
    return task.build_model()


def lora_state(B, A, head):
    return {f"{MOD}.lora_A.default.weight": A, f"{MOD}.lora_B.default.weight": B,
            "base_model.model.classifier.modules_to_save.default.weight": head}


def delta(state, s):
    return s * state[f"{MOD}.lora_B.default.weight"].double() @ state[f"{MOD}.lora_A.default.weight"].double()


# ------------------------------------------------------------------------------------------ svd-space math


def test_svd_space_mean_of_one_client_returns_its_delta_w():
    g = torch.Generator().manual_seed(0)
    client = lora_state(torch.randn(12, 4, generator=g), torch.randn(4, 10, generator=g), torch.randn(2, 12, generator=g))
    out = svd_space_mean([client], [1.0], svd_rank=4, scale=0.5, like=client)
    assert torch.allclose(delta(out, 0.5), delta(client, 0.5), atol=1e-5)
    assert torch.equal(out["base_model.model.classifier.modules_to_save.default.weight"],
                       client["base_model.model.classifier.modules_to_save.default.weight"])


def test_svd_space_mean_is_the_best_rank_r_approximation_of_the_weighted_mean():
    g = torch.Generator().manual_seed(1)
    clients = [lora_state(torch.randn(12, 3, generator=g), torch.randn(3, 10, generator=g), torch.randn(2, 12, generator=g))
               for _ in range(3)]
    w = [0.5, 0.3, 0.2]
    exact = sum(wi * delta(c, 2.0) for wi, c in zip(w, clients))
    out = svd_space_mean(clients, w, svd_rank=3, scale=2.0, like=clients[0])
    U, S, Vh = torch.linalg.svd(exact)
    assert torch.allclose(delta(out, 2.0), (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-4)
    head = sum(wi * c["base_model.model.classifier.modules_to_save.default.weight"] for wi, c in zip(w, clients))
    assert torch.allclose(out["base_model.model.classifier.modules_to_save.default.weight"], head, atol=1e-6)


def test_spare_rank_is_reinitialised_like_lora_without_changing_delta_w():
    g = torch.Generator().manual_seed(2)
    clients = [lora_state(torch.randn(12, 4, generator=g), torch.randn(4, 10, generator=g), torch.zeros(2, 12))
               for _ in range(2)]
    out = svd_space_mean(clients, [0.5, 0.5], svd_rank=2, scale=1.0, like=clients[0], seed=3)
    B, A = out[f"{MOD}.lora_B.default.weight"], out[f"{MOD}.lora_A.default.weight"]
    assert B.shape == (12, 4) and torch.all(B[:, 2:] == 0)  # spare columns of B are zero: ΔW is the rank-2 truncation
    assert torch.all(A[2:].abs() > 0) and A[2:].abs().max() <= 10 ** -0.5  # spare rows of A: uniform ±1/√k
    exact = 0.5 * delta(clients[0], 1.0) + 0.5 * delta(clients[1], 1.0)
    U, S, Vh = torch.linalg.svd(exact)
    assert torch.allclose(delta(out, 1.0), (U[:, :2] * S[:2]) @ Vh[:2], atol=1e-4)


def test_wrapper_keeps_the_strategy_weights_and_rejects_non_mean_strategies():
    g = torch.Generator().manual_seed(4)
    clients = [lora_state(torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g), torch.randn(2, 6, generator=g))
               for _ in range(2)]
    for name, stats, weights in (("fedavg", {}, [1 / 4, 3 / 4]),
                                 ("fedentropy", {"entropy": None}, softmax_weights([0.2, 0.9], [10, 30], 1.0))):
        wrapper = LoraSpaceStrategy(build_strategy(name), merge="svd", svd_rank=2, scale=1.0)
        agg = wrapper.begin(1, clients[0])
        for i, (c, n) in enumerate(zip(clients, (10, 30))):
            agg.add(ClientUpdate(f"c{i}", c, n, {}, {"entropy": [0.2, 0.9][i]} if stats else {}))
        assert agg.weights() == pytest.approx(weights)
    for name in ("krum", "fedmedian", "fedtrimmedavg", "fedfisher"):
        with pytest.raises(FedctlError) as exc:
            LoraSpaceStrategy(build_strategy(name), merge="svd")
        assert "--merge naive" in exc.value.hint
        LoraSpaceStrategy(build_strategy(name), merge="naive")  # naive: any strategy


# ------------------------------------------------------------------------------------------ the LoRA task


def test_model_is_deterministic_and_only_adapters_and_head_travel(task, model):
    keys = task.shared_keys(model)
    assert keys and all(".lora_A." in k or ".lora_B." in k or "classifier.modules_to_save" in k for k in keys)
    assert sum(".lora_A." in k for k in keys) == 12  # 6 layers × (query, value)
    again = task.build_model().state_dict()
    assert all(torch.equal(again[k], model.state_dict()[k]) for k in keys)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {k: model.state_dict()[k].clone() for k in keys}
    res = local.fit(task, model, "client_1", ClientConfig(server_round=1, client_index=1, seed=5))
    assert res.num_examples == 30 and res.metrics["steps"] == 2 and math.isfinite(res.metrics["train_loss"])
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in frozen.items())  # the base stays frozen
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in keys)


def test_evaluate_reports_the_official_metric(task, model):
    metrics = task.evaluate(model)
    assert set(metrics) == {"val_accuracy", "val_loss"} and 0 <= metrics["val_accuracy"] <= 1
    assert set(task.evaluate(model, "client_0")) == {"val_accuracy", "val_loss"}


def test_peft_export_and_warm_start_reproduce_the_model(task, model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    with torch.no_grad():  # make every adapter matter
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    inputs, _ = task.train.batch(torch.arange(6), torch.device("cpu"))
    model.eval()
    want = model(**inputs).logits
    task.export(model, tmp_path / "final")
    config = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8 and "classifier" in config["modules_to_save"]
    base = AutoModelForSequenceClassification.from_pretrained(str(task.model_dir), num_labels=2)
    loaded = PeftModel.from_pretrained(base, tmp_path / "final").eval()
    assert torch.allclose(loaded(**inputs).logits, want, atol=1e-5)
    warm = make_task(init_adapter=str(tmp_path / "final"), lora_r=12, lora_alpha=24.0).build_model().eval()
    assert torch.allclose(warm(**inputs).logits, want, atol=1e-5)  # other rank and alpha: same ΔW and head
    model.train()


def test_fisher_under_vmap_matches_the_loop_and_forward_logits_matches_forward(task, model):
    inputs = task.stat_examples("client_0", 6)
    model.eval()
    logits, labels = task.forward_logits(model, inputs)
    plain = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert torch.allclose(logits, plain, atol=1e-5) and labels.shape == (6,)
    keys = task.shared_keys(model)
    fast = diagonal_fisher(task, model, "client_0", max_examples=6, chunk=3, keys=keys, mode="empirical")
    slow = diagonal_fisher_loop(task, model, "client_0", max_examples=6, mode="empirical")
    assert set(fast) == set(keys)
    for k in keys:
        assert torch.allclose(fast[k], slow[k], rtol=1e-3, atol=1e-10), k
    model.train()


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_error_with_a_fix(tmp_path):
    with pytest.raises(FedctlError, match="unknown GLUE task 'sst4'"):
        make_task(glue_task="sst4")
    (tmp_path / "s").mkdir()
    for k, idx in enumerate([[0, 1], [2, 5000]]):
        (tmp_path / "s" / f"client_{k}.json").write_text(json.dumps({"indices": idx}))
    with pytest.raises(FedctlError, match="index 5000 is beyond the training set"):
        make_task(num_clients=2, shards=str(tmp_path / "s"))
    with pytest.raises(FedctlError, match="holds 2 client shards but the run has 3"):
        (tmp_path / "s" / "client_1.json").write_text(json.dumps({"indices": [2, 3]}))
        make_task(num_clients=3, shards=str(tmp_path / "s"))
    with pytest.raises(FedctlError, match="svd_rank"):
        make_task(svd_rank=16)
    with pytest.raises(FedctlError) as exc:
        make_task(target_modules=["nonexistent"]).build_model()
    assert "query" in exc.value.hint
    with pytest.raises(FedctlError) as exc:
        make_task(model=str(tmp_path / "nowhere-model"))
    assert "offline" in exc.value.message


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.system
def test_federated_lora_on_the_demo_learns(tmp_path):
    # 3 clients × 10 steps × 3 rounds of svd-merged LoRA: ~81% here (the CLI demo, 900 examples, gets ≥ 88%)
    task = make_task(run_dir=tmp_path, demo_train_examples=300, demo_val_examples=100, local_updates=10, batch_size=16)
    strategy = task.wrap_strategy(build_strategy("fedavg"))
    result = run_federated(task, strategy, FederationConfig(rounds=3, clients=3, eval_every=3), seed=0, run_dir=tmp_path)
    assert result.last("val_accuracy") >= 0.7
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["round_001", "round_002", "round_003"]
    fused = json.loads((tmp_path / "adapters" / "round_003" / "fused" / "adapter_config.json").read_text())
    assert fused["r"] == 8 and fused["task_type"] == "SEQ_CLS"


def test_eval_clients_gives_each_clients_own_adapter_on_its_held_out_rows():
    """`train lora --eval-clients`: besides the global model on each client's rows, every trained client's own
    adapter (personalised) on its held-out share, which it never trained on."""
    t = make_task(num_clients=2, client_val_fraction=0.2)
    for k, cid in enumerate(t.client_ids()):
        held, train = set(t.held_out[k].tolist()), set(t.shard(cid).tolist())
        assert held and not held & train and len(held) == 9  # round(0.2 · 45)
        assert t.eval_examples(cid) == 9
    cfg = FederationConfig(rounds=1, clients=2, eval_clients=True)
    res = run_federated(t, t.wrap_strategy(build_strategy("fedavg")), cfg, seed=0)
    personal = [r for r in res.history if r.get("scope") == "personal"]
    global_rows = [r for r in res.history if r.get("scope") == "client"]
    assert [r["client_id"] for r in personal] == [r["client_id"] for r in global_rows] == ["client_0", "client_1"]
    assert all(r["num_examples"] == 9 and 0 <= r["val_accuracy"] <= 1 for r in personal)
    # the personalised adapter is not the global one: its loss on the same held-out rows differs
    assert all(p["val_loss"] != g["val_loss"] for p, g in zip(personal, global_rows))
    with pytest.raises(FedctlError, match="client_val_fraction"):
        make_task(client_val_fraction=1.0)
