"""Keyword spotting (KS) data: read a Speech Commands folder into one utterance table, split it across clients.

The folder layout is the one of Google's Speech Commands v0.01 / v0.02 archives (Warden 2018,
arXiv 1804.03209), which `fedctl data synth --keywords` also writes:

    <word>/<speaker>_nohash_<n>.wav     1 s, 16 kHz mono; one folder per spoken word
    _background_noise_/*.wav            long noise recordings (about a minute each): the `_silence_` class
    validation_list.txt, testing_list.txt   one `<word>/<file>.wav` per line: the official held-out files

Labels follow s3prl's `speech_commands` task (SUPERB KS): the keywords (default the ten commands yes ... go),
then `_unknown_` (every other word folder) and `_silence_` (noise), so 12 classes by default, indexed in
that order (`keyword_labels`).

Splits are by speaker. The official lists were produced by the dataset README's `which_set` rule: the
speaker id (the file name before `_nohash_`) is hashed with SHA-1, mod 2**27, scaled to a percentage;
< 10 validation, < 20 testing, else training. `which_set` here reproduces it (checked against ids from the
official lists in the tests). The lists are read when present; without them the rule is applied directly.

Interface (what the downstream KS probe uses):

    from fedctl.data.speech.keywords import read_speech_commands, partition_keywords, load_keyword_audio

    table = read_speech_commands("speech_commands_v0.01")            # list[KeywordUtterance]
    train = [u for u in table if u.split == "train"]                 # split: train | validation | test
    clients = partition_keywords(table, clients=10, by="speaker")    # list (per client) of train rows
    wav = load_keyword_audio(table[0])                               # float32 [num_samples] at 16 kHz
    labels = keyword_labels()                                        # index -> label, u.label_index into it

A `KeywordUtterance` row: `id` (`<word>/<stem>`, or `_background_noise_/<stem>@<window>` for silence),
`path` (absolute), `word` (folder name), `label`, `label_index`, `speaker` (None for silence), `split`,
`offset` and `num_samples` (the samples of `path` to read, at `sample_rate` = 16000 Hz).

`_silence_`: s3prl appends the six background files whole to both train and dev and crops a random 1 s each
time one is drawn. A table needs fixed rows, so each background file is cut into consecutive 1 s windows
(`offset` = k * 16000, `num_samples` = 16000) and the windows are split by time within each file: the first
80 % train, the next 10 % validation, the last 10 % test (no audio in two splits). A probe that wants s3prl's
random crops can shift a window within the train windows of its file. A `_silence_` folder of 1 s clips (as
in s3prl's separate v0.01 test archive) is read as silence clips.

s3prl tests KS on the separate v0.01 test archive (`speech_commands_test_set_v0.01`, folders per class with
`_silence_` and `_unknown_` already made); pass it as `test_root=` and it becomes the test split, while the
train archive's testing_list files are dropped, as s3prl does.

Partitioning (`partition_keywords`) covers the train split only: validation and test stay global held-out
sets (the server's evaluation data). `by="speaker"` reuses `data partition`'s greedy speaker split (no
speaker on two clients); silence windows, which have no speaker, are dealt round-robin in a seeded order.
`by="iid"` deals every train row out evenly after a seeded shuffle.

Audio headers (rate, channels, frames) are read for every file, so that a file that is not 16 kHz mono is
refused by name here, not deep inside a training run. Measured: 3,500 rows/s on a shared 2-core machine
(a 3,000-clip synthetic corpus in 0.9 s); v0.02's 105k files would take about 30 s there.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from fedctl.errors import FedctlError

SAMPLE_RATE = 16000  # Hz; every Speech Commands file is 16 kHz mono
CLIP_SAMPLES = 16000  # one second: the length of a clip and of a silence window
MIN_SAMPLES = 400  # one 25 ms window: the shortest input a HuBERT conv stack turns into a frame

SPEECH_COMMANDS_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# The 20 other words of v0.01 (v0.02 adds backward, follow, forward, learn, visual): `_unknown_` material.
V1_AUXILIARY_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                      "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_NOISE = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
SPLITS = ("train", "validation", "test")
VALIDATION_PERCENTAGE = 10
TESTING_PERCENTAGE = 10
# From the dataset README: "~134M", the most wavs per class the hashing scheme is laid out for.
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
SILENCE_SHARES = (0.8, 0.1, 0.1)  # train / validation / test share of each background file's windows
_NOHASH = re.compile(r"_nohash_.*$")


def speaker_of(filename: str) -> str:
    """The speaker id of a Speech Commands file: its name before `_nohash_` (`0a7c2a8d_nohash_1.wav` -> `0a7c2a8d`)."""
    return _NOHASH.sub("", os.path.basename(filename))


def which_set(filename: str, validation_percentage: float = VALIDATION_PERCENTAGE,
              testing_percentage: float = TESTING_PERCENTAGE) -> str:
    """The split ('train', 'validation' or 'test') the Speech Commands README's hashing rule gives a file.

    Only the speaker id enters the hash, so all of a speaker's files land in one split, and the split of a
    file never changes as files are added.
    """
    digest = hashlib.sha1(speaker_of(filename).encode("utf-8")).hexdigest()
    percentage = (int(digest, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


def keyword_labels(keywords: Sequence[str] = SPEECH_COMMANDS_KEYWORDS) -> list[str]:
    """Class labels in index order: the keywords, then `_unknown_`, then `_silence_` (s3prl's order)."""
    return [*keywords, UNKNOWN, SILENCE]


@dataclass(frozen=True)
class KeywordUtterance:
    """One KS example: `num_samples` samples of `path` from sample `offset`, at `sample_rate` Hz."""

    id: str
    path: str
    word: str  # the folder the file sits in (`_background_noise_` for silence windows)
    label: str  # a keyword, `_unknown_` or `_silence_`
    label_index: int  # index into keyword_labels(keywords)
    speaker: str | None  # None for silence
    split: str  # train | validation | test
    offset: int = 0  # samples
    num_samples: int = CLIP_SAMPLES
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.num_samples / self.sample_rate


def check_keywords(keywords: Sequence[str], what: str = "keywords") -> tuple[str, ...]:
    """Keywords must be distinct, non-empty folder names that do not clash with the special folders."""
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",")]
    words = tuple(keywords)
    if not words:
        raise FedctlError(f"no {what} given", f"e.g. {','.join(SPEECH_COMMANDS_KEYWORDS)}")
    for word in words:
        if not isinstance(word, str) or not re.fullmatch(r"[a-z][a-z']*", word):
            raise FedctlError(
                f"{what}: {word!r} is not a word (lower-case letters, e.g. 'yes')",
                f"give single lower-case words, comma-separated, e.g. {','.join(SPEECH_COMMANDS_KEYWORDS)}",
            )
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise FedctlError(f"{what}: {', '.join(duplicates)} given twice", "list each word once")
    return words


