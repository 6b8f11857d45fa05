"""The 29-symbol character alphabet of the reference DeepSpeech models, transcripts, decoding and error rates.

Index 0 is the CTC blank, 1 the space, 2-27 the letters a-z, 28 the apostrophe: the order of the reference
models (`_gen_alphabet()` in takakhoo/10s_FL_DeepSpeech `src/models/ds1.py`: blank first, then " a..z'"),
so that output-layer rows and gradients line up with theirs. (Mozilla DeepSpeech 0.7.1 puts blank last.)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import jiwer
import torch

from fedctl.errors import FedctlError

BLANK = 0
SPACE = 1
SYMBOLS = ("_", " ", *"abcdefghijklmnopqrstuvwxyz", "'")  # "_" stands for the blank; it never appears in text
NUM_CLASSES = len(SYMBOLS)  # 29
_INDEX = {c: i for i, c in enumerate(SYMBOLS) if i != BLANK}


TEXT_NORMS = ("strict", "fold", "fold-spell-numbers")
TEXT_NORM_FLAG = "--text-norm"  # the same flag on `fedctl train asr` (task.text_norm) and `fedctl attack ds1|ds2`
# Letters NFKD does not decompose, spelled as English transcripts spell them.
_LIGATURES = str.maketrans({"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2019\u2018\u02bc\u0060\u00b4\u2032"})
_NUMBER = re.compile(r"(\d+(?:[.,]\d+)?)(st|nd|rd|th)?", re.IGNORECASE)


def number_speller():
    """`num2words` (English) when installed, else None: then `fold-spell-numbers` removes numbers like `fold`."""
    try:
        from num2words import num2words
    except ImportError:
        return None
    return num2words


def _spell(match: re.Match, num2words) -> str:
    number, ordinal = match.group(1), match.group(2)
    if ordinal and number.isdigit():
        return f" {num2words(int(number), to='ordinal')} "
    value = number.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", number) else number.replace(",", ".")
    return f" {num2words(float(value) if '.' in value else int(value))} "


def fold_text(text: str, spell_numbers: bool = False) -> str:
    """`text` in the 29-symbol alphabet: numbers spelled (English, `num2words`) or removed, typographic
    apostrophes to "'", Unicode NFKD with the combining marks dropped (é -> e), case folded (ß -> ss),
    punctuation and symbols to spaces, every other character (digits, non-Latin letters) removed,
    apostrophes only inside words, whitespace collapsed. May return "" (e.g. a Cyrillic-only line)."""
    speller = number_speller() if spell_numbers else None
    text = _NUMBER.sub(lambda m: _spell(m, speller) if speller else " ", text)  # "23rd" goes whole
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold().translate(_LIGATURES)
    out = []
    for c in text:
        if c in _INDEX:
            out.append(c)
        elif c.isspace() or unicodedata.category(c)[0] in "PS" or c in "-_":
            out.append(" ")
        # anything else (digits left unspelled, letters of other scripts, controls) is removed
    return " ".join(w for w in (w.strip("'") for w in "".join(out).split()) if w)


def check_text_norm(mode: str, key: str = TEXT_NORM_FLAG) -> None:
    if mode not in TEXT_NORMS:
        raise FedctlError(f"{key} {mode!r} is not a transcript normalisation",
                          f"use one of: {', '.join(TEXT_NORMS)}")


def normalize_transcript(text: str, source: str = "", *, mode: str = "strict") -> str:
    """`text` as the models' 29 symbols, by `mode` (`--text-norm`, one setting for train, eval and attack):

    - `strict`: lower-case and collapse whitespace; any character outside a-z, space and apostrophe is an
      error naming `source` (e.g. the utterance id) and the characters (LibriSpeech needs nothing more);
    - `fold`: `fold_text` with numbers removed: accents and case folded, punctuation to spaces, digits and
      letters of other scripts removed;
    - `fold-spell-numbers`: as `fold`, numbers first spelled as English words with `num2words`
      ("3rd" -> "third", "23" -> "twenty-three" -> "twenty three"); without num2words installed they are
      removed as in `fold`.

    The folding modes may return "": the caller leaves such utterances out and lists them.
    """
    check_text_norm(mode)
    if mode != "strict":
        return fold_text(text, spell_numbers=mode == "fold-spell-numbers")
    text = " ".join(text.lower().split())
    unknown = sorted({c for c in text if c not in _INDEX})
    if unknown:
        where = f" of {source}" if source else ""
        raise FedctlError(
            f"transcript{where} has characters outside the ASR alphabet (a-z, space, apostrophe): "
            f"{' '.join(repr(c) for c in unknown)} in {text!r}",
            f"fold accents and case, spell numbers and drop other characters with {TEXT_NORM_FLAG} "
            "fold-spell-numbers (or fold: numbers removed); utterances left empty are then left out and listed",
        )
    return text


def encode(text: str) -> list[int]:
    """Class ids of an already normalized transcript (see `normalize_transcript`); never contains the blank."""
    try:
        return [_INDEX[c] for c in text]
    except KeyError as exc:
        raise FedctlError(f"cannot encode {text!r}: {exc.args[0]!r} is not in the ASR alphabet",
                          "pass the text through normalize_transcript first") from exc


def decode(ids: Iterable[int]) -> str:
    """Text of class ids; blanks (0) are skipped, nothing is collapsed (see `greedy_decode` for CTC output)."""
    out = []
    for i in ids:
        i = int(i)
        if not 0 <= i < NUM_CLASSES:
            raise FedctlError(f"class id {i} is outside the ASR alphabet (0..{NUM_CLASSES - 1})",
                              "decode only outputs of a 29-class model")
        if i != BLANK:
            out.append(SYMBOLS[i])
    return "".join(out)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> list[str]:
    """Best-path CTC decoding of `log_probs` [T, B, C] (time-major, as the models emit them).

    Per utterance b, over its first `lengths[b]` frames: argmax class per frame, merge runs of the same
    class, drop blanks. So "aa_a" -> "aa" and "a_a" -> "aa" but "aaa" -> "a".
    """
    best = log_probs.argmax(dim=-1).T.tolist()  # [B, T]
    lengths = [int(n) for n in lengths]
    texts = []
    for path, n in zip(best, lengths):
        ids = [c for t, c in enumerate(path[:n]) if c != BLANK and (t == 0 or c != path[t - 1])]
        texts.append(decode(ids))
    return texts


def error_rates(refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None) -> dict[str, float]:
    """Corpus-level character and word error rates: total edits / total reference characters (words).

    Whitespace in both sides is collapsed first (a CTC output may emit two spaces around a blank run, which
    would otherwise count as a character error). Raises, naming the utterance when `ids` are given, when a
    reference is empty (its rate is undefined).
    """
    if len(refs) != len(hyps):
        raise FedctlError(f"{len(refs)} references but {len(hyps)} hypotheses", "score one hypothesis per reference")
    refs = [" ".join(r.split()) for r in refs]
    hyps = [" ".join(h.split()) for h in hyps]
    empty = [i for i, r in enumerate(refs) if not r]
    if not refs or empty:
        named = "" if not empty or ids is None else ": " + ", ".join(str(ids[i]) for i in empty[:8])
        raise FedctlError(f"error rates need non-empty reference transcripts{named}",
                          "leave utterances with empty transcripts out of the evaluation set (`fedctl train asr` "
                          f"does so for every {TEXT_NORM_FLAG} mode and lists them)")
    return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps))}
