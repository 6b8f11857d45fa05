"""`fedctl data synth`: a LibriSpeech-layout multi-speaker corpus spoken by eSpeak NG, offline and seeded.

Layout written under `out/` (as LibriSpeech, plus TIMIT-style phone alignments):

    SPEAKERS.TXT                               ; ID | SEX | SUBSET | MINUTES | NAME (NAME = the eSpeak voice)
    <speaker>/<chapter>/<speaker>-<chapter>.trans.txt   one "<utt-id> TRANSCRIPT" line per utterance
    <speaker>/<chapter>/<utt-id>.flac          16 kHz mono 16-bit FLAC
    <speaker>/<chapter>/<utt-id>.phn           "<start> <end> <phone>" per line, in samples at 16 kHz

A speaker is one fixed (language voice, variant, pitch, rate, pitch range) tuple, distinct across speakers.
Sentences come from `fedctl.data.textgen`; each utterance is re-drawn until it lasts 0.5-4 s.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from fedctl.data.speech.espeak import Espeak, Synthesis
from fedctl.data.textgen import generate_sentences
from fedctl.errors import FedctlError
from fedctl.utils.io import atomic_dir, check_out_dir

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5
MAX_SECONDS = 4.0
SILENCE = "sil"

# English voices shipped with espeak-ng-data; variants whose gender is known (m* male, f* female).
LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: everything eSpeak needs to say a sentence the same way every time."""

    language: str
    variant: str
    pitch: int  # 0-100, eSpeak's base pitch
    rate: int  # words per minute
    pitch_range: int  # 0-100

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"

    @property
    def sex(self) -> str:
        return "F" if self.variant.startswith("f") else "M"

    def describe(self) -> str:
        return f"{self.name} pitch={self.pitch} rate={self.rate} range={self.pitch_range}"


@dataclass
class SynthResult:
    out: Path
    speakers: int
    utterances: int
    seconds: float  # total audio, seconds
    min_duration: float  # seconds
    max_duration: float  # seconds
    elapsed: float  # wall-clock seconds to build the corpus
    voices: dict[str, str] = field(default_factory=dict)  # speaker id -> voice description


def speaker_voices(num_speakers: int, seed: int) -> list[Voice]:
    """Distinct, seeded voices: (language, variant) pairs are used once each before any repeats."""
    rng = random.Random(seed)
    pairs = [(lang, var) for lang in LANGUAGES for var in VARIANTS]
    voices: list[Voice] = []
    seen: set[tuple] = set()
    while len(voices) < num_speakers:
        rng.shuffle(pairs)
        for lang, var in pairs:
            if len(voices) == num_speakers:
                break
            female = var.startswith("f")
            voice = Voice(
                language=lang,
                variant=var,
                pitch=rng.randint(50, 85) if female else rng.randint(15, 50),
                rate=rng.randint(135, 200),
                pitch_range=rng.randint(30, 75),
            )
            if (voice.name, voice.pitch, voice.rate) not in seen:
                seen.add((voice.name, voice.pitch, voice.rate))
                voices.append(voice)
    return voices


def normalize_phone(mnemonic: str) -> str:
    """Map an eSpeak phoneme mnemonic to a phone label: drop stress/syllabic marks, pauses become `sil`."""
    if mnemonic.startswith("_") or not mnemonic.strip():
        return SILENCE
    phone = mnemonic.strip("',%=")
    return phone or SILENCE


def phone_segments(synthesis: Synthesis, num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int, str]]:
    """Turn phoneme start events into contiguous (start, end, phone) segments covering [0, num_samples)."""
    starts = [(min(num_samples, round(t * sample_rate)), normalize_phone(p)) for t, p in synthesis.phonemes]
    segments: list[tuple[int, int, str]] = []
    cursor, label = 0, SILENCE
    for start, phone in starts:
        if start > cursor:
            segments.append((cursor, start, label))
            cursor = start
        label = phone
    if num_samples > cursor:
        segments.append((cursor, num_samples, label))
    # merge neighbours with the same label (e.g. two pause events in a row)
    merged: list[tuple[int, int, str]] = []
    for seg in segments:
        if merged and merged[-1][2] == seg[2]:
            merged[-1] = (merged[-1][0], seg[1], seg[2])
        else:
            merged.append(seg)
    return merged


