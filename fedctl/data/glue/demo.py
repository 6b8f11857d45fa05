"""The offline demo task: sentence sentiment, made by the project (machines here cannot download SST-2).

Each example is a neutral sentence from `fedctl.data.textgen` with a verdict clause before or after it.
The verdict carries a POSITIVE_WORDS or NEGATIVE_WORDS adjective, negated in a quarter of the examples
("it was not lovely" is negative), and the neutral part itself sometimes holds polarity adjectives
("the cheerful baker ...") that do not decide the label. Training labels are flipped with probability
`label_noise`; validation labels are clean, so accuracy there measures what was learnt.
"""

from __future__ import annotations

import random

from fedctl.data.glue.load import GlueSplit
from fedctl.data.textgen import NEGATIVE_WORDS, POSITIVE_WORDS, generate_sentences

_VERDICTS = (
    "overall it was {neg}{w}",
    "honestly the whole thing felt {neg}{w}",
    "i found it {neg}{w}",
    "my friends said it was {neg}{w}",
    "the result was {neg}{w}",
    "in the end it seemed {neg}{w} to me",
)
_NEGATIONS = ("not ", "never ", "hardly ", "far from ", "not at all ")


def sentiment_demo(
    n_train: int = 900,
    n_val: int = 300,
    seed: int = 0,
    *,
    negation_rate: float = 0.25,
    label_noise: float = 0.05,
) -> dict[str, GlueSplit]:
    """Splits `train` and `validation` of the demo sentiment task (label 1 = positive), deterministic per seed.

    Balanced in expectation; the word lists are shared by both splits but sentences are not.
    """
    rng = random.Random(seed)
    bases = generate_sentences(n_train + n_val, seed=seed + 1, min_words=3, max_words=8)
    texts, labels = [], []
    for base in bases:
        label = int(rng.random() < 0.5)
        negated = rng.random() < negation_rate
        positive_word = bool(label) != negated  # a negated negative word reads positive, and vice versa
        word = rng.choice(POSITIVE_WORDS if positive_word else NEGATIVE_WORDS)
        verdict = rng.choice(_VERDICTS).format(neg=rng.choice(_NEGATIONS) if negated else "", w=word)
        base = base.rstrip(".?")
        text = f"{verdict} , {base} ." if rng.random() < 0.5 else f"{base} , {verdict} ."
        texts.append(text)
        labels.append(label)
    train_labels = [1 - y if rng.random() < label_noise else y for y in labels[:n_train]]
    return {
        "train": GlueSplit([texts[:n_train]], train_labels),
        "validation": GlueSplit([texts[n_train:]], labels[n_train:]),
    }
