"""HuBERT iteration-1 features and the frame-count rules that align labels with HuBERT.

Features follow fairseq's `examples/hubert/simple_kmeans/dump_mfcc_feature.py`: 13 Kaldi-compatible MFCCs
(torchaudio.compliance.kaldi.mfcc defaults: 25 ms Povey window, 10 ms shift, snip_edges, 23 mel bins
from 20 Hz to Nyquist, lifter 22, no energy, no dither) plus deltas and delta-deltas (window 5) = 39 dims
at 100 Hz. The MFCC itself is lhotse's pure-torch `Wav2MFCC` configured to those defaults (torchaudio
does not load here).

Length rules (n = samples at 16 kHz, n >= 400):
- MFCC at 100 Hz:      M(n) = floor((n - 400) / 160) + 1
- HuBERT conv encoder: L(n) = floor((n - 400) / 320) + 1   (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2;
  the same as `HubertModel._get_feat_extract_output_lengths`)
- 50 Hz labels = MFCC frames 0, 2, 4, ...: ceil(M / 2) = L exactly, so nothing is trimmed or padded.
- 100 Hz labels must number 2L (two per HuBERT frame). M is 2L when floor((n-400)/160) is odd and
  2L - 1 when it is even; in that case the last label is repeated once.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

SAMPLE_RATE = 16000
WINDOW = 400  # samples, 25 ms
MFCC_HOP = 160  # samples, 10 ms
HUBERT_HOP = 320  # samples, 20 ms: the product of the conv strides
FEATURE_DIM = 39
LABEL_RATES = (50, 100)


def mfcc_num_frames(num_samples: int) -> int:
    """Frames of a 100 Hz, 25 ms, snip_edges MFCC over `num_samples` samples (0 below one window)."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // MFCC_HOP + 1


def hubert_num_frames(num_samples: int) -> int:
    """Frames HuBERT's conv feature encoder emits for `num_samples` samples at 16 kHz (0 below 400)."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HUBERT_HOP + 1


def label_num_frames(num_samples: int, label_rate: int) -> int:
    """Labels per utterance: L at 50 Hz, 2L at 100 Hz (L = `hubert_num_frames`)."""
    _check_rate(label_rate)
    return hubert_num_frames(num_samples) * (label_rate // 50)


def label_frame_centers(num_frames: int, label_rate: int) -> np.ndarray:
    """Sample index at the centre of each label frame's 25 ms window."""
    hop = SAMPLE_RATE // label_rate
    return np.arange(num_frames) * hop + WINDOW // 2


def _check_rate(label_rate: int) -> None:
    if label_rate not in LABEL_RATES:
        from fedctl.errors import FedctlError

        raise FedctlError(f"--label-rate must be 50 or 100, got {label_rate}", "50 for HuBERT's 20 ms frames")


class MfccExtractor:
    """39-dim MFCC + delta + delta-delta at 100 Hz, as in fairseq's HuBERT recipe."""

    def __init__(self) -> None:
        from lhotse.features.kaldi.layers import Wav2MFCC

        with warnings.catch_warnings():
            # lhotse warns that snip_edges=True mismatches *its* frame counts; we want Kaldi/fairseq's.
            warnings.simplefilter("ignore")
            self._mfcc = Wav2MFCC(
                sampling_rate=SAMPLE_RATE,
                snip_edges=True,
                high_freq=0.0,  # torchaudio/Kaldi default: Nyquist (lhotse defaults to -400)
                low_freq=20.0,
                num_filters=23,
                num_ceps=13,
                cepstral_lifter=22,
                use_energy=False,
                dither=0.0,
            ).eval()

    @torch.no_grad()
    def __call__(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """`audio`: float waveform in [-1, 1] at 16 kHz, shape (n,). Returns (frames, 39) float32."""
        x = torch.as_tensor(audio, dtype=torch.float32).reshape(1, -1)
        if x.shape[1] < WINDOW:
            return torch.zeros(0, FEATURE_DIM)
        mfcc = self._mfcc(x)[0]  # (frames, 13)
        deltas = compute_deltas(mfcc)
        return torch.cat([mfcc, deltas, compute_deltas(deltas)], dim=1)

    def batch(self, audios: list[np.ndarray]) -> list[torch.Tensor]:
        """Same as calling on each, but one padded forward pass: with snip_edges a frame only sees its own
        window, so zero padding at the end changes no kept frame."""
        if not audios:
            return []
        lengths = [len(a) for a in audios]
        x = torch.zeros(len(audios), max(lengths))
        for i, a in enumerate(audios):
            x[i, : len(a)] = torch.as_tensor(a, dtype=torch.float32)
        with torch.no_grad():
            if x.shape[1] < WINDOW:
                return [torch.zeros(0, FEATURE_DIM) for _ in audios]
            mfcc = self._mfcc(x)
        feats = []
        for i, n in enumerate(lengths):
            m = mfcc[i, : mfcc_num_frames(n)]
            d = compute_deltas(m)
            feats.append(torch.cat([m, d, compute_deltas(d)], dim=1))
        return feats


def compute_deltas(feats: torch.Tensor, win_length: int = 5) -> torch.Tensor:
    """Kaldi/torchaudio deltas over time for (frames, dims): sum_k k*(x[t+k]-x[t-k]) / (2*sum k^2), edges
    replicated. Hand-written: `torchaudio.functional.compute_deltas` is the reference but torchaudio is unusable here."""
    n = (win_length - 1) // 2
    if feats.shape[0] == 0:
        return feats.clone()
    denom = n * (n + 1) * (2 * n + 1) / 3
    padded = torch.cat([feats[:1].expand(n, -1), feats, feats[-1:].expand(n, -1)], dim=0)
    t = feats.shape[0]
    out = torch.zeros_like(feats)
    for k in range(1, n + 1):
        out += k * (padded[n + k : n + k + t] - padded[n - k : n - k + t])
    return out / denom


def to_label_rate(frames: np.ndarray, num_samples: int, label_rate: int) -> np.ndarray:
    """Per-frame values at 100 Hz (MFCC rate) -> exactly `label_num_frames(num_samples, label_rate)` values."""
    target = label_num_frames(num_samples, label_rate)
    if label_rate == 50:
        out = frames[::2]
    else:
        out = frames
    if len(out) < target:  # 100 Hz with an even floor((n-400)/160): repeat the last label once
        out = np.concatenate([out, np.repeat(out[-1:], target - len(out), axis=0)])
    return out[:target]
