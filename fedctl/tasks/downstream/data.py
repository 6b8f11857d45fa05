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
    a transcript or a keyword), `split` train or val."""

    id: str
    path: str
    num_samples: int
    speaker: str
    client: str
    split: str
    transcript: str = ""
    phones: str | None = None
    label: str = ""


def read_audio(path: str) -> np.ndarray:
    """16 kHz mono float32 in [-1, 1]."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=False)
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
    """A Speech Commands-layout folder: one folder per word of `<speaker>_nohash_<n>.wav` files, optional
    `validation_list.txt` / `testing_list.txt` (official held-out membership: both become the val split here) and
    `_background_noise_` (1 s crops become `_silence_`). Words outside `keywords` become `_unknown_`."""
    from fedctl.data.speech import partition as p
    from fedctl.data.speech.librispeech import Utterance

    folder = Path(folder)
    if not folder.is_dir():
        raise FedctlError(f"--keywords {folder} is not a folder", "pass a Speech Commands-layout folder (one folder per word)")
    words = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("_"))
    if not set(words) & set(keywords):
        raise FedctlError(f"--keywords {folder} has no folder for any keyword ({', '.join(keywords)}); it has "
                          f"{', '.join(words[:8]) or 'no word folders'}",
                          "point it at a Speech Commands folder, or set task.keyword_list to words it holds")
    held_out: set[str] = set()
    for name in ("validation_list.txt", "testing_list.txt"):
        if (folder / name).is_file():
            held_out |= {ln.strip() for ln in (folder / name).read_text(encoding="utf-8").splitlines() if ln.strip()}
    utts: list[Utterance] = []
    for word in words:
        for wav in sorted((folder / word).glob("*.wav")):
            info = sf.info(str(wav))
            rel = f"{word}/{wav.name}"
            speaker = wav.stem.split("_nohash_")[0]
            label = word if word in keywords else UNKNOWN
            utts.append(Utterance(id=rel.replace("/", "-").removesuffix(".wav"), path=str(wav.resolve()),
                                  duration=info.frames / 16000, num_samples=info.frames, sample_rate=info.samplerate,
                                  speaker=speaker, chapter=word, transcript=label,
                                  split="val" if rel in held_out else "train"))
    noise = folder / "_background_noise_"
    if noise.is_dir():
        for wav in sorted(noise.glob("*.wav")):
            info = sf.info(str(wav))
            utts.append(Utterance(id=f"noise-{wav.stem}", path=str(wav.resolve()), duration=info.frames / 16000,
                                  num_samples=info.frames, sample_rate=info.samplerate, speaker=f"noise-{wav.stem}",
                                  chapter="_background_noise_", transcript=SILENCE, split="train"))
    rng = np.random.default_rng(seed)
    parts = p.split_by_speaker(utts, clients) if by == "speaker" else p.split_iid(utts, clients, rng)
    out = {}
    for k, part in enumerate(parts):
        cid = p.client_name(k)
        out[cid] = [Utt(id=u.id, path=u.path, num_samples=u.num_samples, speaker=u.speaker, client=cid, split=u.split,
                        transcript=u.transcript, label=u.transcript) for u in part]
    if not any(u.split == "val" for us in out.values() for u in us):  # no official lists: hold out by hash of id
        out = {cid: [replace(u, split="val" if int(u.id.encode().hex(), 16) % 5 == 0 else "train") for u in us]
               for cid, us in out.items()}
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
    return clients, [*keywords, SILENCE, UNKNOWN]


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


def load_table(cfg, num_clients: int, seed: int, demo_root: Callable[[], Path], log: Callable[[str], None]
               ) -> tuple[dict[str, list[Utt]], list[str], str]:
    """(utterances per client with labels and splits, label vocabulary, source description)."""
    given = [k for k in ("corpus", "parts", "keywords") if getattr(cfg, k)]
    if len(given) > 1:
        raise FedctlError(f"--{given[0]} and --{given[1]} both name the data", "give one of --corpus, --parts, --keywords")
    keywords = [w.strip() for w in cfg.keyword_list.split(",") if w.strip()]
    if cfg.probe == "ks":
        if not cfg.keywords:
            raise FedctlError("--probe ks needs --keywords DIR (a Speech Commands-layout folder)",
                              "pass the folder of Speech Commands (one folder per word, _background_noise_)")
        clients = from_keywords(cfg.keywords, keywords, num_clients, cfg.partition_by, seed)
        source = str(cfg.keywords)
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