def _wav_files(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(".wav"))
    except OSError as exc:
        raise FedctlError(f"cannot read folder {folder}: {exc.strerror or exc}", "check the path and its permissions") from None


def _frames(path: Path) -> int:
    """Frames of a 16 kHz mono file (header only); anything else is refused by name."""
    try:
        with sf.SoundFile(str(path)) as info:  # header only; a third cheaper than sf.info (no extra_info)
            pass
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise FedctlError(f"cannot read audio file {path} ({str(exc).splitlines()[0][:120]})",
                          "delete or replace that file (Speech Commands files are 16 kHz mono WAV)") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise FedctlError(
            f"{path} is {info.samplerate} Hz with {info.channels} channel(s); Speech Commands audio is 16 kHz mono",
            "resample it to 16 kHz mono (e.g. `sox IN.wav -r 16000 -c 1 OUT.wav`) or remove it",
        )
    return int(info.frames)


def _read_list(root: Path, name: str, files: set[str]) -> set[str] | None:
    path = root / name
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FedctlError(f"cannot read {path} ({type(exc).__name__})", "restore it from the dataset archive") from None
    entries: set[str] = set()
    for number, line in enumerate(lines, 1):
        entry = line.strip().replace("\\", "/")
        if not entry:
            continue
        if entry not in files:
            raise FedctlError(
                f"{path}:{number} lists {entry}, which is not in {root}",
                "restore the missing file from the archive, or delete both list files to split by the hashing rule",
            )
        entries.add(entry)
    return entries


def _classify(folder: str, keywords: tuple[str, ...]) -> str:
    if folder in keywords or folder in (UNKNOWN, SILENCE):
        return folder
    return UNKNOWN


