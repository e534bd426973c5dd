"""Acoustic effects that give the target domain its shift: additive noise and reverberation.

All functions are pure NumPy, take a ``numpy.random.Generator`` for their randomness, and
work on float32 waveforms in [-1, 1] at a known sample rate.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum (shaped white noise in the frequency domain). [samples]"""
    spectrum = rng.standard_normal(num_samples // 2 + 1) + 1j * rng.standard_normal(num_samples // 2 + 1)
    freqs = np.arange(num_samples // 2 + 1, dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=num_samples)
    return (noise / (np.std(noise) + 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` to ``speech`` scaled so that speech power / noise power = ``snr_db`` dB.

    Speech power is measured over the samples above 1% of the peak, so leading and
    trailing silence does not lower it.
    """
    if noise.shape != speech.shape:
        raise ValueError(f"Expected noise of shape {speech.shape}, found {noise.shape}")
    active = np.abs(speech) > 0.01 * (np.abs(speech).max() + 1e-12)
    speech_power = float(np.mean(speech[active].astype(np.float64) ** 2)) if active.any() else 0.0
    noise_power = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-20
    gain = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * noise).astype(np.float32)


def synthetic_rir(rt60: float, sample_rate: int, rng: np.random.Generator, drr_db: float = 3.0) -> np.ndarray:
    """A room impulse response: a direct path plus exponentially decaying Gaussian noise.

    The tail's energy falls by 60 dB after ``rt60`` seconds (decay exp(-6.9 t / rt60) in
    amplitude); ``drr_db`` sets the direct-to-reverberant energy ratio. [taps]
    """
    if rt60 <= 0:
        raise ValueError(f"Expected rt60 > 0 seconds, found {rt60}")
    taps = max(2, int(rt60 * sample_rate))
    t = np.arange(taps) / sample_rate
    tail = rng.standard_normal(taps) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * sample_rate) + 1] = 0.0  # the first reflections arrive after ~2 ms
    tail_energy = float(np.sum(tail**2)) + 1e-20
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / tail_energy)
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir``, keeping the input length (the tail past the end is cut)."""
    wet = fftconvolve(speech.astype(np.float64), rir.astype(np.float64))[: speech.shape[0]]
    return wet.astype(np.float32)


def normalize_peak(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that max |x| = ``peak`` (silence is returned unchanged)."""
    m = float(np.abs(x).max()) if x.size else 0.0
    return x if m == 0.0 else (x * (peak / m)).astype(np.float32)
