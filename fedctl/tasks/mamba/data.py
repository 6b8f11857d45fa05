"""Text for the Mamba2 workload: load it, tokenise it, cut it into blocks, shard the blocks, draw batches.

Everything a client trains on is a row of one `[num_blocks, seq_len + 1]` token tensor: inputs are
`block[:-1]`, next-token labels `block[1:]`. Consecutive blocks overlap by one token, so every token of a
split is predicted exactly once. Tokenised tensors are cached in memory only (per process), never on disk.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fedctl.errors import FedctlError
from fedctl.tasks.mamba.config import MambaConfig
from fedctl.utils.io import write_text

DEMO_SEED = 1234  # the demo corpus is fixed, independent of the run seed, so numbers compare across runs
SPECIAL_TOKENS = ["<|endoftext|>"]  # id 0 in a trained tokenizer; used as the pad token when generating
WIKITEXT_NAMES = ("wikitext-2", "wikitext-2-raw-v1")
# What a data directory may hold, in order of preference: (train file, validation file).
SPLIT_FILES = (("wiki.train.raw", "wiki.valid.raw"), ("train.txt", "valid.txt"))
LOOSE_TEXT_SUFFIXES = (".txt", ".raw")


@dataclass
class TextSplits:
    """Lines of text (each keeps its newline) for training and validation, and where they came from."""

    train: list[str]
    valid: list[str]
    source: str


@dataclass
class MambaData:
    """Tokenised, blocked and sharded data; shared read-only by every client of a task."""

    tokenizer: Tokenizer
    tokenizer_source: str
    source: str
    train_blocks: torch.Tensor  # [num_train_blocks, seq_len + 1] int64
    val_blocks: torch.Tensor  # [num_val_blocks, <= seq_len + 1] int64
    shards: list[torch.Tensor]  # per client: indices into train_blocks
    train_tokens: int
    val_tokens: int


# ------------------------------------------------------------------------------------------- text


MAX_UNDECODABLE = 0.01  # share of bytes that are not UTF-8 above which a "text" file is binary


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    # A few stray bytes in a real corpus are tolerated (replaced); NUL bytes or many undecodable bytes
    # mean a binary file (an archive, a checkpoint), which would otherwise train a tokenizer on noise.
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    nul = b"\0" in raw
    if nul or bad > MAX_UNDECODABLE * max(1, len(raw)):
        why = "it holds NUL bytes" if nul else f"{bad} of its {len(raw)} bytes are not UTF-8"
        raise FedctlError(
            f"data file {path} is not text ({why})",
            "point task.data at a UTF-8 text file (e.g. wiki.train.raw), not an archive or binary file",
        )
    if not text.strip():
        raise FedctlError(f"data file {path} is empty", "point task.data at a file with text in it")
    return text.splitlines(keepends=True)


def _tail_split(lines: list[str], val_fraction: float, source: str) -> TextSplits:
    """Hold out the last `val_fraction` of the lines for validation."""
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines]
    if len(lines) < 2:
        raise FedctlError(
            f"{source} has {len(lines)} line(s): too few to hold out validation text",
            "give at least a few lines of text, or a directory with train.txt and valid.txt",
        )
    n_val = min(len(lines) - 1, max(1, round(len(lines) * val_fraction)))
    return TextSplits(train=lines[:-n_val], valid=lines[-n_val:], source=source)


def _demo_text(cfg: MambaConfig) -> TextSplits:
    from fedctl.data.textgen import generate_sentences

    if cfg.demo_sentences < 2:
        raise FedctlError(f"task.demo_sentences = {cfg.demo_sentences} is too small", "use at least a few hundred")
    lines = [s + "\n" for s in generate_sentences(cfg.demo_sentences, seed=DEMO_SEED)]
    source = f"built-in demo corpus ({cfg.demo_sentences} generated sentences, seed {DEMO_SEED})"
    return _tail_split(lines, cfg.val_fraction, source)


def _wikitext_from_cache() -> TextSplits:
    # Offline unless the user explicitly allowed the hub: nothing may download at run time.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    except Exception as exc:
        raise FedctlError(
            f"WikiText-2 ('wikitext', 'wikitext-2-raw-v1') is not in the local Hugging Face datasets cache "
            f"({type(exc).__name__})",
            "download it once on a machine with network (datasets.load_dataset('wikitext', 'wikitext-2-raw-v1')) "
            "or pass task.data=<dir> holding wiki.train.raw and wiki.valid.raw",
        ) from exc
    return TextSplits(
        train=list(ds["train"]["text"]), valid=list(ds["validation"]["text"]), source="WikiText-2 (HF datasets cache)"
    )


def _directory_text(root: Path, val_fraction: float) -> TextSplits:
    for train_name, valid_name in SPLIT_FILES:
        train, valid = root / train_name, root / valid_name
        if train.is_file() and valid.is_file():
            return TextSplits(train=_read_lines(train), valid=_read_lines(valid), source=f"{train} + {valid}")
        if train.is_file():
            return _tail_split(_read_lines(train), val_fraction, f"{train} (last {val_fraction:.0%} of lines held out)")
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in LOOSE_TEXT_SUFFIXES)
    if not loose:
        wanted = ", ".join(f"{a} + {b}" for a, b in SPLIT_FILES)
        raise FedctlError(
            f"data directory {root} has no recognised text files",
            f"looked for {wanted}, or any *.txt / *.raw files",
        )
    lines = list(itertools.chain.from_iterable(_read_lines(p) for p in loose))
    names = ", ".join(p.name for p in loose[:5]) + (" …" if len(loose) > 5 else "")
    return _tail_split(lines, val_fraction, f"{len(loose)} text file(s) in {root} ({names})")


def load_text(cfg: MambaConfig) -> TextSplits:
    """The training and validation text named by `cfg.data` (see MambaConfig.data)."""
    if not 0.0 < cfg.val_fraction < 1.0:
        raise FedctlError(f"task.val_fraction = {cfg.val_fraction} must be in (0, 1)", "e.g. --set task.val_fraction=0.1")
    if cfg.data is None:
        return _demo_text(cfg)
    if cfg.data.lower() in WIKITEXT_NAMES and not Path(cfg.data).exists():
        return _wikitext_from_cache()
    path = Path(cfg.data).expanduser()
    if not path.exists():
        raise FedctlError(
            f"task.data path not found: {path}",
            "pass a text file, a directory with wiki.train.raw/wiki.valid.raw or train.txt/valid.txt, "
            "'wikitext-2' (local HF cache), or leave it unset for the demo corpus",
        )
    if path.is_dir():
        splits = _directory_text(path, cfg.val_fraction)
    else:
        splits = _tail_split(_read_lines(path), cfg.val_fraction, f"{path} (last {cfg.val_fraction:.0%} of lines held out)")
    for name, lines in (("training", splits.train), ("validation", splits.valid)):
        if not any(ln.strip() for ln in lines):
            raise FedctlError(f"the {name} text from {splits.source} is empty", "check the files have text in them")
    return splits


# -------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `lines` (deterministic for the same text and size)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a Hugging Face tokenizer directory."""
    p = Path(path).expanduser()
    hint = "pass a tokenizer.json written by the `tokenizers` library or a local HF tokenizer directory"
    if not p.exists():
        raise FedctlError(f"task.tokenizer not found: {p}", hint)
    file = p / "tokenizer.json" if p.is_dir() else p
    try:
        if file.is_file():
            return Tokenizer.from_file(str(file))
        from transformers import AutoTokenizer  # e.g. a sentencepiece-only directory, converted to a fast one

        return AutoTokenizer.from_pretrained(str(p), local_files_only=True).backend_tokenizer
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise FedctlError(f"task.tokenizer {p} does not load ({type(exc).__name__}: {first})", hint) from exc


