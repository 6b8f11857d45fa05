"""Input features of the reference DeepSpeech victims, computed as they computed them.

Both take 16 kHz audio on the **int16 scale** (the reference feeds raw int16 PCM, not samples in [-1, 1]).

DS1 (reference `preprocess.MFCC(26)`): `python_speech_features.mfcc` with numcep 26, winlen 25 ms,
winstep 20 ms, nfilt 26, nfft 512, preemph 0.97, ceplifter 22, appendEnergy (c0 = log frame energy),
rectangular window (the library default). Not normalized (the reference's Normalize is commented out).
Frames: 1 + ceil((n - 400) / 320), or 1 below one window (the library zero-pads the last frame).
Context frames are stacked inside the model (`stack_context`), so the attack's free variables are the
26-dim frames.

DS2 (reference `LogMagnitudeSTFT(winlen=0.032, winstep=0.02)` + `Normalize`): log(1 + |STFT|) with
n_fft 512, hop 320, periodic Hamming window, centred with zero padding (librosa 0.10's stft default,
the version the reference pinned), 257 bins; then one z-score over the whole utterance's spectrogram with
the population std (numpy's `.std()`). Frames: 1 + n // 320. torch.stft replaces librosa (not installed);
it computes the same frames (a test checks it against a hand-framed numpy FFT).
"""

from __future__ import annotations

import math

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F

from fedctl.errors import FedctlError

SAMPLE_RATE = 16000  # Hz

DS1_NUM_CEP = 26
DS1_WINLEN = 0.025  # seconds: 400 samples
DS1_WINSTEP = 0.02  # seconds: 320 samples
DS1_NFFT = 512
DS1_NFILT = 26
DS1_PREEMPH = 0.97
DS1_CEPLIFTER = 22
DS1_CONTEXT = 9  # frames on each side: 19 x 26 = 494 inputs to fc1

DS2_N_FFT = 512  # = 32 ms window
DS2_HOP = 320  # samples, 20 ms
DS2_BINS = DS2_N_FFT // 2 + 1  # 257


def _int16_scale(audio: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    audio = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio)
    if audio.ndim != 1 or audio.size == 0:
        raise FedctlError(f"audio of {source or 'an utterance'} has shape {audio.shape}; expected mono samples [n]",
                          "pass one channel of 16 kHz audio")
    if np.issubdtype(audio.dtype, np.floating):
        peak = float(np.abs(audio).max())
        if 0.0 < peak <= 1.0:
            raise FedctlError(
                f"audio of {source or 'an utterance'} peaks at {peak:.3g}: it looks like float samples in [-1, 1], "
                "but the reference features take the int16 scale",
                "read with soundfile.read(path, dtype='int16') or multiply by 32768",
            )
    return audio


def ds1_num_frames(num_samples: int) -> int:
    """MFCC frames python_speech_features makes of `num_samples` samples (25 ms windows every 20 ms)."""
    win, hop = round(DS1_WINLEN * SAMPLE_RATE), round(DS1_WINSTEP * SAMPLE_RATE)
    return 1 if num_samples <= win else 1 + math.ceil((num_samples - win) / hop)


def ds2_num_frames(num_samples: int) -> int:
    """Frames of the centred STFT of `num_samples` samples (hop 320)."""
    return 1 + num_samples // DS2_HOP


def ds1_features(audio: np.ndarray | torch.Tensor, source: str = "") -> torch.Tensor:
    """MFCC [T, 26] float32 of int16-scale 16 kHz `audio`, exactly the reference DS1's input."""
    audio = _int16_scale(audio, source)
    mfcc = python_speech_features.mfcc(
        audio, samplerate=SAMPLE_RATE, winlen=DS1_WINLEN, winstep=DS1_WINSTEP, numcep=DS1_NUM_CEP,
        nfilt=DS1_NFILT, nfft=DS1_NFFT, preemph=DS1_PREEMPH, ceplifter=DS1_CEPLIFTER, appendEnergy=True,
    )
    return torch.from_numpy(mfcc).float()  # the reference casts with torch.FloatTensor


def ds2_features(audio: np.ndarray | torch.Tensor, source: str = "") -> torch.Tensor:
    """Per-utterance z-normalized log(1 + |STFT|) [T, 257] float32 of int16-scale 16 kHz `audio`."""
    x = torch.from_numpy(np.ascontiguousarray(_int16_scale(audio, source), dtype=np.float32))
    spec = torch.stft(x, n_fft=DS2_N_FFT, hop_length=DS2_HOP, win_length=DS2_N_FFT,
                      window=torch.hamming_window(DS2_N_FFT, periodic=True), center=True, pad_mode="constant",
                      return_complex=True)
    logmag = torch.log1p(spec.abs()).T  # [T, 257]
    std = logmag.std(unbiased=False)
    if std == 0:
        raise FedctlError(f"audio of {source or 'an utterance'} is constant: its spectrogram cannot be normalized",
                          "leave silent or constant files out of the corpus")
    return (logmag - logmag.mean()) / std


def stack_context(feats: torch.Tensor, context: int = DS1_CONTEXT) -> torch.Tensor:
    """Each frame with `context` frames either side, zero-padded at the edges: [T, (B,) F] -> [T, (B,) (2c+1)·F].

    Offset-major: output[t, k·F + f] = feats[t + k - c, f] (zero outside 0..T-1), the order of the reference's
    `nn.Unfold(kernel=(2c+1, F), padding=(c, 0))` and of Myrtle's `AddContextFrames`. Differentiable.
    """
    window = 2 * context + 1
    padded = F.pad(feats, (0, 0) * (feats.dim() - 1) + (context, context))  # pad the time axis (dim 0)
    frames = padded.unfold(0, window, 1)  # [T, (B,) F, window]
    return frames.movedim(-1, -2).reshape(*feats.shape[:-1], window * feats.shape[-1])
