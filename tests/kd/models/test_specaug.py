"""SpecAugment in the ASR model: off by default, on in training only, validated config fields."""

from __future__ import annotations

import pytest
import torch

from kd.models.asr import AsrConfig, build_asr_model

VOCAB = 12

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

ON = dict(specaug_freq_masks=2, specaug_freq_width=8, specaug_time_masks=2, specaug_time_ratio=0.1,
          specaug_time_warp=3)


def speech():
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(2, 8000, generator=g), torch.tensor([8000, 6000])


def test_off_by_default_and_left_out_of_the_written_config():
    config = AsrConfig.tiny(vocab_size=VOCAB)
    assert not config.uses_specaug
    assert build_asr_model(config).espnet.specaug is None
    written = config.to_dict()
    assert not any(k.startswith("specaug") for k in written)  # configs written before it, unchanged
    assert AsrConfig.from_dict(written) == config


def test_on_round_trips_through_the_written_config():
    config = AsrConfig.tiny(vocab_size=VOCAB, **ON)
    assert config.uses_specaug
    assert AsrConfig.from_yaml(config.to_yaml()) == config


def test_masks_features_in_training_and_never_in_eval():
    torch.manual_seed(0)
    plain = build_asr_model(AsrConfig.tiny(vocab_size=VOCAB))
    augmented = build_asr_model(AsrConfig.tiny(vocab_size=VOCAB, **ON))
    augmented.load_state_dict(plain.state_dict())  # SpecAugment has no parameters
    x, lengths = speech()
    plain.eval(), augmented.eval()
    with torch.no_grad():
        a, _ = plain.espnet.encode(x, lengths)
        b, _ = augmented.espnet.encode(x, lengths)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # eval: the same model exactly
    plain.train(), augmented.train()
    for module in (plain, augmented):  # no dropout, so that only SpecAugment can differ
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    torch.manual_seed(1)
    with torch.no_grad():
        a, _ = plain.espnet.encode(x, lengths)
        b, _ = augmented.espnet.encode(x, lengths)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(specaug_freq_masks=2), "specaug_freq_masks and specaug_freq_width"),
        (dict(specaug_time_masks=2), "specaug_time_masks and specaug_time_ratio"),
        (dict(specaug_time_masks=1, specaug_time_ratio=1.0), "specaug_time_ratio"),
        (dict(specaug_freq_masks=-1, specaug_freq_width=4), "specaug_freq_masks"),
        (dict(specaug_freq_masks=1, specaug_freq_width=999), "specaug_freq_width"),
        (dict(specaug_time_warp=True), "specaug_time_warp"),
    ],
)
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        AsrConfig.tiny(vocab_size=VOCAB, **fields)
