"""Multi-condition training: noise and reverberation on training batches (kd.data.augment)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kd.data.augment import AugmentConfig, augment_batch
from kd.testing import make_config
from kd.training.syncs import HostSyncCounter

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

SR = 16000


def speechlike(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    envelope = (torch.sin(torch.arange(samples) / 800.0) > -0.3).float()  # bursts and pauses
    return 0.3 * torch.randn(batch, samples, generator=g) * envelope


def test_no_effect_is_the_identity_and_padding_stays_zero():
    x, lengths = speechlike(3, 4000), torch.tensor([4000, 3000, 1000])
    x[1, 3000:] = 0.0
    x[2, 1000:] = 0.0
    assert torch.equal(augment_batch(x, lengths, AugmentConfig(), SR), x)
    out = augment_batch(x, lengths, AugmentConfig(noise_prob=1.0, reverb_prob=1.0), SR,
                        torch.Generator().manual_seed(0))
    assert not torch.equal(out, x)
    assert float(out[1, 3000:].abs().max()) == 0.0 and float(out[2, 1000:].abs().max()) == 0.0


@pytest.mark.parametrize("babble_prob", [0.0, 1.0])
def test_noise_is_mixed_at_the_drawn_snr(babble_prob):
    x, lengths = speechlike(4, 8000, seed=1), torch.full((4,), 8000)
    config = AugmentConfig(noise_prob=1.0, snr_db=(10.0,), babble_prob=babble_prob)
    noise = augment_batch(x, lengths, config, SR, torch.Generator().manual_seed(2)) - x
    for b in range(4):
        active = x[b].abs() > 0.01 * x[b].abs().max()
        speech_power = x[b][active].double().pow(2).mean()
        snr = 10 * math.log10(float(speech_power / noise[b].double().pow(2).mean()))
        assert snr == pytest.approx(10.0, abs=1e-3)


def test_babble_comes_from_the_other_utterances():
    # each utterance a sine on an exact FFT bin: circular shifts keep its frequency
    samples, bins = 8000, (50, 120, 260, 400)
    t = torch.arange(samples) / SR
    x = torch.stack([0.5 * torch.sin(2 * math.pi * (k * SR / samples) * t) for k in bins])
    config = AugmentConfig(noise_prob=1.0, babble_prob=1.0, snr_db=(0.0,))
    noise = augment_batch(x, torch.full((4,), samples), config, SR, torch.Generator().manual_seed(0)) - x
    for b in range(4):
        spectrum = torch.fft.rfft(noise[b].double()).abs()
        assert float(spectrum[bins[b]]) < 1e-6 * float(spectrum.max())  # not its own voice
        others = [bins[o] for o in range(4) if o != b]
        assert all(float(spectrum[k]) > 0.1 * float(spectrum.max()) for k in others)


def test_reverberation_decays_by_60_db_in_rt60():
    samples, rt60 = SR, 0.3
    impulse = torch.zeros(1, samples)
    impulse[0, 0] = 1.0
    config = AugmentConfig(reverb_prob=1.0, rt60=(rt60, rt60))
    h = augment_batch(impulse, torch.tensor([samples]), config, SR, torch.Generator().manual_seed(0))[0].double()
    # a direct path, then nothing for 2 ms (FFT convolution: float32 rounding)
    assert float(h[0]) == pytest.approx(1.0, abs=1e-5) and float(h[1: int(0.002 * SR) + 1].abs().max()) < 1e-5
    tail = h[int(0.002 * SR) + 1:]
    assert 10 * math.log10(1.0 / float(tail.pow(2).sum())) == pytest.approx(3.0, abs=1e-3)  # direct-to-reverberant
    # Schroeder backward integration; the slope between -5 and -25 dB extrapolated to 60 dB
    edc = torch.flip(torch.cumsum(torch.flip(tail.pow(2), [0]), 0), [0])
    edc_db = 10 * torch.log10(edc / edc[0])
    t5, t25 = [int((edc_db > level).sum()) / SR for level in (-5.0, -25.0)]
    assert 3 * (t25 - t5) == pytest.approx(rt60, rel=0.15)


def test_draws_follow_the_generator_and_nothing_is_read_back():
    x, lengths = speechlike(4, 6000, seed=3), torch.tensor([6000, 5000, 6000, 2000])
    config = AugmentConfig(noise_prob=0.5, reverb_prob=0.5)
    a = augment_batch(x, lengths, config, SR, torch.Generator().manual_seed(7))
    with HostSyncCounter() as counter:
        b = augment_batch(x, lengths, config, SR, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and counter.total == 0
    c = augment_batch(x, lengths, config, SR, torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    # the global RNG when no generator is given (what training uses; checkpoints save it)
    torch.manual_seed(11)
    d = augment_batch(x, lengths, config, SR)
    torch.manual_seed(11)
    assert torch.equal(d, augment_batch(x, lengths, config, SR))


def test_config_errors():
    with pytest.raises(ValueError, match=r"AugmentConfig.noise_prob: expected a probability"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match=r"AugmentConfig.rt60: expected \(low, high\)"):
        AugmentConfig(rt60=(0.6, 0.2))
    with pytest.raises(ValueError, match=r"AugmentConfig.snr_db: expected one or more finite"):
        AugmentConfig(snr_db=())
    with pytest.raises(ValueError, match=r"speech, lengths: expected"):
        augment_batch(torch.zeros(4), torch.tensor([4]), AugmentConfig(), SR)


def test_training_with_augmentation_resumes_exactly(tests_corpus, tmp_path):
    from kd.training.checkpoint import load_weights
    from kd.training.loop import train

    corpus = tests_corpus[0]

    def config(steps):
        plain = make_config([corpus / "us/train"], steps=steps, max_seconds=7.0, checkpoint={"every_steps": 2})
        augment = AugmentConfig(noise_prob=0.7, reverb_prob=0.5)
        return dataclasses.replace(plain, data=dataclasses.replace(plain.data, augment=augment))

    full = train(config(4), tmp_path / "full")
    train(config(2), tmp_path / "parts")
    resumed = train(config(4), tmp_path / "parts")
    assert resumed.resumed_from == 2 and full.steps == 4
    a, b = load_weights(tmp_path / "full/model.safetensors"), load_weights(tmp_path / "parts/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same run without augmentation trains other weights
    plain = train(make_config([corpus / "us/train"], steps=4, max_seconds=7.0), tmp_path / "plain")
    assert plain.final_loss != full.final_loss
