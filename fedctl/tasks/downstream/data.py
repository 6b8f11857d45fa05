"""The utterances a probe trains and evaluates on, and their labels.

Sources (one utterance table): a partition folder (`--parts`), a LibriSpeech-layout tree split across the clients
here exactly as `fedctl data partition librispeech` splits it (`--corpus`), the synth demo corpus, or (KS) a
keyword corpus. Labels per probe:
- pr: the phone sequence of the utterance's `.phn` alignment (`fedctl data synth` writes them), pauses dropped;
  the phone set is the sorted union over the corpus, CTC blank = 0.
- sid: the speaker, over all clients' speakers; the held-out split is redrawn per speaker (every speaker in train
  and test, `val_fraction` of each speaker's utterances, at least one each side), so a speaker needs ≥ 2.
- asr: the normalised transcript as the 29 DeepSpeech characters (blank 0, space, a-z, apostrophe).
- ks: the keyword, `_unknown_` for other words, `_silence_` for background-noise crops (the keyword corpus).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from fedctl.errors import FedctlError

SILENCE_PHONES = ("sil", "h#", "pau", "epi", "sp", "spn")
UNKNOWN, SILENCE = "_unknown_", "_silence_"


@dataclass(frozen=True)
class Utt:
    """One utterance of the table; `label` is the probe's target as text (phones space-joined, a speaker id,
    a transcript or a keyword), `split` train, val or (a keyword corpus's official test rows) test."""

    id: str
    path: str
    num_samples: int
    speaker: str
    client: str
    split: str
    transcript: str = ""
    phones: str | None = None
    label: str = ""
    offset: int = 0  # first sample in `path` (keyword `_silence_` windows of a long noise file)


def read_audio(path: str, offset: int = 0, num_samples: int = -1) -> np.ndarray:
    """16 kHz mono float32 in [-1, 1] (`num_samples` from `offset`; -1: to the end)."""
    try:
        audio, rate = sf.read(path, start=offset, frames=num_samples, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise FedctlError(f"cannot read audio {path} ({str(exc).splitlines()[0][:100]})",
                          "the file changed since it was indexed: re-make the partition") from None
    if rate != 16000 or audio.ndim != 1:
        raise FedctlError(f"{path}: {rate} Hz {audio.ndim}-D audio; the upstreams need 16 kHz mono", "convert it first")
    return audio


def read_phones(path: str) -> list[str]:
    """Phone labels of a TIMIT-style `.phn` file ("start end phone" per line), pauses dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FedctlError(f"phone alignment {path} is unreadable ({type(exc).__name__})",
                          "re-make the corpus with `fedctl data synth`") from None
    phones = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise FedctlError(f"{path}:{number} is not 'start end phone'", "a .phn file has one segment per line")
        if fields[2] not in SILENCE_PHONES:
            phones.append(fields[2])
    return phones


# ------------------------------------------------------------------------------------------- sources


def _rows_to_utts(client: str, rows: list[dict]) -> list[Utt]:
    return [Utt(id=str(r["id"]), path=str(r["path"]), num_samples=int(r["num_samples"]), speaker=str(r.get("speaker", "")),
                client=client, split=str(r.get("split", "train")), transcript=str(r.get("transcript", "")),
                phones=r.get("phones")) for r in rows]


def from_parts(parts: str | Path) -> dict[str, list[Utt]]:
    from fedctl.data.speech.partition import read_partition

    _summary, manifests = read_partition(parts)
    return {cid: _rows_to_utts(cid, rows) for cid, rows in manifests.items()}


def from_corpus(corpus: str | Path, clients: int, by: str, val_fraction: float, seed: int) -> dict[str, list[Utt]]:
    """Index a LibriSpeech-layout tree and split it as `fedctl data partition librispeech --by BY` does."""
    from fedctl.data.speech import partition as p
    from fedctl.data.speech.librispeech import index_librispeech

    if by not in ("speaker", "iid"):
        raise FedctlError(f"task.partition_by = {by!r} is not valid", "use speaker or iid")
    index = index_librispeech([corpus])
    if not index.utterances:
        raise FedctlError(f"no usable utterances under {corpus}", "check the tree (see `fedctl data partition librispeech`)")
    rng = np.random.default_rng(seed)
    parts = p.split_by_speaker(index.utterances, clients) if by == "speaker" else p.split_iid(index.utterances, clients, rng)
    for part in parts:
        p.assign_splits(part, val_fraction, rng)
    return {p.client_name(k): _rows_to_utts(p.client_name(k), [u.to_json() for u in part]) for k, part in enumerate(parts)}


def from_keywords(folder: str | Path, keywords: list[str], clients: int, by: str, seed: int) -> dict[str, list[Utt]]:
    """A Speech Commands-layout folder through `fedctl.data.speech.keywords`: its train rows dealt out by
    `partition_keywords` (speaker or iid), its validation and test rows (official lists or hashing rule) held out
    and pooled (split "val" and "test"); `_silence_` rows are 1 s windows of the background noise (an `offset`
    into the file)."""
    from fedctl.data.speech.keywords import partition_keywords, read_speech_commands

    rows = read_speech_commands(folder, keywords=keywords)
    parts = partition_keywords(rows, clients, by=by, seed=seed)
    held = [(r, "val" if r.split == "validation" else "test") for r in rows if r.split in ("validation", "test")]

    def utt(r, cid: str, split: str) -> Utt:
        return Utt(id=r.id, path=r.path, num_samples=r.num_samples, speaker=r.speaker or "", client=cid, split=split,
                   transcript=r.word, label=r.label, offset=r.offset)

    out = {f"client_{k:03d}": [utt(r, f"client_{k:03d}", "train") for r in part] for k, part in enumerate(parts)}
    for i, (r, split) in enumerate(held):  # pooled for the global evaluation; dealt out for --eval-clients
        cid = f"client_{i % clients:03d}"
        out[cid].append(utt(r, cid, split))
    return out


# ------------------------------------------------------------------------------------------- labels


def label_pr(clients: dict[str, list[Utt]]) -> tuple[dict[str, list[Utt]], list[str]]:
    """Phone sequences as labels; the vocabulary (blank first) of every phone in the corpus."""
    missing = [u for us in clients.values() for u in us if not u.phones]
    if missing:
        raise FedctlError(f"--probe pr needs phone alignments, but {missing[0].path} has none "
                          f"({len(missing)} of {sum(map(len, clients.values()))} utterances lack a .phn file)",
                          "use a corpus with TIMIT-style .phn files next to the audio (`fedctl data synth` writes them), "
                          "or another probe (sid, asr)")
    out = {cid: [replace(u, label=" ".join(read_phones(u.phones))) for u in us] for cid, us in clients.items()}
    phones = sorted({p for us in out.values() for u in us for p in u.label.split()})
    return out, ["<blank>", *phones]


def label_sid(clients: dict[str, list[Utt]], val_fraction: float, seed: int) -> tuple[dict[str, list[Utt]], list[str]]:
    """Speakers as labels; the split redrawn per speaker (seeded) so that every speaker is in train and val."""
    by_speaker: dict[str, list[Utt]] = defaultdict(list)
    for us in clients.values():
        for u in us:
            by_speaker[u.speaker].append(u)
    lonely = sorted(s for s, us in by_speaker.items() if len(us) < 2)
    if lonely:
        raise FedctlError(f"--probe sid: speaker {lonely[0]} has only one utterance "
                          f"({len(lonely)} such speaker(s)); it cannot be in both train and test",
                          "give every speaker at least 2 utterances, or leave such speakers out of the corpus")
    rng = np.random.default_rng(seed)
    val_ids: set[str] = set()
    for speaker in sorted(by_speaker):
        us = sorted(by_speaker[speaker], key=lambda u: u.id)
        n_val = min(len(us) - 1, max(1, int(round(val_fraction * len(us)))))
        val_ids |= {us[i].id for i in rng.permutation(len(us))[:n_val].tolist()}
    out = {cid: [replace(u, label=u.speaker, split="val" if u.id in val_ids else "train") for u in us]
           for cid, us in clients.items()}
    return out, sorted(by_speaker)


def label_asr(clients: dict[str, list[Utt]]) -> tuple[dict[str, list[Utt]], list[str]]:
    from fedctl.tasks.asr.text import SYMBOLS, normalize_transcript

    out = {cid: [replace(u, label=normalize_transcript(u.transcript, u.id)) for u in us] for cid, us in clients.items()}
    return out, list(SYMBOLS)


def label_ks(clients: dict[str, list[Utt]], keywords: list[str]) -> tuple[dict[str, list[Utt]], list[str]]:
    from fedctl.data.speech.keywords import keyword_labels

    return clients, keyword_labels(keywords)


def check_clients(clients: dict[str, list[Utt]], num_clients: int, source: str) -> None:
    if len(clients) != num_clients:
        raise FedctlError(f"{source} holds {len(clients)} clients but the run has {num_clients}",
                          f"use --clients {len(clients)} (or re-partition)")
    empty = [cid for cid, us in clients.items() if not any(u.split == "train" for u in us)]
    if empty:
        raise FedctlError(f"client(s) {', '.join(empty)} of {source} have no training utterances",
                          "use fewer clients or more data")
    if not any(u.split == "val" for us in clients.values() for u in us):
        raise FedctlError(f"{source} has no held-out utterances", "raise task.val_fraction (e.g. 0.2)")


def demo_keywords(root: Path, speakers: int, log: Callable[[str], None]) -> Path:
    """The synth keyword demo (`fedctl data synth --keywords`), made once under `root`."""
    from fedctl.data.speech.demo import DEMO_SEED
    from fedctl.data.speech.synth_keywords import synth_keywords

    folder = root / f"keywords-s{max(3, speakers)}-seed{DEMO_SEED}"
    if not folder.is_dir():
        log(f"demo data: synthesizing a keyword corpus ({max(3, speakers)} eSpeak speakers) into {folder}")
        synth_keywords(folder, speakers=max(3, speakers), repetitions=1, noise_seconds=10, seed=DEMO_SEED)
    return folder


def load_table(cfg, num_clients: int, seed: int, demo_root: Callable[[], Path], log: Callable[[str], None]
               ) -> tuple[dict[str, list[Utt]], list[str], str]:
    """(utterances per client with labels and splits, label vocabulary, source description)."""
    given = [k for k in ("corpus", "parts", "keywords") if getattr(cfg, k)]
    if len(given) > 1:
        raise FedctlError(f"--{given[0]} and --{given[1]} both name the data", "give one of --corpus, --parts, --keywords")
    keywords = [w.strip() for w in cfg.keyword_list.split(",") if w.strip()]
    if cfg.probe == "ks":
        folder = cfg.keywords
        if not folder:
            if cfg.corpus or cfg.parts:
                raise FedctlError("--probe ks reads a keyword corpus, not --corpus/--parts",
                                  "pass --keywords DIR (a Speech Commands-layout folder), or neither for the demo")
            folder = demo_keywords(demo_root(), cfg.demo_speakers, log)
        clients = from_keywords(folder, keywords, num_clients, cfg.partition_by, seed)
        source = str(folder)
    elif cfg.keywords:
        raise FedctlError(f"--keywords is for --probe ks, not {cfg.probe}", "drop --keywords or use --probe ks")
    elif cfg.corpus:
        clients, source = from_corpus(cfg.corpus, num_clients, cfg.partition_by, cfg.val_fraction, seed), str(cfg.corpus)
    elif cfg.parts:
        clients, source = from_parts(cfg.parts), str(cfg.parts)
    else:
        from fedctl.data.speech.demo import demo_partition

        root = demo_root()
        log(f"no --corpus/--parts: using the synth demo corpus ({cfg.demo_speakers} eSpeak speakers x "
            f"{cfg.demo_utterances} utterances, by speaker) under {root}")
        parts = demo_partition(root, num_clients, cfg.demo_speakers, cfg.demo_utterances, log)
        clients, source = from_parts(parts), str(parts)
    if cfg.probe == "pr":
        clients, vocab = label_pr(clients)
    elif cfg.probe == "sid":
        clients, vocab = label_sid(clients, cfg.val_fraction, seed)
    elif cfg.probe == "asr":
        clients, vocab = label_asr(clients)
    else:
        clients, vocab = label_ks(clients, keywords)
    check_clients(clients, num_clients, source)
    return clients, vocab, source
