"""Every shipped template opens with the command that runs it and resolves strictly."""

from __future__ import annotations

import shlex

import pytest
import yaml

from fedctl.run import recipe
from fedctl.utils.templates import list_templates, resolve_template

# attack sweep templates (`# fedctl attack sweep ...`) are tested in tests/attacks/test_sweep.py
TEMPLATES = [p for p in list_templates() if not p.read_text().startswith("# fedctl attack ")]


def test_templates_exist():
    names = {p.stem for p in TEMPLATES}
    assert {"mamba_tiny", "mamba_central", "pure_ssm_1_layer", "pure_ssm_2_layer", "pure_ssm_4_layer",
            "ssm_study_central", "ssm_study_fedavg_lu1", "ssm_study_fedavg_lu8", "ssm_study_fedavgm",
            "ssm_study_fedentropy", "ssm_study_fedfisher"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_opens_with_its_command_and_resolves(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# fedctl train "), first
    argv = shlex.split(first[2:])
    assert f"{path.stem}" in argv, "the command must name this template"
    data = yaml.safe_load(path.read_text())
    task = (data.get("run") or {}).get("task", "mamba")
    central = argv[2] == "central"
    exp = recipe.resolve(task, path, central=central)  # strict: unknown keys or wrong types raise
    assert exp.run.task == task
    if central:
        assert exp.federation.clients == 1
    assert resolve_template(path.stem) == path
