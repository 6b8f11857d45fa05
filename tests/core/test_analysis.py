"""inspect deltas / inspect run: the plotted data equals what was saved (read back, not just file exists)."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest
import torch
from safetensors.torch import load_file

from fedctl.analysis.runs import (
    MatrixSeries,
    analyse_deltas,
    analyse_runs,
    matrix_figure,
    rank_for_energy,
    runs_figure,
)
from fedctl.core.config import FederationConfig, to_dict
from fedctl.core.engine import run_federated
from fedctl.core.strategies import build_strategy
from fedctl.errors import FedctlError
from tests.core.toy_classifier import ToyClassifier


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    fed = FederationConfig(rounds=4, clients=3, save_deltas_every=1, save_deltas_entity="all")
    run_federated(ToyClassifier(), build_strategy("fedavg"), fed, seed=0, run_dir=base / "a")
    fed_b = FederationConfig(rounds=3, clients=3, strategy="fedavgm")
    run_federated(ToyClassifier(steps=2), build_strategy("fedavgm", {"server_momentum": 0.5}), fed_b, seed=0,
                  run_dir=base / "b", config={"run": {"name": "toy-b"}, "federation": to_dict(fed_b)})
    return base


def test_rank_for_energy():
    assert rank_for_energy(torch.tensor([3.0, 1.0, 0.0])) == 2  # energy shares 0.9, 1.0
    assert rank_for_energy(torch.tensor([4.0, 1.0])) == 2  # 16/17 = 0.941 < 0.95
    assert rank_for_energy(torch.tensor([5.0, 1.0])) == 1  # 25/26 = 0.962
    assert rank_for_energy(torch.zeros(3)) == 0


def test_deltas_plots_match_saved_files(runs):
    res = analyse_deltas(runs / "a", entity="server", top_k=3)
    assert res["rounds"] == [1, 2, 3, 4]
    names = [m["name"] for m in res["matrices"]]
    assert names == ["0.weight", "2.weight"]  # the two weight matrices; biases are not matrices
    for m in res["matrices"]:
        for r, tops in zip(m["rounds"], m["top_singular_values"]):
            delta = load_file(str(runs / "a" / "deltas" / "server" / f"round_{r:03d}.safetensors"))[m["name"]]
            sv = torch.linalg.svdvals(delta.double())
            assert tops == pytest.approx(sv[:3].tolist(), rel=1e-9)
        assert m["rank95"] == rank_for_energy(torch.tensor(m["final_spectrum"]))
        assert sorted(int(k) for k in m["heatmaps"]) == [1, 2, 3, 4]
    sidecar = json.loads((runs / "a" / "plots" / "deltas_server.json").read_text())
    assert sidecar["matrices"][0]["top_singular_values"] == res["matrices"][0]["top_singular_values"]
    img = mpimg.imread(res["plots"][0])
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    # the figure's lines are the saved numbers
    m = res["matrices"][1]
    fig = matrix_figure(MatrixSeries(**{**m, "heatmaps": {int(k): v for k, v in m["heatmaps"].items()}}), "server")
    line_axes = [ax for ax in fig.axes if ax.get_title() == "top singular values of the delta"][0]
    assert list(line_axes.lines[0].get_ydata()) == pytest.approx([t[0] for t in m["top_singular_values"]])


def test_client_deltas_and_missing_deltas(runs):
    res = analyse_deltas(runs / "a", entity="client", client="client_2")
    assert res["client"] == "client_2" and res["rounds"] == [1, 2, 3, 4]
    with pytest.raises(FedctlError, match="no saved server deltas .no deltas/ at all."):
        analyse_deltas(runs / "b")
    with pytest.raises(FedctlError, match="no deltas of client 'client_9'.*client_0, client_1, client_2"):
        analyse_deltas(runs / "a", entity="client", client="client_9")


def test_runs_plot_matches_metrics(runs, tmp_path):
    res = analyse_runs([runs / "a", runs / "b"], out=tmp_path / "cmp.png")
    assert res["metric"] == "val_loss"
    for s, d in zip(res["runs"], ("a", "b")):
        logged = [json.loads(x) for x in (runs / d / "metrics.jsonl").read_text().splitlines()]
        assert s["values"] == [r["val_loss"] for r in logged if r["type"] == "eval"]
    assert res["runs"][0]["steps"] == [18, 36, 54, 72] and res["runs"][1]["steps"] == [6, 12, 18]
    assert res["runs"][1]["label"] == "toy-b · fedavgm K=3"
    fig = runs_figure(res["runs"], res["metric"])
    assert list(fig.axes[1].lines[1].get_xdata()) == [6, 12, 18]
    assert list(fig.axes[0].lines[0].get_ydata()) == res["runs"][0]["values"]
    assert mpimg.imread(tmp_path / "cmp.png").shape[1] > 500
    with pytest.raises(FedctlError, match="metric 'val_ppl' is not logged.*available metrics: .*val_accuracy"):
        analyse_runs([runs / "a"], metric="val_ppl")
    with pytest.raises(FedctlError, match="has no metrics.jsonl"):
        analyse_runs([tmp_path])
