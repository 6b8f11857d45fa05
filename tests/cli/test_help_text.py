"""Help text says what each option does in that command (issue 22, comments and docs that lie)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedctl.cli.app import app

runner = CliRunner()


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_the_attack_group_summary_is_one_line_and_its_threat_model_stays_in_its_own_help():
    top = _help()
    line = next(ln for ln in top.splitlines() if " attack " in ln)
    assert "Gradient-inversion attacks on DeepSpeech 1/2 clients." in line and "Threat model" not in top
    assert "Threat model" in _help("attack")


def test_each_seed_option_names_what_it_seeds_in_that_command():
    seeds = {cmd: next(ln for ln in _help("data", *cmd).splitlines() if "--seed" in ln)
             for cmd in (("synth",), ("partition", "librispeech"), ("kmeans",))}
    assert "voices" in seeds[("synth",)]
    assert "voices" not in seeds[("partition", "librispeech")] and "split" in seeds[("partition", "librispeech")]
    assert "voices" not in seeds[("kmeans",)] and "k-means" in seeds[("kmeans",)]
