"""The 29-symbol character alphabet of the reference DeepSpeech models, transcripts, decoding and error rates.

Index 0 is the CTC blank, 1 the space, 2-27 the letters a-z, 28 the apostrophe: the order of the reference
models (`_gen_alphabet()` in takakhoo/10s_FL_DeepSpeech `src/models/ds1.py`: blank first, then " a..z'"),
so that output-layer rows and gradients line up with theirs. (Mozilla DeepSpeech 0.7.1 puts blank last.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jiwer
import torch

from fedctl.errors import FedctlError

BLANK = 0
SPACE = 1
SYMBOLS = ("_", " ", *"abcdefghijklmnopqrstuvwxyz", "'")  # "_" stands for the blank; it never appears in text
NUM_CLASSES = len(SYMBOLS)  # 29
_INDEX = {c: i for i, c in enumerate(SYMBOLS) if i != BLANK}


def normalize_transcript(text: str, source: str = "", *, drop_unknown: bool = False) -> str:
    """Lower-case `text` and collapse runs of whitespace to one space (stripped at both ends).

    Characters outside a-z, space and apostrophe are an error naming `source` (e.g. the utterance id)
    and the characters, unless `drop_unknown` removes them (then whitespace is collapsed again).
    """
    text = " ".join(text.lower().split())
    unknown = sorted({c for c in text if c not in _INDEX})
    if unknown:
        if not drop_unknown:
            where = f" of {source}" if source else ""
            raise FedctlError(
                f"transcript{where} has characters outside the ASR alphabet (a-z, space, apostrophe): "
                f"{' '.join(repr(c) for c in unknown)} in {text!r}",
                "clean the transcript (LibriSpeech transcripts need nothing), or drop such characters "
                "with drop_unknown=True",
            )
        text = " ".join("".join(c for c in text if c in _INDEX).split())
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


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus-level character and word error rates: total edits / total reference characters (words).

    Whitespace in both sides is collapsed first (a CTC output may emit two spaces around a blank run, which
    would otherwise count as a character error). Raises when a reference is empty (its rate is undefined).
    """
    if len(refs) != len(hyps):
        raise FedctlError(f"{len(refs)} references but {len(hyps)} hypotheses", "score one hypothesis per reference")
    refs = [" ".join(r.split()) for r in refs]
    hyps = [" ".join(h.split()) for h in hyps]
    if not refs or any(not r for r in refs):
        raise FedctlError("error rates need non-empty reference transcripts",
                          "leave utterances with empty transcripts out of the evaluation set")
    return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps))}
