"""Transcripts of real corpora: one `--text-norm` for train, eval and attack; utterances with no usable
transcript are left out before training, by name; the attack normalises only what it attacks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fedctl.cli.app import app
from fedctl.data.speech.partition import partition_librispeech
from tests.data.speech_corpora import Utt, make_utterances, voiced, write_librispeech

runner = CliRunner()

# 4 speakers x 4 utterances; the index k of each transcript is speaker * 4 + utterance
TEXTS = [
    "Conf\u00e9rence na\u00efve", "HELLO WORLD", "The 3rd of May", "caf\u00e9 au lait",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",  # Cyrillic only: empty once folded
    "GOOD MORNING", "Stra\u00dfe number 42", "SEE YOU SOON",
    "H 3 23",  # folds to "h": one character for over a second of audio (implausibly short)
    "ONE MORE TIME", "\u00c9l\u00e8ve d\u2019\u00e9cole", "LATE AGAIN",
    "\u6771\u4eac",  # Japanese only: empty once folded
    "BACK HOME", "it's 7 o'clock", "THE END",
]


@pytest.fixture(scope="module")
def real_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    utts = make_utterances(speakers=4, per_speaker=4, seed=2, transcripts=TEXTS, seconds=(1.2, 1.6))
    write_librispeech(utts, root / "tree")
    partition_librispeech([root / "tree"], root / "parts", clients=2, val_fraction=0.25, seed=0)
    return root / "parts", {u.transcript: u.id for u in utts}


def _train(parts, out, *extra):
    return runner.invoke(app, ["train", "asr", "--config", "asr_ds1_tiny", "--parts", str(parts), "--clients", "2",
                               "--rounds", "1", "--set", "task.local_updates=1", *extra, "--out", str(out)])


def test_strict_names_the_utterance_and_the_real_flag(real_parts, tmp_path):
    parts, ids = real_parts
    res = _train(parts, tmp_path / "strict")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "Error:" in res.stderr and "outside the ASR alphabet" in res.stderr
    assert "Hint:" in res.stderr and "--text-norm fold-spell-numbers" in res.stderr
    assert "drop_unknown" not in res.output
    # and the flag named there exists: it is accepted by the same command
    assert "--text-norm" in runner.invoke(app, ["train", "asr", "--help"]).output


def test_folded_corpus_trains_a_round_evaluates_and_names_what_it_left_out(real_parts, tmp_path):
    parts, ids = real_parts
    out = tmp_path / "run"
    res = _train(parts, out, "--text-norm", "fold")
    assert res.exit_code == 0, res.output
    expected = {ids["\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"]: "is empty after --text-norm fold",
                ids["\u6771\u4eac"]: "is empty after --text-norm fold",
                ids["H 3 23"]: "fewer than 1 per second"}
    report = json.loads((out / "left_out_utterances.json").read_text())
    assert report["text_norm"] == "fold" and report["min_chars_per_second"] == 1.0
    assert {d["id"] for d in report["utterances"]} == set(expected)
    for d in report["utterances"]:
        assert expected[d["id"]] in d["reason"], d
        assert d["id"] in res.stderr  # the warning names each one
    assert "warning: left out 3 utterance(s) before training" in res.stderr
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("type") == "eval"]
    assert evals and all(math.isfinite(e["val_cer"]) and math.isfinite(e["val_loss"]) for e in evals)


def test_spelled_numbers_keep_the_digit_transcript(real_parts, tmp_path):
    """Spelling the numbers keeps "H 3 23" ("h three twenty three"): only the two other scripts go."""
    parts, ids = real_parts
    expected = {ids["\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440"], ids["\u6771\u4eac"]}
    res = _train(parts, tmp_path / "spelled", "--text-norm", "fold-spell-numbers")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "spelled" / "left_out_utterances.json").read_text())
    assert {d["id"] for d in report["utterances"]} == expected


def test_bad_text_norm_value_is_one_error(real_parts, tmp_path):
    parts, _ = real_parts
    res = _train(parts, tmp_path / "x", "--text-norm", "ascii")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "'ascii' is not a transcript normalisation" in res.stderr and "strict, fold, fold-spell-numbers" in res.stderr


def test_attack_runs_on_an_in_range_utterance_of_a_tree_whose_other_transcripts_are_not_normalisable(tmp_path):
    rng = np.random.default_rng(4)
    good = Utt("200-1-0000", "200", "1", "HELLO THERE", voiced(rng, 1.3, 150))
    others = [
        Utt("200-1-0001", "200", "1", "\u041f\u0440\u0438\u0432\u0435\u0442 42", voiced(rng, 1.4, 150)),  # in the bin, past the range
        Utt("201-1-0000", "201", "1", "\u6771\u4eac 3", voiced(rng, 0.6, 200)),  # below the bin
        Utt("201-1-0001", "201", "1", "Conf\u00e9rence 2024!", voiced(rng, 2.4, 200)),  # above the bin
    ]
    tree = write_librispeech([good, *others], tmp_path / "tree")
    res = runner.invoke(app, ["attack", "ds1", "--corpus", str(tree), "--min-dur", "1000", "--max-dur", "2000",
                              "--batch-end", "1", "--max-iter", "2", "--seeds", "1", "--preset", "tiny",
                              "--out", str(tmp_path / "atk"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["attacked"] == 1
    rows = (tmp_path / "atk" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("200-1-0000,")
    # attacking the unnormalisable one is an error naming it and the flag
    res = runner.invoke(app, ["attack", "ds1", "--corpus", str(tree), "--min-dur", "1000", "--max-dur", "2000",
                              "--batch-start", "1", "--batch-end", "2", "--max-iter", "2", "--seeds", "1",
                              "--preset", "tiny", "--out", str(tmp_path / "atk2")])
    assert res.exit_code == 1 and "200-1-0001" in res.stderr and "--text-norm" in res.stderr
    res = runner.invoke(app, ["attack", "ds1", "--corpus", str(tree), "--min-dur", "1000", "--max-dur", "2000",
                              "--batch-start", "1", "--batch-end", "2", "--max-iter", "2", "--seeds", "1",
                              "--preset", "tiny", "--text-norm", "fold", "--out", str(tmp_path / "atk3")])
    assert res.exit_code == 1 and "200-1-0001" in res.stderr and "no transcript left after --text-norm fold" in res.stderr
