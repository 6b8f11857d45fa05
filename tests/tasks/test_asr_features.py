"""DS1 MFCC and DS2 log-STFT features against the library / a hand computation; context stacking."""

from __future__ import annotations

import numpy as np
import pytest
import python_speech_features
import soundfile as sf
import torch
from scipy.signal import get_window

from fedctl.data.speech.synth import synth_corpus
from fedctl.errors import FedctlError
from fedctl.tasks.asr.features import (
    ds1_features,
    ds1_num_frames,
    ds2_features,
    ds2_num_frames,
    stack_context,
)


@pytest.fixture(scope="module")
def synth_audio(tmp_path_factory) -> np.ndarray:
    root = tmp_path_factory.mktemp("asr_features") / "corpus"
    synth_corpus(root, speakers=1, utterances=1, seed=0)
    (flac,) = root.glob("*/*/*.flac")
    audio, rate = sf.read(str(flac), dtype="int16")
    assert rate == 16000
    return audio


def _sine(seconds: float = 0.7, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return np.round(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.mark.parametrize("source", ["synth", "sine"])
def test_ds1_features_are_python_speech_features_mfcc(source, synth_audio):
    audio = synth_audio if source == "synth" else _sine()
    feats = ds1_features(audio)
    explicit = python_speech_features.mfcc(audio, samplerate=16000, winlen=0.025, winstep=0.02, numcep=26, nfilt=26,
                                           nfft=512, preemph=0.97, ceplifter=22, appendEnergy=True)
    # the reference's literal call (Myrtle preprocess.MFCC(26)): everything else at the library defaults
    reference_call = python_speech_features.mfcc(audio, samplerate=16000, winlen=0.025, winstep=0.02, numcep=26)
    assert feats.dtype == torch.float32 and feats.shape == (ds1_num_frames(len(audio)), 26)
    assert torch.equal(feats, torch.from_numpy(explicit).float())
    assert torch.equal(feats, torch.from_numpy(reference_call).float())


def test_ds1_c0_is_log_frame_energy_and_frame_count():
    audio = _sine(0.7)  # 11200 samples: 1 + ceil((11200 - 400) / 320) = 35 frames (the last zero-padded)
    feats = ds1_features(audio)
    assert feats.shape == (35, 26) and ds1_num_frames(11200) == 35 and ds1_num_frames(400) == 1
    x = audio.astype(np.float64)
    emphasized = np.append(x[0], x[1:] - 0.97 * x[:-1])
    t = 17
    frame = emphasized[t * 320 : t * 320 + 400]  # rectangular window
    energy = np.sum(np.abs(np.fft.rfft(frame, 512)) ** 2) / 512
    assert float(feats[t, 0]) == pytest.approx(np.log(energy), rel=1e-6)
    assert float(feats[t, 0]) > 15  # unnormalized int16-scale features run to tens


def test_float_audio_in_unit_range_is_refused():
    with pytest.raises(FedctlError) as err:
        ds1_features(_sine().astype(np.float32) / 32768, source="spk-1-0001")
    assert "spk-1-0001" in err.value.message and "32768" in err.value.hint


def test_stack_context_matches_myrtle_example_and_hand_windows():
    # Myrtle AddContextFrames docstring: n_context 2 on three 3-dim frames
    signal = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.float32)
    expected = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                             [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0],
                             [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(stack_context(signal, 2), expected)

    feats = torch.randn(30, 26)
    stacked = stack_context(feats)  # context 9: 19 x 26 = 494
    assert stacked.shape == (30, 494)
    padded = torch.cat([torch.zeros(9, 26), feats, torch.zeros(9, 26)])
    for t in (0, 4, 15, 29):  # both edges and the middle
        assert torch.equal(stacked[t], padded[t : t + 19].reshape(-1))
    assert torch.equal(stacked[0, : 9 * 26], torch.zeros(9 * 26))
    assert torch.equal(stacked[15], feats[6:25].reshape(-1))
    # batched [T, B, F] stacks each utterance on its own
    batched = stack_context(torch.stack([feats, 2 * feats], dim=1))
    assert torch.equal(batched[:, 0], stacked) and torch.equal(batched[:, 1], stack_context(2 * feats))


def test_ds2_features_frames_bins_and_normalization(synth_audio):
    for seconds, frames in ((1, 51), (2, 101)):
        feats = ds2_features(_sine(seconds))
        assert feats.shape == (frames, 257) and ds2_num_frames(seconds * 16000) == frames
    feats = ds2_features(synth_audio)
    assert feats.shape == (1 + len(synth_audio) // 320, 257)
    assert abs(float(feats.mean())) < 1e-5
    assert float(feats.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


def test_ds2_features_equal_a_hand_framed_stft(synth_audio):
    """librosa 0.10 stft (centred, zero padding, periodic Hamming) + log1p + one z-score, in numpy float64."""
    x = np.pad(synth_audio.astype(np.float64), 256)
    window = get_window("hamming", 512)  # periodic (fftbins=True), as librosa's
    frames = np.stack([x[t * 320 : t * 320 + 512] * window for t in range(1 + len(synth_audio) // 320)])
    logmag = np.log1p(np.abs(np.fft.rfft(frames, axis=1)))
    expected = (logmag - logmag.mean()) / logmag.std()
    error = np.abs(ds2_features(synth_audio).numpy() - expected)
    assert error.mean() < 1e-5  # float32 rounding (the reference computes in float32 too); the largest errors sit in near-empty bins where log1p is steep
    assert error.max() < 1e-3
