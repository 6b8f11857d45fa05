"""`fedctl data synth --keywords`: a Speech Commands-layout keyword corpus spoken by eSpeak NG, offline and seeded.

Layout written under `out/`, as Google's Speech Commands v0.01/v0.02 archives (read back by
`fedctl.data.speech.keywords.read_speech_commands`):

    <word>/<speaker>_nohash_<n>.wav       1 s (16000 samples), 16 kHz mono 16-bit PCM; n = repetition 0, 1, ...
    _background_noise_/<colour>_noise.wav synthetic noise (white, pink, brown) and mains hum: the `_silence_` class
    _background_noise_/README.md
    validation_list.txt, testing_list.txt sorted `<word>/<file>.wav` lines, as the official lists
    README.md                             what was synthesized: words, speakers (id -> eSpeak voice), seed

Every speaker says every word (keywords and the `_unknown_` words) `repetitions` times; repetitions differ in
rate, pitch, gain and position in the second. Speaker ids are 8 hex digits, like the real ones, and the split
follows the official hashing rule on them (`keywords.which_set`): ids are drawn (seeded) until
max(1, round(10 %)) of the speakers hash to validation, as many to testing, and the rest to training, so even a
small corpus has every split, and the lists still agree with the rule.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from fedctl.data.speech.espeak import Espeak
from fedctl.data.speech.keywords import (
    BACKGROUND_NOISE,
    CLIP_SAMPLES,
    SAMPLE_RATE,
    SPEECH_COMMANDS_KEYWORDS,
    TESTING_LIST,
    V1_AUXILIARY_WORDS,
    VALIDATION_LIST,
    check_keywords,
    which_set,
)
from fedctl.data.speech.synth import Voice, _chunks, _to_16k, run_in_fresh_processes, speaker_voices
from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_dir, check_out_dir

NOISE_FILES = ("white_noise", "pink_noise", "brown_noise", "mains_hum")
MAX_RATE_STEPS = 4  # a word longer than 1 s is re-spoken up to this many times, 30 % faster each


@dataclass
class KeywordSynthResult:
    out: Path
    speakers: int
    clips: int
    split_speakers: dict[str, int]  # train / validation / test -> speakers
    split_clips: dict[str, int]  # train / validation / test -> word clips
    noise_files: int
    noise_seconds: float  # per noise file
    elapsed: float  # wall-clock seconds
    voices: dict[str, str] = field(default_factory=dict)  # speaker id -> voice description


def speaker_ids(num_speakers: int, seed: int) -> dict[str, str]:
    """Seeded 8-hex-digit speaker ids -> split ('train' / 'validation' / 'test' by `which_set`), with
    max(1, round(0.1 n)) validation and test speakers each; in a seeded order unrelated to the split."""
    n_val = n_test = max(1, round(0.1 * num_speakers))
    need = {"validation": n_val, "test": n_test, "train": num_speakers - n_val - n_test}
    rng = random.Random(f"{seed}/speaker-ids")
    chosen: dict[str, str] = {}
    while len(chosen) < num_speakers:
        candidate = f"{rng.getrandbits(32):08x}"
        split = which_set(candidate)
        if need[split] > 0 and candidate not in chosen:
            chosen[candidate] = split
            need[split] -= 1
    order = list(chosen)
    rng.shuffle(order)
    return {s: chosen[s] for s in order}


def _word_audio(engine: Espeak, word: str, voice: Voice, pitch: int, rate: int) -> np.ndarray:
    """`word` at 16 kHz, float32, trimmed to where the voice is audible; sped up until it fits in 1 s."""
    for _step in range(MAX_RATE_STEPS):
        engine.set_voice(voice.name, pitch=pitch, rate=rate, pitch_range=voice.pitch_range)
        synthesis = engine.synthesize(word)
        x = _to_16k(synthesis.samples, synthesis.sample_rate, np.zeros(0, dtype=np.float32))
        loud = np.flatnonzero(np.abs(x) > 0.01 * max(float(np.abs(x).max(initial=0.0)), 1e-9))
        if len(loud):
            x = x[loud[0] : loud[-1] + 1]
        if 0 < len(x) <= CLIP_SAMPLES:
            return x
        rate = round(rate * 1.3)
    raise FedctlError(  # pragma: no cover - depends on the word list; the defaults last 0.3-0.7 s
        f"{word!r} does not fit in a 1 s clip even at {rate} words per minute",
        "use single short words (Speech Commands clips are 1 s)",
    )


def _clip(engine: Espeak, rng: random.Random, word: str, voice: Voice) -> np.ndarray:
    engine.seed(rng.getrandbits(31))
    pitch = min(100, max(0, voice.pitch + rng.randint(-4, 4)))
    rate = round(voice.rate * rng.uniform(0.9, 1.1))
    x = _word_audio(engine, word, voice, pitch, rate)
    gain = 10 ** (rng.uniform(-9.0, 0.0) / 20)  # recordings in the real set vary in level
    start = rng.randint(0, CLIP_SAMPLES - len(x))
    # the same faint floor as `data synth` (about -70 dBFS): real recordings are never digitally silent
    clip = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 3e-4, CLIP_SAMPLES).astype(np.float32)
    clip[start : start + len(x)] += gain * x
    return np.clip(clip, -1.0, 1.0)


def _synth_keyword_speakers(root: str, seed: int, speakers: list[tuple[str, Voice]], words: list[str],
                            repetitions: int) -> list[dict]:
    """Worker: every word x repetition of each (speaker id, voice) under `root/<word>/`."""
    engine = Espeak.instance()
    results = []
    for speaker_id, voice in speakers:
        rng = random.Random(f"{seed}/{speaker_id}")
        for word in words:
            for n in range(repetitions):
                audio = _clip(engine, rng, word, voice)
                sf.write(Path(root) / word / f"{speaker_id}_nohash_{n}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        results.append({"speaker": speaker_id, "clips": len(words) * repetitions})
    return results


def noise(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Synthetic background noise at 16 kHz, float32: coloured noise (power ~ 1/f^0, 1/f, 1/f^2) shaped in
    the frequency domain, or a 50 Hz mains hum with harmonics over faint white noise; RMS -35 to -20 dBFS."""
    n = int(round(seconds * SAMPLE_RATE))
    if kind == "mains_hum":
        t = np.arange(n) / SAMPLE_RATE
        x = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi))
                for h in range(1, 8))
        x = x + 0.05 * rng.standard_normal(n)
    else:
        exponent = {"white_noise": 0.0, "pink_noise": 1.0, "brown_noise": 2.0}[kind]
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
        f[0] = f[1] if n > 1 else 1.0  # no infinite DC gain
        x = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    x = x - x.mean()
    rms_db = rng.uniform(-35.0, -20.0)
    x = x * (10 ** (rms_db / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _readme(words, unknown, ids, voices, repetitions, seed) -> str:
    rows = "".join(f"| {s} | {ids[s]} | {voices[s]} |\n" for s in ids)
    return (
        "# Synthetic keyword corpus (Speech Commands layout)\n\n"
        "Written by `fedctl data synth --keywords` with eSpeak NG; every speaker is one eSpeak voice setting.\n"
        f"Seed {seed}; {repetitions} repetition(s) of each word per speaker; clips are 1 s, 16 kHz mono.\n\n"
        f"Keywords: {', '.join(words)}\n\nOther words (`_unknown_`): {', '.join(unknown) or '(none)'}\n\n"
        "Splits: the Speech Commands README's `which_set` hashing rule on the speaker id (10 % validation,\n"
        f"10 % testing), written to {VALIDATION_LIST} and {TESTING_LIST}.\n\n"
        "| speaker | split | voice |\n|---|---|---|\n" + rows
    )


def synth_keywords(
    out: str | Path, *, keywords=SPEECH_COMMANDS_KEYWORDS, unknown_words=V1_AUXILIARY_WORDS, speakers: int = 50,
    repetitions: int = 2, noise_seconds: float = 60.0, seed: int = 0, workers: int | None = None,
    overwrite: bool = False,
) -> KeywordSynthResult:
    """Write a Speech Commands-layout corpus to `out` (atomically); a function of the arguments except
    `workers` (each chunk of speakers is spoken in a fresh process, as in `synth_corpus`)."""
    keywords = check_keywords(keywords, "keywords")
    unknown_words = check_keywords(unknown_words, "unknown words") if len(unknown_words) else ()
    clash = sorted(set(keywords) & set(unknown_words))
    if clash:
        raise FedctlError(f"{', '.join(clash)} is both a keyword and an unknown word",
                          "list each word in one of the two lists")
    if speakers < 3:
        raise FedctlError(f"--speakers must be at least 3 for a keyword corpus (got {speakers})",
                          "one speaker per split at least (train, validation, test), e.g. --speakers 50")
    if repetitions < 1:
        raise FedctlError(f"--repetitions must be at least 1 (got {repetitions})", "e.g. --repetitions 2")
    if not (1.0 <= noise_seconds <= 3600.0):
        raise FedctlError(f"--noise-seconds must be between 1 and 3600 (got {noise_seconds})",
                          "the real background files last about 60 s: --noise-seconds 60")
    out = Path(out)
    check_out_dir(out, overwrite=overwrite)
    started = time.perf_counter()
    ids = speaker_ids(speakers, seed)
    voices = dict(zip(ids, speaker_voices(speakers, seed)))
    words = [*keywords, *unknown_words]
    chunks = _chunks(speakers)
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(chunks)))
    order = list(ids)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for word in words:
            (tmp / word).mkdir()
        jobs = [(str(tmp), seed, [(s, voices[s]) for s in order[c.start : c.stop]], words, repetitions)
                for c in chunks]
        results = run_in_fresh_processes(_synth_keyword_speakers, jobs, workers)
        background = tmp / BACKGROUND_NOISE
        background.mkdir()
        for kind in NOISE_FILES:
            x = noise(kind, noise_seconds, np.random.default_rng([seed, NOISE_FILES.index(kind)]))
            sf.write(background / f"{kind}.wav", x, SAMPLE_RATE, subtype="PCM_16")
        (background / "README.md").write_text(
            "Synthetic background noise for the `_silence_` class, written by `fedctl data synth --keywords`:\n"
            "white, pink (1/f) and brown (1/f^2) noise, and a 50 Hz mains hum with harmonics; 16 kHz mono.\n"
        )
        for name, split in ((VALIDATION_LIST, "validation"), (TESTING_LIST, "test")):
            lines = sorted(f"{w}/{s}_nohash_{n}.wav" for w in words for s in order if ids[s] == split
                           for n in range(repetitions))
            (tmp / name).write_text("".join(line + "\n" for line in lines))
        (tmp / "README.md").write_text(_readme(keywords, unknown_words, ids,
                                               {s: v.describe() for s, v in voices.items()}, repetitions, seed))
    split_speakers = {split: sum(v == split for v in ids.values()) for split in ("train", "validation", "test")}
    return KeywordSynthResult(
        out=out,
        speakers=speakers,
        clips=sum(r["clips"] for r in results),
        split_speakers=split_speakers,
        split_clips={split: n * len(words) * repetitions for split, n in split_speakers.items()},
        noise_files=len(NOISE_FILES),
        noise_seconds=float(noise_seconds),
        elapsed=time.perf_counter() - started,
        voices={s: v.describe() for s, v in voices.items()},
    )
