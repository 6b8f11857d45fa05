"""`fedctl train hubert` / `fedctl train distill` through Typer's CliRunner: demo runs, exports, bad input."""

from __future__ import annotations

import json

TINY = ["--preset", "tiny", "--clients", "2", "--set", "task.demo_speakers=4", "--set", "task.demo_utterances=4",
        "--set", "task.demo_clusters=12", "--set", "task.local_updates=2", "--set", "task.max_batch_seconds=8"]


def test_hubert_demo_then_distill_from_its_export(cli, tmp_path):
    run = tmp_path / "hubert"
    res = cli("train", "hubert", *TINY, "--rounds", 2, "--out", run, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rounds"] == 2 and 0 <= summary["final"]["val_masked_acc"] <= 1
    assert summary["task"]["clusters"] == 12 and "synth demo corpus" in res.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["type"] == "eval"] == [1, 2]
    assert (run / "final" / "hf" / "config.json").is_file() and (run / "final" / "s3prl.pt").is_file()

    # HuBERT iteration 2: cluster the federated model's own layer-2 features
    parts = next((run / "demo_data").glob("*-parts2"))
    res = cli("data", "kmeans", "--parts", parts, "--features", "hubert", "--model", run / "final" / "hf", "--layer", 2,
              "--clusters", 8, "--scope", "global", "--out", tmp_path / "km2", "--json")
    assert res.exit_code == 0, res.output
    km = json.loads(res.stdout)
    assert km["features"]["dim"] == 96 and km["features"]["frame_rate_hz"] == 50 and km["models"]["global"]["clusters"] == 8
    from fedctl.data.speech.features import label_num_frames

    row = json.loads((parts / "client_000.jsonl").read_text().splitlines()[0])
    first = (tmp_path / "km2" / "client_000" / f"{row['split']}.km").read_text().splitlines()
    assert any(len(line.split()) == label_num_frames(row["num_samples"], 50) for line in first)
    res = cli("data", "kmeans", "--parts", parts, "--features", "hubert", "--model", run / "final" / "hf", "--layer", 9,
              "--out", tmp_path / "km3")
    assert res.exit_code == 1 and "--layer 9" in res.output

    res = cli("train", "distill", "--teacher", run / "final" / "hf", "--recipe", "distilhubert", "--clients", 2,
              "--rounds", 1, "--out", tmp_path / "distill", "--set", "task.student_layers=1", "--set", "task.demo_speakers=4",
              "--set", "task.demo_utterances=4", "--set", "task.local_updates=2", "--set", "task.max_batch_seconds=8", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["task"]["student_params"] < out["task"]["teacher_params"] and out["final"]["val_loss"] > 0
    assert (tmp_path / "distill" / "final" / "hf" / "config.json").is_file()


def test_bad_input_exits_1_with_error_and_hint(cli, tmp_path):
    res = cli("train", "distill", "--teacher", tmp_path, "--rounds", 1)
    assert res.exit_code == 1 and "Error:" in res.output and "Hint:" in res.output and "Traceback" not in res.output
    res = cli("train", "hubert", "--parts", tmp_path, "--rounds", 1)
    assert res.exit_code == 1 and "--labels is missing" in res.output and "Hint:" in res.output
    res = cli("train", "hubert", *TINY, "--set", "task.clusters=7", "--rounds", 1, "--out", tmp_path / "r")
    assert res.exit_code == 1 and "12 clusters but task.clusters = 7" in res.output and "Hint:" in res.output