def _word_folders(root: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as exc:
        raise FedctlError(f"cannot read folder {root}: {exc.strerror or exc}", "check the path and its permissions") from None
    # `_background_noise_` is not a word; other `_x_` folders are s3prl test-archive classes; hidden and
    # `__MACOSX`-style folders are archive debris
    return [n for n in names if not n.startswith(".") and not n.startswith("__") and n != BACKGROUND_NOISE
            and (not n.startswith("_") or n in (UNKNOWN, SILENCE))]


def _check_root(root: Path, keywords: tuple[str, ...], what: str) -> list[str]:
    if not root.is_dir():
        raise FedctlError(f"{what} {root} is not a folder",
                          "pass the extracted Speech Commands folder (it holds yes/ no/ ... _background_noise_/)")
    folders = _word_folders(root)
    present = [k for k in keywords if k in folders]
    if not present:
        raise FedctlError(
            f"{what} {root} has no folder for any keyword: expected {' '.join(k + '/' for k in keywords)}",
            "pass an extracted Speech Commands folder (v0.01 or v0.02), or write one with "
            "`fedctl data synth --keywords --out DIR`; other keywords: set the keyword list",
        )
    missing = [k for k in keywords if k not in folders]
    if missing:
        raise FedctlError(
            f"{what} {root} has no folder for keyword(s) {', '.join(missing)}: a class without examples",
            f"drop them from the keyword list, or use a folder that has {' '.join(k + '/' for k in missing)}",
        )
    return folders


def _word_rows(root: Path, folders: list[str], keywords: tuple[str, ...], labels: list[str],
               split_of) -> list[KeywordUtterance]:
    rows = []
    root = root.resolve()  # once: Path.resolve per file costs a syscall per path component
    for folder in folders:
        label = _classify(folder, keywords)
        for name in _wav_files(root / folder):
            path = root / folder / name
            frames = _frames(path)
            if frames < MIN_SAMPLES:
                raise FedctlError(f"{path} has {frames} samples, fewer than one 25 ms window ({MIN_SAMPLES})",
                                  "delete that file (it holds no speech an encoder can see)")
            split = split_of(f"{folder}/{name}")
            if split is None:
                continue
            rows.append(KeywordUtterance(
                id=f"{folder}/{Path(name).stem}", path=str(path), word=folder, label=label,
                label_index=labels.index(label), speaker=None if label == SILENCE else speaker_of(name),
                split=split, offset=0, num_samples=frames,
            ))
    return rows


def silence_windows(path: str | Path, labels: list[str]) -> list[KeywordUtterance]:
    """Consecutive 1 s windows of one background-noise file, split by time (SILENCE_SHARES)."""
    path = Path(path)
    count = _frames(path) // CLIP_SAMPLES
    n_val = round(SILENCE_SHARES[1] * count)
    n_test = round(SILENCE_SHARES[2] * count)
    n_train = count - n_val - n_test
    rows = []
    for k in range(count):
        split = "train" if k < n_train else "validation" if k < n_train + n_val else "test"
        rows.append(KeywordUtterance(
            id=f"{BACKGROUND_NOISE}/{path.stem}@{k}", path=str(path.resolve()), word=BACKGROUND_NOISE,
            label=SILENCE, label_index=labels.index(SILENCE), speaker=None, split=split,
            offset=k * CLIP_SAMPLES, num_samples=CLIP_SAMPLES,
        ))
    return rows


def read_speech_commands(
    root: str | Path,
    keywords: Sequence[str] = SPEECH_COMMANDS_KEYWORDS,
    *,
    test_root: str | Path | None = None,
) -> list[KeywordUtterance]:
    """Read a Speech Commands folder (v0.01/v0.02 layout) into KS rows; see the module docstring.

    `keywords`: the target words (a list, or one comma-separated string); every other word folder is
    `_unknown_`. Splits come from validation_list.txt / testing_list.txt (the hashing rule without them).
    `test_root`: s3prl's separate test archive, read as the test split instead of testing_list.txt.
    Rows are ordered by folder, then file name; silence windows last within each root.
    """
    keywords = check_keywords(keywords)
    labels = keyword_labels(keywords)
    root = Path(root)
    folders = _check_root(root, keywords, "Speech Commands folder")
    files = {f"{folder}/{name}" for folder in folders for name in _wav_files(root / folder)}
    validation = _read_list(root, VALIDATION_LIST, files)
    testing = _read_list(root, TESTING_LIST, files)
    if (validation is None) != (testing is None):
        have, lack = (VALIDATION_LIST, TESTING_LIST) if testing is None else (TESTING_LIST, VALIDATION_LIST)
        raise FedctlError(f"{root} has {have} but no {lack}",
                          f"restore {lack} from the archive, or delete {have} to split by the hashing rule")
    if validation is not None and testing is not None and validation & testing:
        both = sorted(validation & testing)
        raise FedctlError(f"{root}: {both[0]} is in both {VALIDATION_LIST} and {TESTING_LIST}"
                          f"{f' (and {len(both) - 1} more)' if len(both) > 1 else ''}",
                          "restore the list files from the archive")

    def split_of(entry: str) -> str | None:
        if validation is None:
            split = which_set(entry)
        else:
            split = "validation" if entry in validation else "test" if entry in testing else "train"
        return None if split == "test" and test_root is not None else split

    rows = _word_rows(root, folders, keywords, labels, split_of)
    background = root / BACKGROUND_NOISE
    if background.is_dir():
        for name in _wav_files(background):
            rows.extend(r for r in silence_windows(background / name, labels)
                        if test_root is None or r.split != "test")
    if test_root is not None:
        test_root = Path(test_root)
        test_folders = _check_root(test_root, keywords, "Speech Commands test folder")
        rows.extend(_word_rows(test_root, test_folders, keywords, labels, lambda entry: "test"))
    splits_with_silence = {r.split for r in rows if r.label == SILENCE}
    if "train" not in splits_with_silence:
        raise FedctlError(
            f"{root} has no `_silence_` examples: {BACKGROUND_NOISE}/ is missing or holds no .wav of 1 s or more",
            f"restore {BACKGROUND_NOISE}/ from the archive (the real one holds six ~1 min noise recordings)",
        )
    return rows


def load_keyword_audio(utterance: KeywordUtterance) -> np.ndarray:
    """The row's samples as float32 in [-1, 1], shape [num_samples], at 16 kHz."""
    try:
        audio, rate = sf.read(utterance.path, start=utterance.offset, frames=utterance.num_samples,
                              dtype="float32", always_2d=False)
    except (RuntimeError, OSError) as exc:
        raise FedctlError(f"cannot read audio file {utterance.path} ({str(exc).splitlines()[0][:120]})",
                          "re-read the corpus: the file changed or vanished after it was indexed") from None
    if rate != utterance.sample_rate or audio.ndim != 1 or len(audio) != utterance.num_samples:
        raise FedctlError(
            f"{utterance.path} changed after it was indexed ({rate} Hz, shape {audio.shape}, "
            f"expected {utterance.num_samples} samples at {utterance.sample_rate} Hz)",
            "re-read the corpus with read_speech_commands",
        )
    return audio


def partition_keywords(
    utterances: Sequence[KeywordUtterance], clients: int, *, by: str = "speaker", seed: int = 0,
) -> list[list[KeywordUtterance]]:
    """Split the train rows across `clients` (validation and test rows are not dealt out; see module doc).

    `by="speaker"`: each speaker's clips on one client (greedy by total seconds, as `data partition`),
    silence windows dealt round-robin in a seeded order. `by="iid"`: every train row shuffled (seeded)
    and dealt out evenly. Within a client, rows keep the order of `utterances`.
    """
    from fedctl.data.speech.partition import split_by_speaker, split_iid

    if by not in ("speaker", "iid"):
        raise FedctlError(f"by={by!r} is not a keyword partition scheme", "use speaker or iid")
    if clients < 1:
        raise FedctlError(f"clients must be >= 1, got {clients}", "e.g. clients=10")
    train = [u for u in utterances if u.split == "train"]
    if not train:
        raise FedctlError("no train rows to partition", "read the corpus with read_speech_commands first")
    rng = np.random.default_rng(seed)
    position = {id(u): i for i, u in enumerate(train)}
    if by == "iid":
        parts = split_iid(train, clients, rng)
    else:
        parts = split_by_speaker([u for u in train if u.speaker is not None], clients)
        silence = [u for u in train if u.speaker is None]
        for i, k in enumerate(rng.permutation(len(silence))):
            parts[i % clients].append(silence[k])
    return [sorted(part, key=lambda u: position[id(u)]) for part in parts]
