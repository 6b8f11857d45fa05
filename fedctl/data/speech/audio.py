"""The one audio loader of the speech workloads: any rate, any channel count in, 16 kHz mono float32 out.

Every consumer of utterances (k-means features, HuBERT/distill batches, ASR features, the attacks) reads
audio through `load_audio`, so decoding, down-mixing and resampling happen once, in one way:
- decoding with soundfile (libsndfile: FLAC, WAV, OGG/Vorbis, MP3 ...), never torchaudio/torchcodec;
- down-mixing by the mean over channels (the Flower speech guide's and torchaudio's convention);
- resampling with soxr (libsoxr "HQ", the resampler of python-soxr's defaults) to MODEL_RATE.

A resampled file is cut or zero-padded to `resampled_length(frames, rate)` samples (soxr already returns
round(n * 16000 / rate) for a whole-signal call; the rule pins it), so that the manifest's `num_samples`,
computed from the header alone at indexing time, is exactly the length every later read returns.

An utterance's `path` is a file path, or, for audio stored inside a local Hugging Face dataset (bytes in an
Arrow/Parquet column), a locator `<absolute dataset path>#<split>/<row>/<column>` (see `hf_locator`);
`load_audio` resolves both.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

from fedctl.errors import FedctlError

MODEL_RATE = 16000  # Hz: HuBERT's and the DeepSpeech features' rate
SOXR_QUALITY = "HQ"
HF_MARK = "#"


@dataclass(frozen=True)
class AudioInfo:
    """What a header says: `frames` samples per channel at `rate` Hz, `channels` channels."""

    frames: int
    rate: int
    channels: int

    @property
    def num_samples(self) -> int:
        """Samples `load_audio` returns (at MODEL_RATE, mono)."""
        return resampled_length(self.frames, self.rate)


def resampled_length(frames: int, rate: int) -> int:
    """round(frames * MODEL_RATE / rate) in integer arithmetic (halves round up): soxr's whole-signal length."""
    return frames if rate == MODEL_RATE else (frames * MODEL_RATE + rate // 2) // rate


def resampler_version() -> str:
    import soxr

    return f"soxr {soxr.__version__} ({SOXR_QUALITY})"


# ------------------------------------------------------------------------------ Hugging Face locators


def hf_locator(source: str, split: str, row: int, column: str) -> str:
    """The `path` of an utterance whose audio bytes sit in row `row` of `column` of a local HF dataset."""
    return f"{os.path.abspath(source)}{HF_MARK}{split}/{row}/{column}"


def parse_hf_locator(path: str) -> tuple[str, str, int, str] | None:
    """(source, split, row, column) of an `hf_locator`, or None for a plain file path."""
    if HF_MARK not in path or os.path.isfile(path):
        return None
    source, _, rest = path.rpartition(HF_MARK)
    parts = rest.split("/")
    if len(parts) != 3 or not parts[1].isdigit() or not os.path.exists(source):
        return None
    return source, parts[0], int(parts[1]), parts[2]


@lru_cache(maxsize=4)
def _hf_table(source: str, split: str):
    """The Arrow table of one split of a `load_from_disk` folder (memory-mapped) or a Parquet file."""
    if os.path.isdir(source):
        import datasets

        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        return ds.data  # memory-mapped Arrow; never `ds[i]`, whose Audio decoding needs torchcodec
    import pyarrow.parquet as pq

    return pq.read_table(source)


def hf_audio_bytes(path: str) -> bytes | str:
    """The stored bytes of an `hf_locator` (or the file path the row names, when it holds no bytes)."""
    parsed = parse_hf_locator(path)
    if parsed is None:
        raise FedctlError(f"{path} is neither an audio file nor a dataset row", "re-run `fedctl data partition`")
    source, split, row, column = parsed
    try:
        cell = _hf_table(source, split).column(column)[row].as_py()
    except Exception as exc:  # noqa: BLE001 - a damaged or changed dataset: say which
        raise FedctlError(f"cannot read row {row} of {source} ({type(exc).__name__}: {str(exc)[:100]})",
                          "the dataset changed since partitioning: re-run `fedctl data partition`") from None
    if isinstance(cell, dict) and cell.get("bytes"):
        return cell["bytes"]
    if isinstance(cell, dict) and cell.get("path") and os.path.isabs(cell["path"]):
        return cell["path"]
    raise FedctlError(f"row {row} of {source} has no audio bytes in column {column!r}",
                      "store the audio in the dataset (cast_column(..., Audio()) then save_to_disk)")


def _open(path: str):
    """What soundfile opens for `path`: the file itself, or a dataset row's bytes."""
    if parse_hf_locator(path) is None:
        return path
    data = hf_audio_bytes(path)
    return io.BytesIO(data) if isinstance(data, bytes) else data


def probe_audio(path: str) -> AudioInfo:
    """Header facts of a file or dataset row (no decoding). Raises soundfile's errors for unreadable audio."""
    info = sf.info(_open(path))
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


# ------------------------------------------------------------------------------ the loader


def to_model_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at MODEL_RATE from `audio` [frames] or [frames, channels] at `rate` Hz."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float64).astype(np.float32) if audio.shape[1] > 1 else audio[:, 0]
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if rate == MODEL_RATE:
        return audio
    import soxr

    out = soxr.resample(audio, rate, MODEL_RATE, quality=SOXR_QUALITY).astype(np.float32, copy=False)
    n = resampled_length(len(audio), rate)
    if len(out) != n:
        out = np.pad(out, (0, n - len(out))) if len(out) < n else out[:n]
    return out


def load_audio(path: str, *, dtype: str = "float32") -> np.ndarray:
    """The utterance at `path` (file or `hf_locator`) as 16 kHz mono: float32 in [-1, 1], or with
    dtype="int16" the int16 scale the DeepSpeech feature pipelines expect (a 16-bit file read exactly)."""
    try:
        audio, rate = sf.read(_open(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise FedctlError(f"cannot read audio {path} ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})",
                          "the file changed or vanished since it was indexed: fix it and re-run "
                          "`fedctl data partition`") from exc
    audio = to_model_rate(audio, int(rate))
    if dtype == "int16":
        return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    if dtype != "float32":
        raise ValueError(f"dtype {dtype!r}: use float32 or int16")
    return audio
