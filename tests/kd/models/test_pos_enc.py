"""The encoder's positional encoding: ESPnet's x * sqrt(d) + PE by default, x + alpha * PE on request."""

from __future__ import annotations

import math

import pytest
import torch

from kd.models.asr import AsrConfig, PositionalEncoding, build_asr_model

VOCAB = 12

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def tiny(**changes) -> AsrConfig:
    """The tiny preset with fields changed as a config file would write them (enum values)."""
    return AsrConfig.from_dict({**AsrConfig.tiny(vocab_size=VOCAB).to_dict(), **changes})


def embed(config: AsrConfig):
    """The encoder's input embedding (subsampling + positional encoding) of a fixed utterance, and the
    positional encoding module."""
    torch.manual_seed(0)
    model = build_asr_model(config).eval()
    enc = model.espnet.encoder
    x = torch.randn(1, 40, config.n_mels)
    conv = enc.embed.conv(x.unsqueeze(1))
    b, c, t, f = conv.size()
    projected = enc.embed.out[0](conv.transpose(1, 2).contiguous().view(b, t, c * f))  # before the encoding
    with torch.no_grad():
        return projected, enc.embed.out[1], enc.embed(x, None)[0]


def test_default_scales_the_features_by_sqrt_d_and_is_left_out_of_the_written_config():
    config = AsrConfig.tiny(vocab_size=VOCAB)
    assert config.pos_enc is PositionalEncoding.ABS and "pos_enc" not in config.to_dict()
    projected, pe, out = embed(config)
    d = config.d_model
    assert torch.allclose(out, projected * math.sqrt(d) + pe.pe[:, :projected.size(1)], atol=1e-5)


def test_scaled_adds_a_learnt_multiple_of_the_encoding_without_the_sqrt_d_gain():
    config = tiny(pos_enc="scaled_abs_pos")
    assert AsrConfig.from_yaml(config.to_yaml()) == config and config.to_dict()["pos_enc"] == "scaled_abs_pos"
    projected, pe, out = embed(config)
    assert float(pe.alpha) == 1.0  # learnt, starting at 1
    assert torch.allclose(out, projected + pe.alpha * pe.pe[:, :projected.size(1)], atol=1e-5)


def test_an_unknown_kind_and_an_export_to_espnet_are_refused():
    with pytest.raises(ValueError, match=r"AsrConfig.pos_enc: expected one of \['abs_pos', 'scaled_abs_pos'\]"):
        tiny(pos_enc="rel_pos")
    from kd.models.export_espnet import espnet_config

    config = tiny(pos_enc="scaled_abs_pos")
    with pytest.raises(ValueError, match="only 'abs_pos' models can be exported"):
        espnet_config(config, [f"t{i}" for i in range(VOCAB)])


def test_post_ln_encoder_normalises_each_block_output_and_exports_as_such():
    """encoder_normalize_before false: ESPnet's post-LN blocks (the output of each block is layer-normed, so
    its per-frame mean is 0 and variance about 1) and no final layer norm; written and exported only then."""
    config = tiny(encoder_normalize_before=False)
    assert config.to_dict()["encoder_normalize_before"] is False and "encoder_normalize_before" not in tiny().to_dict()
    assert AsrConfig.from_yaml(config.to_yaml()) == config
    torch.manual_seed(0)
    enc = build_asr_model(config).eval().espnet.encoder
    assert all(not layer.normalize_before for layer in enc.encoders) and not enc.normalize_before
    x = torch.randn(1, 40, config.n_mels) * 3.0
    with torch.no_grad():
        h, mask = enc.embed(x, None)
        for layer in enc.encoders:
            h, mask = layer(h, mask)
            assert torch.allclose(h.mean(-1), torch.zeros(1), atol=1e-4)
    from kd.models.export_espnet import espnet_config

    vocab = [f"t{i}" for i in range(VOCAB)]
    assert espnet_config(config, vocab)["encoder_conf"]["normalize_before"] is False
    assert "normalize_before" not in espnet_config(tiny(), vocab)["encoder_conf"]
