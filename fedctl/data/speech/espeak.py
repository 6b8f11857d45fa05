"""eSpeak NG through ctypes: waveform plus time-aligned phoneme events, fully offline.

The library and its voice data come from the pip package `espeakng-loader`. Struct layouts and constants
follow espeak-ng's `speak_lib.h` (API revision 12). eSpeak keeps global state and is not thread-safe:
use one `Espeak` per process (`Espeak.instance()`), never from several threads.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from fedctl.errors import FedctlError

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Synthesis:
    """One synthesized utterance at eSpeak's native rate."""

    samples: np.ndarray  # int16, mono
    sample_rate: int  # Hz (22050 for eSpeak NG voices)
    phonemes: list[tuple[float, str]]  # (start in seconds, eSpeak phoneme mnemonic), in time order


class Espeak:
    """A process-wide handle on libespeak-ng in synchronous mode with phoneme events enabled."""

    _instance: Espeak | None = None

    @classmethod
    def instance(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise FedctlError(
                "the eSpeak NG library is not installed (python package espeakng-loader)",
                "pip install espeakng-loader",
            ) from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:
            raise FedctlError(f"cannot load libespeak-ng: {exc}", "reinstall espeakng-loader") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        self._lib = lib
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _INITIALIZE_PHONEME_EVENTS
        )
        if rate <= 0:
            raise FedctlError("eSpeak NG failed to initialise (voice data not found)", "reinstall espeakng-loader")
        self.sample_rate = rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].audio_position, events[i].id.string.decode("utf-8", "replace")))
            i += 1
        return 0

    def seed(self, value: int) -> None:
        """Seed both random streams eSpeak NG draws from (its own, and libc's rand() used by the
        waveform generator; the latter is process-global and otherwise depends on whoever called it first)."""
        ctypes.CDLL(None).srand(ctypes.c_uint(value & 0xFFFFFFFF))
        if hasattr(self._lib, "espeak_ng_SetRandSeed"):
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(value & 0x7FFFFFFF))

    def set_voice(self, name: str, *, pitch: int, rate: int, pitch_range: int = 50) -> None:
        """Select a voice such as "en-us+m3"; pitch and range 0-100, rate in words per minute (80-450)."""
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise FedctlError(f"eSpeak NG has no voice {name!r}", "use a language+variant such as en-us+m3")
        self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self._lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)

    def synthesize(self, text: str) -> Synthesis:
        """Speak `text` with the current voice; returns int16 samples and phoneme start times."""
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise FedctlError(f"eSpeak NG failed on {text!r} (status {status})", "report this sentence as a bug")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return Synthesis(samples, self.sample_rate, [(ms / 1000.0, ph) for ms, ph in self._events])
