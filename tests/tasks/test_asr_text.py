"""Alphabet, transcript normalization, greedy CTC decoding and corpus-level error rates."""

from __future__ import annotations

import pytest
import torch

from fedctl.errors import FedctlError
from fedctl.tasks.asr.text import (
    BLANK,
    NUM_CLASSES,
    SPACE,
    decode,
    encode,
    error_rates,
    greedy_decode,
    normalize_transcript,
)


def test_alphabet_layout():
    assert NUM_CLASSES == 29 and BLANK == 0 and SPACE == 1
    assert encode("az' ") == [2, 27, 28, 1]
    assert decode([0, 9, 0, 10, 1, 28, 20]) == "hi 's"


def test_normalization_and_unknown_characters():
    assert normalize_transcript("  HELLO\tWorld  DON'T \n") == "hello world don't"
    with pytest.raises(FedctlError) as err:
        normalize_transcript("Hello, world 42!", source="84-121123-0001")
    message = err.value.message
    assert "84-121123-0001" in message
    assert all(repr(c) in message for c in (",", "4", "2", "!"))
    assert "--text-norm fold-spell-numbers" in err.value.hint  # the real flag of train asr and attack
    assert normalize_transcript("Hello , world 42!", mode="fold") == "hello world"
    with pytest.raises(FedctlError):
        encode("hello!")
    with pytest.raises(FedctlError, match="'lower' is not a transcript normalisation") as err:
        normalize_transcript("x", mode="lower")
    assert "strict, fold, fold-spell-numbers" in err.value.hint


@pytest.mark.parametrize("raw, fold, spelled", [
    ("Conf\u00e9rence \u00e0 3 heures, le 23rd!", "conference a heures le", "conference a three heures le twenty third"),
    ("\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440", "", ""),  # Cyrillic: nothing in a-z
    ("H 3 23", "h", "h three twenty three"),
    ("Stra\u00dfe \u201cquoted\u201d don\u2019t \u2014 na\u00efve", "strasse quoted don't naive",
     "strasse quoted don't naive"),
    ("The 1,500 men; 3.5 km", "the men km", "the one thousand five hundred men three point five km"),
    ("'Tis rock-'n'-roll \u00c6sop \u0141\u00f3d\u017a", "tis rock n roll aesop lodz", "tis rock n roll aesop lodz"),
    ("\uff28\uff25\uff2c\uff2c\uff2f \ufb01ne", "hello fine", "hello fine"),  # full-width letters, fi ligature
])
def test_fold_modes_fold_accents_case_numbers_and_scripts(raw, fold, spelled):
    assert normalize_transcript(raw, mode="fold") == fold
    assert normalize_transcript(raw, mode="fold-spell-numbers") == spelled
    assert all(c in " abcdefghijklmnopqrstuvwxyz'" for c in spelled)


def test_empty_reference_is_named():
    with pytest.raises(FedctlError, match="non-empty reference transcripts: b-1") as err:
        error_rates(["a", " "], ["a", "b"], ids=["a-1", "b-1"])
    assert "--text-norm" in err.value.hint


def _one_hot_path(paths: list[list[int]]) -> torch.Tensor:
    steps = max(len(p) for p in paths)
    log_probs = torch.full((steps, len(paths), NUM_CLASSES), -10.0)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            log_probs[t, b, c] = 0.0
    return log_probs


def test_greedy_decode_collapse_rules():
    a, b = encode("a")[0], encode("b")[0]
    paths = [
        [a, a, a],  # repeats merge: "a"
        [a, BLANK, a],  # a blank separates: "aa"
        [BLANK, a, a, BLANK, BLANK, b, b, a],  # "aba"
        [a, SPACE, SPACE, BLANK, b, a],  # "a b" (repeated space merges) but only 4 frames count: "a b"
        [BLANK, BLANK, BLANK],  # nothing
    ]
    lengths = [3, 3, 8, 5, 3]
    assert greedy_decode(_one_hot_path(paths), torch.tensor(lengths)) == ["a", "aa", "aba", "a b", ""]
    assert greedy_decode(_one_hot_path(paths), [1, 3, 8, 6, 3])[3] == "a ba"


def test_error_rates_are_corpus_level():
    refs = ["the cat sat", "hello world"]
    hyps = ["the bat sat", "hello"]
    rates = error_rates(refs, hyps)
    # words: 1 substitution + 1 deletion over 3 + 2 reference words
    assert rates["wer"] == pytest.approx(2 / 5)
    # characters: 1 substitution (c->b) + 6 deletions (" world") over 11 + 11 reference characters
    assert rates["cer"] == pytest.approx(7 / 22)
    # a doubled space from CTC output is not an error
    assert error_rates(["a b"], ["a  b "]) == {"cer": 0.0, "wer": 0.0}
    with pytest.raises(FedctlError):
        error_rates(["", "x"], ["a", "x"])