def pad_token_id(tok: Tokenizer) -> int:
    """The id generation pads with: our special token if the tokenizer has it, else 0."""
    for token in SPECIAL_TOKENS + ["<pad>", "</s>", "<|pad|>"]:
        idx = tok.token_to_id(token)
        if idx is not None:
            return idx
    return 0


def tokenize(tok: Tokenizer, lines: list[str]) -> torch.Tensor:
    """One long int64 id stream for a split (lines are encoded in parallel, then concatenated)."""
    encodings = tok.encode_batch(lines, add_special_tokens=False)
    return torch.tensor(list(itertools.chain.from_iterable(e.ids for e in encodings)), dtype=torch.long)


# --------------------------------------------------------------------------------- blocks, shards


def make_blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut an id stream into `[n, seq_len + 1]` blocks with stride seq_len (the tail that doesn't fit is dropped)."""
    n = (len(ids) - 1) // seq_len
    if n <= 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return ids[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


def shard_indices(num_blocks: int, num_clients: int, mode: str) -> list[torch.Tensor]:
    """Partition block indices 0..num_blocks-1 across clients.

    contiguous: client k gets the k-th slice (sizes differ by at most one; the first clients get the extra);
    interleaved: block i goes to client i mod K.
    """
    all_idx = torch.arange(num_blocks)
    if mode == "contiguous":
        return list(torch.tensor_split(all_idx, num_clients))
    if mode == "interleaved":
        return [all_idx[k::num_clients] for k in range(num_clients)]
    raise FedctlError(f"task.shard = {mode!r} is not a sharding mode", "use contiguous or interleaved")


# ------------------------------------------------------------------------------------------ all of it

# (data identity, tokenizer settings, seq_len) -> (tokenizer, source strings, id streams); tests build many tasks.
_CACHE: dict[tuple, tuple] = {}
_CACHE_MAX = 4


def _data_key(cfg: MambaConfig) -> tuple:
    def stamp(p: str | None) -> tuple:
        if p is None:
            return (None,)
        path = Path(p).expanduser()
        if path.is_dir():
            return (str(path.resolve()),) + tuple(
                (c.name, c.stat().st_mtime_ns, c.stat().st_size) for c in sorted(path.iterdir()) if c.is_file()
            )
        if path.is_file():
            return (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
        return (p,)

    return (stamp(cfg.data), cfg.val_fraction, cfg.demo_sentences if cfg.data is None else None,
            stamp(cfg.tokenizer), cfg.vocab_size if cfg.tokenizer is None else None)


def load_data(
    cfg: MambaConfig, num_clients: int, tokenizer_out: Path | None = None, log: Callable[[str], None] = print
) -> MambaData:
    """Text → tokenizer (saved to `tokenizer_out` when trained) → blocks → client shards."""
    if num_clients < 1:
        raise FedctlError(f"num_clients = {num_clients} must be at least 1", "set federation.clients >= 1")
    key = _data_key(cfg)
    if key in _CACHE:
        tok, tok_source, source, train_ids, val_ids = _CACHE[key]
    else:
        splits = load_text(cfg)
        source = splits.source
        if cfg.tokenizer is not None:
            tok, tok_source = load_tokenizer(cfg.tokenizer), f"loaded from {cfg.tokenizer}"
        else:
            if cfg.vocab_size < 257 + len(SPECIAL_TOKENS):
                raise FedctlError(
                    f"task.vocab_size = {cfg.vocab_size} is below the 256 byte symbols + special tokens",
                    "use at least 512 (the default is 2048)",
                )
            tok = train_tokenizer(splits.train, cfg.vocab_size)
            tok_source = f"byte-level BPE trained on the training text (vocab {tok.get_vocab_size()})"
        train_ids, val_ids = tokenize(tok, splits.train), tokenize(tok, splits.valid)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (tok, tok_source, source, train_ids, val_ids)
    if cfg.data is None:
        log(f"no task.data given: using the {source}")

    if cfg.tokenizer is None and tokenizer_out is not None:
        # Saved with the run so exports, `inspect` and later evaluation decode with the same vocabulary.
        write_text(tokenizer_out, tok.to_str())

    train_blocks = make_blocks(train_ids, cfg.seq_len)
    if len(train_blocks) < num_clients:
        raise FedctlError(
            f"too little training text for {num_clients} clients: {len(train_ids)} tokens make "
            f"{len(train_blocks)} block(s) of {cfg.seq_len + 1} tokens, so each client would get "
            f"{len(train_blocks) // num_clients} (some none)",
            "use more text (task.demo_sentences / task.data), fewer clients, or a smaller task.seq_len",
        )
    if len(val_ids) < 2:
        raise FedctlError(
            f"validation text from {source} has {len(val_ids)} token(s)", "raise task.val_fraction or add validation text"
        )
    # A short validation split still gives one (shorter) block rather than none.
    val_blocks = make_blocks(val_ids, min(cfg.seq_len, len(val_ids) - 1))
    return MambaData(
        tokenizer=tok,
        tokenizer_source=tok_source,
        source=source,
        train_blocks=train_blocks,
        val_blocks=val_blocks,
        shards=shard_indices(len(train_blocks), num_clients, cfg.shard),
        train_tokens=len(train_ids),
        val_tokens=len(val_ids),
    )