def _to_16k(samples: np.ndarray, native_rate: int, noise: np.ndarray) -> np.ndarray:
    # scipy's polyphase resampler (anti-aliased, exact rational ratio); torchaudio is unusable here.
    x = samples.astype(np.float32) / 32768.0
    if native_rate != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, native_rate)
        x = resample_poly(x, SAMPLE_RATE // g, native_rate // g).astype(np.float32)
    # A faint noise floor (about -70 dBFS): real recordings are never digitally silent, and log-mel
    # features of exact zeros would all collapse onto the energy floor.
    x = x + noise[: len(x)] if len(noise) >= len(x) else x
    return np.clip(x, -1.0, 1.0)


def _utterance(engine: Espeak, rng: random.Random, voice: Voice) -> tuple[str, np.ndarray, list]:
    """Draw sentences until one lasts MIN_SECONDS..MAX_SECONDS; returns (text, 16 kHz float audio, phones)."""
    seconds_per_word = 60.0 / voice.rate * 1.15
    target = rng.uniform(MIN_SECONDS + 0.1, MAX_SECONDS - 0.2)
    words = max(2, round(target / seconds_per_word))
    for _attempt in range(40):
        (text,) = generate_sentences(1, seed=rng.getrandbits(32), min_words=max(1, words - 1), max_words=words + 1)
        engine.seed(rng.getrandbits(31))
        synthesis = engine.synthesize(text)
        duration = len(synthesis.samples) / synthesis.sample_rate
        if duration > MAX_SECONDS:
            words = max(1, words - 1)
        elif duration < MIN_SECONDS:
            words += 1
        else:
            noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 3e-4, int(duration * SAMPLE_RATE) + 8)
            audio = _to_16k(synthesis.samples, synthesis.sample_rate, noise.astype(np.float32))
            return text, audio, phone_segments(synthesis, len(audio))
    raise FedctlError(  # pragma: no cover - the grammar always reaches the range within a few draws
        f"could not draw a {MIN_SECONDS}-{MAX_SECONDS} s sentence for voice {voice.describe()}",
        "try another --seed",
    )


def _transcript(text: str) -> str:
    # LibriSpeech transcripts: upper case, no punctuation
    return " ".join(w.strip(".?,!").upper() for w in text.split())


