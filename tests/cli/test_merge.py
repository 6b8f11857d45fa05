"""`fedctl merge svd|naive` through Typer's CliRunner: the documented command line, --json, bad input → exit 1."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fedctl.cli.app import app

runner = CliRunner()
D, K = 12, 10


def _write_adapter(path, r, alpha=8, seed=0, modules=("q", "v"), d=D):
    """A peft-format adapter directory (as save_pretrained writes it) for a 2-layer model."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir()
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(modules),
        "use_rslora": False,
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    sd = {}
    for layer in range(2):
        for m in modules:
            sd[f"base_model.model.layers.{layer}.{m}.lora_A.weight"] = torch.randn(r, K, generator=g)
            sd[f"base_model.model.layers.{layer}.{m}.lora_B.weight"] = torch.randn(d, r, generator=g)
    save_file(sd, str(path / "adapter_model.safetensors"))


@pytest.fixture
def adapters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate("abc"):
        _write_adapter(tmp_path / name, r=2 + i, seed=i)  # ranks 2, 3, 4: Σr = 9
    return tmp_path


def _delta(path, module):
    sd = load_file(path / "adapter_model.safetensors")
    cfg = json.loads((path / "adapter_config.json").read_text())
    b, a = (sd[f"base_model.model.{module}.lora_{s}.weight"].double() for s in "BA")
    return cfg["lora_alpha"] / cfg["r"] * b @ a


def test_usage_line_from_the_issue(adapters):
    result = runner.invoke(app, "merge svd --adapters a/ b/ c/ --svd-rank 8 --out fused/".split())
    assert result.exit_code == 0, result.output
    assert "✓ Saved fused" in result.stdout and "layers.1.v" in result.stdout
    config = json.loads((adapters / "fused" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8
    manifest = json.loads((adapters / "fused" / "fuse_manifest.json").read_text())
    assert manifest["inputs"] == ["a", "b", "c"] and manifest["weights"] == pytest.approx([1 / 3] * 3)
    assert [m["ranks_in"] for m in manifest["modules"]] == [[2, 3, 4]] * 4
    assert all(0 < m["rel_error"] < 1 for m in manifest["modules"])  # rank 8 < Σr = 9: truncated


def test_exact_merge_with_weights_and_json(adapters):
    args = "merge svd --adapters a b c --weights 1 1 2 --svd-rank 9 --alpha 18 --out exact --json".split()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["weights"] == [0.25, 0.25, 0.5] and manifest["alpha_out"] == 18
    module = "layers.0.q"
    exact = sum(w * _delta(adapters / n, module) for w, n in zip([0.25, 0.25, 0.5], "abc", strict=True))
    got = _delta(adapters / "exact", module)
    assert float((got - exact).norm() / exact.norm()) < 1e-6  # float32 storage
    assert manifest["max_rel_error"] < 1e-12


def test_shard_manifests_give_the_weights(adapters):
    (adapters / "client_0.json").write_text(json.dumps([0, 1, 2]))
    (adapters / "client_1.json").write_text(json.dumps({"indices": [3, 4, 5, 6, 7, 8]}))
    (adapters / "client_2.json").write_text(json.dumps(list(range(9, 18))))
    args = "merge svd --adapters a b c --shard-manifests client_0.json client_1.json client_2.json --out s --json"
    result = runner.invoke(app, args.split())
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["raw_weights"] == [3.0, 6.0, 9.0] and manifest["weights"] == pytest.approx(
        [1 / 6, 1 / 3, 1 / 2]
    )
    assert manifest["svd_rank"] == 4  # default: the largest client rank


def test_naive_merge_of_equal_ranks(adapters):
    _write_adapter(adapters / "d", r=2, seed=7)
    result = runner.invoke(app, "merge naive --adapters a d --weights 3 1 --out avg".split())
    assert result.exit_code == 0, result.output
    got, a, d = (load_file(adapters / n / "adapter_model.safetensors") for n in ("avg", "a", "d"))
    key = "base_model.model.layers.1.v.lora_B.weight"
    assert torch.allclose(got[key], 0.75 * a[key] + 0.25 * d[key], atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("merge svd --adapters a b c --weights 1 2 --out o", "--weights gives 2 weights for 3 adapters"),
        ("merge svd --adapters a b c --weights 1 -2 3 --out o", "negative"),
        ("merge svd --adapters a b c --weights 0 0 0 --out o", "sums to zero"),
        ("merge naive --adapters a b --out o", "adapter b has rank 3 and a rank 2"),
        ("merge svd --adapters a missing --out o", "adapter directory not found: missing"),
        (
            "merge svd --adapters a other --out o",
            "adapter other has no LoRA on module base_model.model.layers.0.v",
        ),
        (
            "merge svd --adapters a wide --out o",
            "adapter wide: module base_model.model.layers.0.q adapts a 14×10",
        ),
        (
            "merge svd --adapters a nan --out o",
            "adapter nan: tensor base_model.model.layers.0.q.lora_A.weight",
        ),
        (
            "merge svd --adapters a corrupt --out o",
            "adapter corrupt: adapter_model.safetensors is unreadable",
        ),
        ("merge svd --adapters a noconfig --out o", "adapter noconfig: adapter_config.json is missing"),
        ("merge svd --out o", "no adapters given"),
    ],
)
def test_bad_input_exits_1_with_a_one_line_error(adapters, args, message):
    _write_adapter(adapters / "other", r=2, modules=("q",))
    _write_adapter(adapters / "wide", r=2, d=14)
    _write_adapter(adapters / "nan", r=2)
    sd = load_file(adapters / "nan" / "adapter_model.safetensors")
    sd["base_model.model.layers.0.q.lora_A.weight"][1, 1] = float("nan")
    save_file(sd, str(adapters / "nan" / "adapter_model.safetensors"))
    _write_adapter(adapters / "corrupt", r=2)
    (adapters / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    _write_adapter(adapters / "noconfig", r=2)
    (adapters / "noconfig" / "adapter_config.json").unlink()

    result = runner.invoke(app, args.split())
    assert result.exit_code == 1, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message in error[0], result.stderr
    assert "Hint:" in result.stderr and "Traceback" not in result.output
    assert not (adapters / "o").exists()
