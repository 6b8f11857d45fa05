"""bench/gpu_check.py --dry: every part reports figures or a stated skip reason, plus the environment block.

The GPU check runs on a borrowed machine for minutes at a time, so its failure modes must be found here:
a part that crashes instead of reporting would lose the whole slot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"hubert", "hubert_round", "mamba", "inversion", "fedavg", "parallel", "lora_merge"}


def _has_figures(part: dict) -> bool:
    """True when some number was measured anywhere in the part (a bool or a count of items does not count)."""
    for key, value in part.items():
        if isinstance(value, dict) and _has_figures(value):
            return True
        if isinstance(value, float) and key not in ("parameters_m",):
            return True
        if isinstance(value, list) and any(isinstance(v, float) for v in value):
            return True
    return False


@pytest.mark.system
def test_dry_run_reports_every_part(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# fedctl GPU check")
    assert "| part |" in proc.stdout  # the table is printed too

    env = report["environment"]
    for key in ("torch", "cuda", "cudnn", "gpu", "driver", "device", "python"):
        assert key in env
    assert env["device"] == "cpu" and report["dry"] is True

    assert set(report["parts"]) == PARTS
    assert set(report["part_seconds"]) == PARTS
    assert all(s >= 0 for s in report["part_seconds"].values())
    for name, part in report["parts"].items():
        assert "skipped" in part or _has_figures(part), (name, part)
        if "skipped" in part:
            assert isinstance(part["skipped"], str) and part["skipped"], name

    parts = report["parts"]
    # what a CPU cannot measure says why, rather than vanishing
    assert "mamba_ssm" in parts["mamba"]["kernels"]["skipped"]
    assert "CUDA" in parts["hubert"]["rows"]["fp16/sdpa/no-ckpt"]["skipped"]
    assert "CPU" in parts["parallel"]["how"]
    # the cheap parts always finish within their dry budgets on CPU
    assert parts["fedavg"]["weighted_mean_gbps"] > 0 and parts["fedavg"]["copy_gbps"] > 0
    assert parts["lora_merge"]["k"] == 10 and parts["lora_merge"]["r"] == 8