def _synth_speakers(root: str, seed: int, first_index: int, voices: list[Voice], utterances: int) -> list[dict]:
    """Worker: write every utterance of `voices` (speakers first_index, first_index+1, ...) under `root`."""
    engine = Espeak.instance()
    chapters_per_speaker = max(1, min(3, utterances // 20))
    results = []
    for offset, voice in enumerate(voices):
        speaker_id = str(1001 + first_index + offset)
        engine.set_voice(voice.name, pitch=voice.pitch, rate=voice.rate, pitch_range=voice.pitch_range)
        rng = random.Random(f"{seed}/{speaker_id}")
        durations = []
        for c in range(chapters_per_speaker):
            chapter_id = f"{speaker_id}{c:02d}"
            chapter_dir = Path(root) / speaker_id / chapter_id
            chapter_dir.mkdir(parents=True)
            lines = []
            for u in range(c, utterances, chapters_per_speaker):
                utt_id = f"{speaker_id}-{chapter_id}-{u:04d}"
                text, audio, phones = _utterance(engine, rng, voice)
                sf.write(chapter_dir / f"{utt_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
                (chapter_dir / f"{utt_id}.phn").write_text("".join(f"{s} {e} {p}\n" for s, e, p in phones))
                lines.append(f"{utt_id} {_transcript(text)}\n")
                durations.append(len(audio) / SAMPLE_RATE)
            (chapter_dir / f"{speaker_id}-{chapter_id}.trans.txt").write_text("".join(lines))
        results.append({"speaker": speaker_id, "voice": voice, "durations": durations})
    return results


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run_in_fresh_processes(worker, jobs: list[tuple], workers: int) -> list:
    """Run `worker(*job)` for each job, each in a fresh forked process, `workers` at a time; returns the
    concatenation of the workers' result lists, in job order.

    A fresh single-worker pool per job: fork is cheap (no re-import of torch as with spawn) and the parent
    never touches eSpeak, so every child starts from the library's pristine state (see `synth_corpus`).
    """
    results: list = []
    for wave in range(0, len(jobs), workers):
        pools = [ProcessPoolExecutor(max_workers=1, mp_context=_context()) for _ in jobs[wave : wave + workers]]
        try:
            futures = [pool.submit(worker, *job) for pool, job in zip(pools, jobs[wave : wave + workers])]
            for future in futures:
                results.extend(future.result())
        finally:
            for pool in pools:
                pool.shutdown(cancel_futures=True)
    return results


def _chunks(num_speakers: int) -> list[range]:
    # The chunking depends on the speaker count only, so the corpus does not depend on the worker count.
    n = max(1, min(num_speakers, max(2, math.ceil(num_speakers / 50))))
    bounds = [round(i * num_speakers / n) for i in range(n + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def synth_corpus(
    out: str | Path, *, speakers: int = 24, utterances: int = 40, seed: int = 0, workers: int | None = None,
    overwrite: bool = False,
) -> SynthResult:
    """Write a LibriSpeech-layout corpus of `speakers` x `utterances` eSpeak utterances to `out` (atomically).

    eSpeak NG's waveform generator keeps state that even espeak_Terminate/espeak_Initialize do not reset
    (consecutive calls with the same text differ), so each chunk of speakers is synthesized in a fresh
    process: the corpus is then a function of (speakers, utterances, seed) alone (this process must
    not have used eSpeak itself, which holds for the CLI). `workers` defaults to
    min(2, CPU count).
    """
    if speakers < 1 or utterances < 1:
        raise FedctlError(
            f"--speakers and --utterances must be at least 1 (got {speakers}, {utterances})",
            "e.g. fedctl data synth --speakers 24 --utterances 40",
        )
    if speakers > 9000:
        raise FedctlError(f"--speakers {speakers} is too many (speaker ids are 4 digits)", "use at most 9000")
    out = Path(out)
    check_out_dir(out, overwrite=overwrite)  # before minutes of synthesis: never replace the user's files
    started = time.perf_counter()
    voices = speaker_voices(speakers, seed)
    chunks = _chunks(speakers)
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(chunks)))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        results = run_in_fresh_processes(
            _synth_speakers, [(str(tmp), seed, c.start, voices[c.start : c.stop], utterances) for c in chunks], workers
        )
        rows = [
            f"{r['speaker']:<5}| {r['voice'].sex} | synth-{seed:<9}| {sum(r['durations']) / 60:6.2f} | "
            f"{r['voice'].describe()}\n"
            for r in results
        ]
        (tmp / "SPEAKERS.TXT").write_text(
            "; Synthesized by `fedctl data synth` with eSpeak NG; NAME is the voice (language+variant, pitch, rate)\n"
            ";ID  |SEX| SUBSET          |MINUTES| NAME\n" + "".join(rows)
        )
    durations = [d for r in results for d in r["durations"]]
    return SynthResult(
        out=out,
        speakers=speakers,
        utterances=len(durations),
        seconds=float(sum(durations)),
        min_duration=float(min(durations)),
        max_duration=float(max(durations)),
        elapsed=time.perf_counter() - started,
        voices={r["speaker"]: r["voice"].describe() for r in results},
    )
