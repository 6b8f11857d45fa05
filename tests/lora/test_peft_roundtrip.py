"""Merged adapter directories load with peft and carry the merged ΔW (tiny random BERT, nothing downloads)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from fedctl.errors import FedctlError  # noqa: E402
from fedctl.lora.merge import merge_adapter_dirs  # noqa: E402

CONFIG = BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
    num_labels=3,
)
# (r, lora_alpha, use_rslora): heterogeneous ranks and scales 2, 1, 8/√4 = 4
CLIENTS = [(2, 4, False), (3, 3, False), (4, 8, True)]
SHARDS = [list(range(10)), {"indices": list(range(30))}, list(range(60))]  # weights 0.1, 0.3, 0.6


def _base():
    torch.manual_seed(0)
    return BertForSequenceClassification(CONFIG).eval()


def _lora_layers(model):
    return {
        name.removeprefix("base_model.model."): mod
        for name, mod in model.named_modules()
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {})
    }


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    dirs, deltas, heads = [], [], []
    for i, (r, alpha, rslora) in enumerate(CLIENTS):
        torch.manual_seed(100 + i)
        config = LoraConfig(
            task_type="SEQ_CLS",
            r=r,
            lora_alpha=alpha,
            use_rslora=rslora,
            target_modules=["query", "value"],
            init_lora_weights=False,  # random B too, so every ΔW is non-zero
        )
        model = get_peft_model(_base(), config)
        torch.nn.init.normal_(model.base_model.model.classifier.modules_to_save["default"].weight)
        model.save_pretrained(root / f"client_{i}")
        (root / f"client_{i}.json").write_text(json.dumps(SHARDS[i]))
        dirs.append(root / f"client_{i}")
        deltas.append(
            {n: m.get_delta_weight("default").detach().double() for n, m in _lora_layers(model).items()}
        )
        heads.append(model.base_model.model.classifier.modules_to_save["default"].weight.detach().double())
    return root, dirs, deltas, heads


def _load(out):
    return PeftModel.from_pretrained(_base(), out)


def test_exact_svd_merge_loads_in_peft_with_the_weighted_mean_delta(clients, tmp_path):
    root, dirs, deltas, heads = clients
    shards = [root / f"client_{i}.json" for i in range(3)]
    manifest = merge_adapter_dirs(
        dirs, "svd", shard_manifests=shards, svd_rank=9, alpha=18, out=tmp_path / "fused"
    )
    assert manifest["weights"] == pytest.approx([0.1, 0.3, 0.6])
    assert manifest["raw_weights"] == [10.0, 30.0, 60.0] and manifest["ranks"] == [[2], [3], [4]]
    assert len(manifest["modules"]) == 4 and manifest["max_rel_error"] < 1e-12
    saved = json.loads((tmp_path / "fused" / "fuse_manifest.json").read_text())
    assert saved["svd_rank"] == 9 and set(saved["timings_s"]) == {"load", "merge", "save", "total"}

    model = _load(tmp_path / "fused")
    layers = _lora_layers(model)
    assert model.peft_config["default"].r == 9 and layers  # s' = 18 / 9 = 2
    for name, layer in layers.items():
        exact = sum(w * d[name] for w, d in zip([0.1, 0.3, 0.6], deltas, strict=True))
        got = layer.get_delta_weight("default").detach().double()
        assert float((got - exact).norm() / exact.norm()) < 1e-5
    head = model.base_model.model.classifier.modules_to_save["default"].weight.double()
    assert torch.allclose(head, sum(w * h for w, h in zip([0.1, 0.3, 0.6], heads, strict=True)), atol=1e-6)


def test_truncated_svd_merge_error_matches_manifest(clients, tmp_path):
    _, dirs, deltas, _ = clients
    manifest = merge_adapter_dirs(dirs, "svd", weights=[1, 1, 2], svd_rank=3, out=tmp_path / "r3")
    layers = _lora_layers(_load(tmp_path / "r3"))
    for stats in manifest["modules"]:
        name = stats["module"].removeprefix("base_model.model.")
        exact = sum(w * d[name] for w, d in zip([0.25, 0.25, 0.5], deltas, strict=True))
        got = layers[name].get_delta_weight("default").detach().double()
        assert float((got - exact).norm() / exact.norm()) == pytest.approx(stats["rel_error"], rel=1e-4)
        assert stats["ranks_in"] == [2, 3, 4] and stats["rank_out"] == 3 and 0 < stats["rel_error"] < 1


def test_naive_merge_loads_in_peft(clients, tmp_path):
    _, dirs, _, _ = clients
    same_rank = [dirs[0], dirs[0]]  # equal ranks: naive merge of identical adapters is the adapter itself
    merge_adapter_dirs(same_rank, "naive", out=tmp_path / "avg")
    ref, got = _lora_layers(_load(dirs[0])), _lora_layers(_load(tmp_path / "avg"))
    for name in ref:
        assert torch.allclose(got[name].get_delta_weight("default"), ref[name].get_delta_weight("default"))
    with pytest.raises(FedctlError, match="naive merge needs equal LoRA ranks"):
        merge_adapter_dirs(dirs, "naive", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_corrupt_or_nan_adapter_leaves_nothing_behind(clients, tmp_path):
    _, dirs, _, _ = clients
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(dirs[1], broken)
    path = broken / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FedctlError, match=f"adapter {broken}: adapter_model.safetensors is unreadable"):
        merge_adapter_dirs([dirs[0], broken], "svd", out=tmp_path / "out")
    sd = load_file(dirs[1] / "adapter_model.safetensors")
    key = next(k for k in sd if k.endswith("value.lora_A.weight"))
    sd[key][0, 0] = float("nan")
    save_file(sd, str(path))
    with pytest.raises(FedctlError, match=f"adapter {broken}: tensor {key} contains NaN"):
        merge_adapter_dirs([dirs[0], broken], "svd", out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no output, no temp dirs
