"""Multi-condition training: additive noise and reverberation applied to training batches.

The same effects as the built-in corpus's target domain (``kd.corpus.effects``), written in
torch for a padded batch on any device, so that a model trained on clean audio can be trained
under the recording conditions it will meet: each utterance is, independently,

1. reverberated with probability ``reverb_prob``: convolved with a synthetic room impulse
   response (a direct path plus Gaussian noise whose energy falls by 60 dB after rt60 seconds,
   rt60 uniform in ``rt60``, 3 dB direct-to-reverberant ratio, nothing in the first 2 ms), the
   result cut to the utterance's length;
2. mixed with noise with probability ``noise_prob`` at an SNR drawn from ``snr_db``: babble with
   probability ``babble_prob`` (the sum of three other utterances of the batch, each shifted in
   time by a random offset; pink noise when the batch has one utterance), else pink noise
   (1/f power). Speech power is measured over the samples above 1% of the utterance's peak,
   noise power over the utterance's length.

Padding stays zero. Every random draw comes from ``generator`` (the global RNG of the batch's
device when None, which training checkpoints save, so a resumed run draws what the
uninterrupted one drew), and nothing is read back to the host: all utterances are computed and
the chosen ones kept, at the cost of one batched FFT convolution per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AugmentConfig", "augment_batch"]

_DECAY = 6.9  # ln(1000): amplitude decay constant of a 60 dB energy fall over rt60 (kd.corpus.effects)
_BABBLE_TALKERS = 3


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the effects (the target domain of the built-in corpus:
    noise_prob 0.7, snr_db 5/10/15/20, babble_prob 0.5, reverb_prob 0.5, rt60 0.2-0.6 s)."""

    noise_prob: float = 0.0
    snr_db: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
    babble_prob: float = 0.5
    reverb_prob: float = 0.0
    rt60: tuple[float, ...] = (0.2, 0.6)  # seconds, (low, high)

    def __post_init__(self) -> None:
        for name in ("noise_prob", "babble_prob", "reverb_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name}: expected a probability in [0, 1], found {value!r}")
        if not self.snr_db or not all(math.isfinite(s) for s in self.snr_db):
            raise ValueError(f"AugmentConfig.snr_db: expected one or more finite values, found {list(self.snr_db)}")
        if len(self.rt60) != 2 or not 0.0 < self.rt60[0] <= self.rt60[1] <= 5.0:
            raise ValueError(f"AugmentConfig.rt60: expected (low, high) seconds with 0 < low <= high <= 5, "
                             f"found {list(self.rt60)}")


def augment_batch(speech: Tensor, lengths: Tensor, config: AugmentConfig, sample_rate: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """The batch `[B, samples]` (valid samples per utterance in `lengths`) with effects applied."""
    if speech.dim() != 2 or lengths.shape != (speech.size(0),):
        raise ValueError(f"speech, lengths: expected [batch, samples] and [batch], found {tuple(speech.shape)} "
                         f"and {tuple(lengths.shape)}")
    batch, samples = speech.shape
    device = speech.device
    valid = torch.arange(samples, device=device) < lengths.to(device).unsqueeze(1)
    x = speech.float().masked_fill(~valid, 0.0)
    draw = torch.rand(batch, 5, device=device, generator=generator)
    if config.reverb_prob > 0:
        low, high = config.rt60
        rt60 = low + (high - low) * draw[:, 0]
        wet = _reverberate(x, _room_responses(rt60, high, sample_rate, generator), samples)
        x = torch.where((draw[:, 1] < config.reverb_prob).unsqueeze(1), wet, x).masked_fill(~valid, 0.0)
    if config.noise_prob > 0:
        noise = _pink(batch, samples, device, generator)
        if batch > 1 and config.babble_prob > 0:
            babble = _babble(x, generator)
            noise = torch.where((draw[:, 2] < config.babble_prob).unsqueeze(1), babble, noise)
        noise = noise.masked_fill(~valid, 0.0)
        snrs = torch.tensor(config.snr_db, dtype=torch.float32, device=device)
        snr = snrs[(draw[:, 3] * len(config.snr_db)).long().clamp(max=len(config.snr_db) - 1)]
        gain = (_active_power(x) / (_mean_power(noise, valid) * 10.0 ** (snr / 10.0))).sqrt()
        noisy = x + gain.unsqueeze(1) * noise
        x = torch.where((draw[:, 4] < config.noise_prob).unsqueeze(1), noisy, x)
    return x.masked_fill(~valid, 0.0).to(speech.dtype)


def _room_responses(rt60: Tensor, longest: float, sample_rate: int, generator) -> Tensor:
    """`[B, taps]` impulse responses, taps covering the longest rt60 of the range."""
    taps = max(2, int(longest * sample_rate))
    t = torch.arange(taps, device=rt60.device, dtype=torch.float32) / sample_rate
    tail = torch.randn(rt60.size(0), taps, device=rt60.device, generator=generator)
    tail = tail * torch.exp(-_DECAY * t.unsqueeze(0) / rt60.unsqueeze(1))
    tail[:, : int(0.002 * sample_rate) + 1] = 0.0  # first reflections after ~2 ms
    energy = tail.pow(2).sum(1, keepdim=True).clamp_min(1e-20)
    tail = tail * (10.0 ** (-3.0 / 10.0) / energy).sqrt()  # direct-to-reverberant ratio 3 dB
    tail[:, 0] = 1.0
    return tail


def _reverberate(x: Tensor, rir: Tensor, samples: int) -> Tensor:
    n = samples + rir.size(1) - 1
    wet = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(rir, n=n), n=n)
    return wet[:, :samples]


def _pink(batch: int, samples: int, device, generator) -> Tensor:
    bins = samples // 2 + 1
    spectrum = torch.complex(torch.randn(batch, bins, device=device, generator=generator),
                             torch.randn(batch, bins, device=device, generator=generator))
    freqs = torch.arange(bins, device=device, dtype=torch.float32).clamp_min(1.0)
    noise = torch.fft.irfft(spectrum / freqs.sqrt(), n=samples)
    return noise / noise.std(dim=1, keepdim=True).clamp_min(1e-12)


def _babble(x: Tensor, generator) -> Tensor:
    """Per utterance: the sum of the next three utterances of the batch (cyclically), each
    circularly shifted in time by a random offset."""
    batch, samples = x.shape
    positions = torch.arange(samples, device=x.device)
    babble = torch.zeros_like(x)
    for talker in range(1, _BABBLE_TALKERS + 1):
        other = x.roll(-(talker % batch) or 1, dims=0)
        shift = (torch.rand(batch, 1, device=x.device, generator=generator) * samples).long()
        babble = babble + other.gather(1, (positions.unsqueeze(0) + shift) % samples)
    return babble


def _active_power(x: Tensor) -> Tensor:
    """Mean power of the samples above 1% of each row's peak (0 for a silent row)."""
    magnitude = x.abs()
    active = magnitude > 0.01 * magnitude.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (x.pow(2) * active).sum(1) / active.sum(1).clamp_min(1)


def _mean_power(noise: Tensor, valid: Tensor) -> Tensor:
    return noise.pow(2).sum(1) / valid.sum(1).clamp_min(1) + 1e-20
