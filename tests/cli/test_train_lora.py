"""`fedctl train lora`, `train central --task glue` and `data shard glue` through Typer's CliRunner."""

from __future__ import annotations

import json

import pytest
import torch

TINY = ["--set", "task.demo_train_examples=60", "--set", "task.demo_val_examples=20", "--set", "task.max_length=32",
        "--set", "task.local_updates=2", "--set", "task.batch_size=8"]



def test_lora_svd_run_saves_every_round_in_peft_format(cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    res = cli("train", "lora", "--rounds", 2, "--clients", 2, "--lora-r", 8, "--svd-rank", 4,
              "--target-modules", "query", "value", "--merge", "svd", "--save-clients", "--eval-each-round",
              "--out", run, "--json", *TINY)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rounds"] == 2 and 0 <= summary["final"]["val_accuracy"] <= 1
    assert summary["task"]["target_modules"] == ["query", "value"] and summary["task"]["svd_rank"] == 4
    for r in (1, 2):
        config = json.loads((run / "adapters" / f"round_00{r}" / "fused" / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["lora_alpha"] == 4  # scale 8/8 kept at rank 4
        assert sorted(p.name for p in (run / "adapters" / f"round_00{r}" / "clients").iterdir()) == ["client_0", "client_1"]
    base = AutoModelForSequenceClassification.from_pretrained(json.loads((run / "final" / "hf" / "fedctl_glue.json").read_text())["base_model"], num_labels=2)
    PeftModel.from_pretrained(base, run / "adapters" / "round_002" / "fused")  # loads
    assert (run / "final" / "hf" / "tokenizer.json").is_file()
    assert "[round" not in res.stdout  # --json keeps stdout machine-readable


def test_naive_merge_with_any_strategy_and_central_full(cli, tmp_path):
    res = cli("train", "lora", "--rounds", 1, "--clients", 2, "--merge", "naive", "--strategy", "fedmedian",
              "--out", tmp_path / "n", *TINY)
    assert res.exit_code == 0, res.output
    assert "[round 1/1]" in res.stdout and "val_accuracy=" in res.stdout
    res = cli("train", "central", "--task", "glue", "--full", "--rounds", 1, "--out", tmp_path / "c", "--json", *TINY)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["task"]["finetune"] == "full"
    assert (tmp_path / "c" / "final" / "hf" / "model.safetensors").is_file()


def test_shard_glue_cli_feeds_train_lora(cli, tmp_path):
    res = cli("data", "shard", "glue", "--task", "demo", "--clients", 3, "--mode", "overlap", "--overlap-ratio", 0.1,
              "--seed", 123, "--out", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["shared_examples"] == 90 and summary["assigned_examples"] == 900
    assert [len(json.loads((tmp_path / "s" / f"client_{k}.json").read_text())["indices"]) for k in range(3)] == [360] * 3


@pytest.mark.parametrize(
    "args,message,hint",
    [
        (["--task", "sst4"], "Error: unknown GLUE task 'sst4'", "choose one of: cola, sst2"),
        (["--merge", "svd", "--strategy", "krum"], "has no LoRA ΔW-space (svd) form", "--merge naive"),
        (["--lora-r", "4", "--svd-rank", "8"], "svd_rank = 8 is out of range", "1 ≤ --svd-rank ≤ --lora-r"),
        (["--merge", "mean"], "task.merge = 'mean' is out of range", "svd or --merge naive"),
    ],
)
def test_bad_input_exits_1_with_error_and_hint(cli, tmp_path, args, message, hint):
    res = cli("train", "lora", "--rounds", 1, "--out", tmp_path / "r", *args, *TINY)
    assert res.exit_code == 1
    assert message in res.output and hint in res.output and "Traceback" not in res.output


def test_shard_index_beyond_the_dataset_exits_1(cli, tmp_path):
    (tmp_path / "s").mkdir()
    for k, idx in enumerate([[0, 1], [2, 70]]):
        (tmp_path / "s" / f"client_{k}.json").write_text(json.dumps({"indices": idx}))
    res = cli("train", "lora", "--shards", tmp_path / "s", "--rounds", 1, "--out", tmp_path / "r", *TINY)
    assert res.exit_code == 1
    assert "index 70 is beyond the training set (60 examples)" in res.output and "Hint:" in res.output


def test_lora_deltas_are_the_adapter_updates(cli, tmp_path):
    """--save-deltas on a LoRA run stores exactly the tensors that travel (adapters + head), round by round."""
    from safetensors.torch import load_file

    from fedctl.core.checkpoint import load_checkpoint

    run = tmp_path / "run"
    res = cli("train", "lora", "--rounds", 2, "--clients", 2, "--merge", "naive", "--save-deltas", "every=1",
              "entity=server", "--set", "federation.checkpoint_every=1", "--out", run, *TINY)
    assert res.exit_code == 0, res.output
    g1 = load_checkpoint(run / "checkpoints" / "round_001.pt")["model"]
    g2 = load_checkpoint(run / "checkpoints" / "round_002.pt")["model"]
    d2 = load_file(str(run / "deltas" / "server" / "round_002.safetensors"))
    assert set(d2) == set(g2) and any("lora_A" in k for k in d2) and not any("base_layer" in k for k in d2)
    assert all(torch.allclose(d2[k], g2[k] - g1[k], atol=1e-7) for k in d2)
    info = cli("inspect", "deltas", run, "--json")
    assert info.exit_code == 0 and all("lora" in m["name"] or "classifier" in m["name"]
                                       for m in json.loads(info.stdout)["matrices"])
