import re

import pytest

from fedctl.data.textgen import NEGATIVE_WORDS, POSITIVE_WORDS, VOCABULARY, generate_sentences


def test_vocabulary_has_over_1000_distinct_lowercase_words():
    assert len(VOCABULARY) >= 1000
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(re.fullmatch(r"[a-z]+", w) for w in VOCABULARY)


def test_sentiment_lists_are_disjoint_and_in_vocabulary():
    assert len(POSITIVE_WORDS) >= 40 and len(NEGATIVE_WORDS) >= 40
    assert not set(POSITIVE_WORDS) & set(NEGATIVE_WORDS)
    assert set(POSITIVE_WORDS) <= set(VOCABULARY) and set(NEGATIVE_WORDS) <= set(VOCABULARY)


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert generate_sentences(50, seed=3) == generate_sentences(50, seed=3)
    assert generate_sentences(50, seed=3) != generate_sentences(50, seed=4)


@pytest.mark.parametrize("lo,hi", [(4, 14), (1, 3), (10, 12)])
def test_lengths_respect_bounds(lo, hi):
    sentences = generate_sentences(300, seed=0, min_words=lo, max_words=hi)
    lengths = [len(s.split()) for s in sentences]
    assert len(sentences) == 300
    assert min(lengths) >= lo and max(lengths) <= hi
    assert all(re.fullmatch(r"[a-z ]+[.?]", s) for s in sentences)


def test_corpus_uses_most_of_the_vocabulary():
    used = {w.strip(".?") for s in generate_sentences(5000, seed=0) for w in s.split()}
    assert len(used & set(VOCABULARY)) >= 800


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        generate_sentences(3, seed=0, min_words=5, max_words=4)
