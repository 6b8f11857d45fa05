"""Federated distillation: DistilHuBERT sizes and init, both recipes learn, teacher errors, strategy hooks."""

from __future__ import annotations

import json

import pytest
import torch

from fedctl.core import local
from fedctl.core.task import ClientConfig, TaskContext
from fedctl.errors import FedctlError
from fedctl.tasks.distill import DistillConfig, DistillTask, build_distilhubert
from fedctl.tasks.distill.model import default_target_layers
from fedctl.tasks.hubert import HubertPretrainConfig, HubertTask
from fedctl.tasks.hubert import data as hdata

CLUSTERS = 20
DATA = dict(demo_speakers=6, demo_utterances=6, demo_clusters=CLUSTERS, max_batch_seconds=12.0)



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo data and a tiny teacher (a briefly trained tiny HuBERT, exported as `fedctl train hubert` does)."""
    root = tmp_path_factory.mktemp("distill")
    parts, labels = hdata.demo_data(root, 3, 6, 6, CLUSTERS, lambda _: None)
    ctx = TaskContext(num_clients=3, seed=0, device=torch.device("cpu"), run_dir=root, log=lambda _: None)
    hub = HubertTask(HubertPretrainConfig(preset="tiny", parts=str(parts), labels=str(labels), local_updates=3,
                                          max_batch_seconds=12.0), ctx)
    teacher = hub.build_model()
    local.fit(hub, teacher, "client_000", ClientConfig(server_round=1, client_index=0, seed=0))
    hf = hub.export(teacher.eval(), root / "teacher" / "final" / "hf")
    return root, parts, labels, hf


def make_task(setup, **overrides) -> DistillTask:
    root, parts, labels, hf = setup
    cfg = DistillConfig(**{"teacher": str(hf), "parts": str(parts), "labels": str(labels), "local_updates": 4,
                           "lr": 1e-3, **DATA, **overrides})
    ctx = TaskContext(num_clients=3, seed=0, device=torch.device("cpu"), run_dir=root, log=lambda _: None)
    return DistillTask(cfg, ctx)


def run_rounds(task, rounds: int) -> list[float]:
    model = task.build_model()
    losses = [task.evaluate(model)["val_loss"]]
    for r in range(1, rounds + 1):
        for i, cid in enumerate(task.client_ids()):
            local.fit(task, model, cid, ClientConfig(server_round=r, client_index=i, seed=10 * r + i))
        losses.append(task.evaluate(model)["val_loss"])
    return losses


def test_distilhubert_student_of_hubert_base_has_a_quarter_of_its_transformer():
    from transformers import HubertConfig, HubertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = HubertModel(HubertConfig())  # HuBERT Base shapes, random weights
    student = build_distilhubert(teacher, 2, default_target_layers(12))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert default_target_layers(12) == [4, 8, 12]
    assert count(student.hubert.encoder) <= count(teacher.encoder) / 4
    assert count(student) / count(teacher) < 0.30  # DistilHuBERT: 23.5M of 94.7M (~75% fewer)
    assert student.pred_heads.out_features == 3 * 768
    ts, ss = teacher.state_dict(), student.hubert.state_dict()
    for key in ("feature_extractor.conv_layers.0.conv.weight", "encoder.layers.1.feed_forward.output_dense.weight",
                "encoder.pos_conv_embed.conv.parametrizations.weight.original1", "feature_projection.projection.weight"):
        assert torch.equal(ts[key], ss[key]), key  # initialised from the teacher
    assert "encoder.layers.2.attention.q_proj.weight" not in ss


@pytest.mark.system
def test_distilhubert_loss_falls_and_only_the_student_travels(setup):
    task = make_task(setup, recipe="distilhubert", student_layers=1, target_layers="1,2")
    model = task.build_model()
    assert all(k.startswith(("hubert.", "pred_heads.")) for k in task.shared_keys(model))
    assert task.describe()["student_params"] < task.describe()["teacher_params"]
    losses = run_rounds(task, 3)
    assert losses[-1] < losses[0] * 0.9, losses


@pytest.mark.system
def test_kd_loss_falls_and_supports_fisher(setup):
    task = make_task(setup, recipe="kd", kd_hidden_size=48, kd_num_layers=1, kd_num_heads=2, kd_ffn_size=96, alpha=0.5)
    sizes = task.sizes()
    assert sizes["student_params"] < sizes["teacher_params"]
    losses = run_rounds(task, 3)
    assert losses[-1] < losses[0], losses
    from fedctl.core import client_stats

    fisher = client_stats.diagonal_fisher(task, task.build_model(), "client_000", max_examples=2, chunk=2)
    assert all(torch.isfinite(f).all() for f in fisher.values())


def test_distilhubert_refuses_fisher_with_a_hint(setup):
    task = make_task(setup, recipe="distilhubert", student_layers=1)
    from fedctl.core import client_stats

    with pytest.raises(FedctlError) as err:
        client_stats.require_client_stats(task, "fedfisher")
    assert "--recipe kd" in err.value.hint


def test_bad_teachers_and_label_mismatch_are_errors(setup, tmp_path):
    with pytest.raises(FedctlError, match="no config.json"):
        make_task(setup, teacher=str(tmp_path / "nowhere"))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FedctlError, match="not a HuBERT model") as err:
        make_task(setup, teacher=str(bert))
    assert "fedctl train hubert" in err.value.hint
    with pytest.raises(FedctlError, match="--teacher is missing"):
        make_task(setup, teacher=None)
    # kd: labels with another cluster count than the teacher's head
    root, parts, _, _ = setup
    other = hdata.demo_data(root, 3, 6, 6, 12, lambda _: None)[1]
    with pytest.raises(FedctlError, match="12 clusters") as err:
        make_task(setup, recipe="kd", labels=str(other))
    assert "20 clusters" in err.value.hint


def test_exports_reload(setup, tmp_path):
    from transformers import HubertModel

    for recipe in ("distilhubert", "kd"):
        task = make_task(setup, recipe=recipe, student_layers=1, kd_hidden_size=48, kd_num_layers=1, kd_num_heads=2, kd_ffn_size=96)
        model = task.build_model().eval()
        out = task.export(model, tmp_path / recipe / "final" / "hf")
        loaded = HubertModel.from_pretrained(str(out), local_files_only=True).eval()
        audio = torch.randn(1, 8000, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(model.hubert(audio).last_hidden_state, loaded(audio).last_hidden_state)
        assert (tmp_path / recipe / "final" / "s3prl.pt").is_file() == (recipe == "kd")
