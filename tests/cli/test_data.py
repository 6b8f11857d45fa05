import json

from typer.testing import CliRunner

from fedctl.cli.app import app

runner = CliRunner()


def test_synth_partition_kmeans_end_to_end(tmp_path):
    corpus, parts, labels = tmp_path / "corpus", tmp_path / "parts", tmp_path / "labels"
    r = runner.invoke(app, ["data", "synth", "--speakers", "4", "--utterances", "4", "--seed", "2",
                            "--out", str(corpus)])
    assert r.exit_code == 0, r.output
    assert "16 utterances, 4 speakers" in r.output and "Saved corpus" in r.output

    r = runner.invoke(app, ["data", "partition", "librispeech", "--root", str(corpus), "--clients", "2",
                            "--out", str(parts), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["totals"]["utterances"] == 16 and summary["totals"]["speakers"] == 4
    assert [c["speakers"] for c in summary["per_client"]] == [2, 2]

    r = runner.invoke(app, ["data", "partition", "librispeech", "--root", str(corpus), "--clients", "2",
                            "--out", str(parts)])
    assert r.exit_code == 1 and "--overwrite" in r.output  # an earlier fedctl output: replaced only on request
    r = runner.invoke(app, ["data", "partition", "librispeech", "--root", str(corpus), "--clients", "2",
                            "--out", str(parts), "--overwrite"])
    assert r.exit_code == 0 and "client_001" in r.stdout and "Saved partition" in r.stdout

    r = runner.invoke(app, ["data", "kmeans", "--parts", str(parts), "--clusters", "8", "--scope", "global",
                            "--out", str(labels), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["models"]["global"]["clusters"] == 8
    assert result["phone_metrics"]["mean"]["kmeans"]["pnmi"] > result["phone_metrics"]["mean"]["random"]["pnmi"]
    assert (labels / "client_000" / "train.km").exists()


def test_more_clients_than_speakers_exits_1_with_hint(tmp_path):
    from fedctl.data.speech.synth import synth_corpus

    synth_corpus(tmp_path / "c", speakers=2, utterances=2, seed=0)
    r = runner.invoke(app, ["data", "partition", "librispeech", "--root", str(tmp_path / "c"), "--clients", "3",
                            "--out", str(tmp_path / "p")])
    assert r.exit_code == 1
    assert "Error:" in r.output and "only 2 speakers" in r.output and "Hint:" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "p").exists()


def test_bad_inputs_exit_1(tmp_path):
    r = runner.invoke(app, ["data", "partition", "librispeech", "--root", str(tmp_path / "missing"),
                            "--out", str(tmp_path / "p")])
    assert r.exit_code == 1 and "is not a directory" in r.output
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tmp_path), "--out", str(tmp_path / "l")])
    assert r.exit_code == 1 and "summary.json not found" in r.output
    r = runner.invoke(app, ["data", "kmeans", "--parts", str(tmp_path), "--label-rate", "25",
                            "--out", str(tmp_path / "l")])
    assert r.exit_code == 1 and "--label-rate must be 50 or 100" in r.output
    r = runner.invoke(app, ["data", "synth", "--speakers", "0", "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and "at least 1" in r.output


def test_help_has_examples():
    for args in (["data", "synth"], ["data", "partition", "librispeech"], ["data", "kmeans"]):
        r = runner.invoke(app, [*args, "--help"])
        assert r.exit_code == 0 and "Examples" in r.output


def test_synth_keywords_writes_a_speech_commands_folder(tmp_path):
    from fedctl.data.speech.keywords import read_speech_commands

    out = tmp_path / "kw"
    r = runner.invoke(app, ["data", "synth", "--keywords", "--words", "yes,no", "--unknown-words", "cat",
                            "--speakers", "3", "--repetitions", "1", "--noise-seconds", "2", "--seed", "5",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    # 3 words x 3 speakers x 1 repetition; 3 speakers -> one per split
    assert "9 clips of 1 s, 3 speakers (train/validation/test 1/1/1 speakers, 3/3/3 clips)" in r.stdout
    assert "4 noise files of 2 s" in r.stdout and "Saved keyword corpus" in r.stdout
    assert len((out / "validation_list.txt").read_text().splitlines()) == 3
    rows = read_speech_commands(out, "yes,no")
    assert sorted({r.label for r in rows}) == ["_silence_", "_unknown_", "no", "yes"]
    assert len(rows) == 9 + 4 * 2  # 2 s of noise: 2 windows per file


def test_synth_keywords_bad_inputs_exit_1(tmp_path):
    cases = (
        (["--keywords", "--words", "yes,Go!"], "'Go!' is not a word"),
        (["--keywords", "--utterances", "3"], "--utterances is for the LibriSpeech corpus"),
        (["--repetitions", "2"], "--repetitions only apply to a keyword corpus"),
        (["--keywords", "--speakers", "2"], "at least 3"),
        (["--keywords", "--noise-seconds", "0.5"], "--noise-seconds must be between 1 and 3600"),
    )
    for args, needle in cases:
        r = runner.invoke(app, ["data", "synth", *args, "--out", str(tmp_path / "k")])
        assert r.exit_code == 1, (args, r.output)
        assert needle in r.output and "Error:" in r.output and "Hint:" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert not (tmp_path / "k").exists()
