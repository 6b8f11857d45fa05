"""Bad input for the client-drift strategies through the CLI: one Error/Hint pair, exit 1, no traceback."""

from __future__ import annotations

import pytest

from tests.cli.test_train import SMALL

CASES = [
    (["--strategy", "fedper", "--set", "federation.local_keys=[nothing.*]"],
     "federation.local_keys pattern 'nothing.*' matches no shared tensor", "glob patterns"),
    (["--strategy", "fedbn"], "strategy fedbn: the model has no BatchNorm layer", "fedavg"),
]


@pytest.mark.parametrize("args,message,hint", CASES, ids=["local_keys", "fedbn"])
def test_local_keys_matching_nothing_and_fedbn_without_batchnorm_are_one_line_errors(cli, tmp_path, args, message,
                                                                                      hint):
    res = cli("train", "mamba", "--rounds", 1, "--clients", 2, "--out", tmp_path / "r", *SMALL, *args)
    assert res.exit_code == 1, (args, res.output)
    assert message in res.stderr, (args, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("Error: ") and lines[-1].startswith("Hint: ") and hint in lines[-1]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r" / "checkpoints").exists()
