"""The hybrid CTC/attention ASR model, its uncertainty head and its config (tiny, on CPU)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.models.asr import AsrConfig, FeatureNorm, InputLayer, build_asr_model, default_token_list
from kd.models.uncertainty import AleatoricMode, UncertaintyHead, aleatoric_nll, sample_noisy_logits

VOCAB = 12  # 0 <blank>, 1..10 tokens, 11 <sos/eos>


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def batch():
    g = torch.Generator().manual_seed(0)
    speech = 0.1 * torch.randn(2, 8000, generator=g)
    speech_lengths = torch.tensor([8000, 6000])
    text = torch.tensor([[3, 4, 5, 6], [7, 8, -1, -1]])
    text_lengths = torch.tensor([4, 2])
    return speech, speech_lengths, text, text_lengths


def tiny(**overrides) -> AsrConfig:
    return AsrConfig.tiny(vocab_size=VOCAB, **overrides)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_asr_model(tiny()).eval()


# ---------------------------------------------------------------- model


def test_forward_shapes_and_alignment(model):
    speech, speech_lengths, text, text_lengths = batch()
    with torch.no_grad():
        out = model(speech, speech_lengths, text, text_lengths)
    # STFT frames (center=True): samples // hop + 1 -> 51 and 38. The longest utterance gets
    # conv2d's ((T - 1) // 2 - 1) // 2 = 12 frames. ESPnet derives lengths by subsampling the
    # padding mask twice with [:-2:2], which gives a padded utterance ceil(T / 2) at each
    # stage: 38 -> 19 -> 10, not the 8 frames it has alone.
    assert out.encoder_lengths.tolist() == [12, 10]
    assert out.ctc_log_probs.shape == (2, 12, VOCAB)
    assert out.logits.shape == (2, 5, VOCAB)
    assert out.decoder_hidden.shape == (2, 5, 64)
    assert out.variances.shape == (2, 5, VOCAB) and bool((out.variances > 0).all())
    eos = VOCAB - 1
    assert model.sos == model.eos == eos and model.blank_id == 0
    assert out.targets.tolist() == [[3, 4, 5, 6, eos], [7, 8, eos, -1, -1]]
    assert out.token_mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    torch.testing.assert_close(out.ctc_log_probs.exp().sum(-1), torch.ones(2, out.ctc_log_probs.size(1)))
    # the logits are the output layer applied to the pre-logit states
    torch.testing.assert_close(out.logits, model.espnet.decoder.output_layer(out.decoder_hidden))


@pytest.mark.parametrize("pre_ln", [True, False])
def test_encode_layers_are_the_chain_of_layer_outputs(pre_ln):
    """hidden[0] is the subsampling's output, each next entry the next layer applied to the one before, and
    the last one, through the final layer norm of a pre-LN encoder, is what encode returns."""
    torch.manual_seed(0)
    m = build_asr_model(tiny(encoder_layers=3, encoder_normalize_before=pre_ln)).eval()
    speech, speech_lengths, _, _ = batch()
    with torch.no_grad():
        hidden, frames = m.encode_layers(speech, speech_lengths)
        encoded, lengths = m.encode(speech, speech_lengths)
        mask = (torch.arange(hidden[0].shape[1])[None, :] < frames[:, None])[:, None, :]  # [B, 1, T]
        for layer, before, after in zip(m.espnet.encoder.encoders, hidden, hidden[1:]):
            torch.testing.assert_close(layer(before, mask)[0], after)
    assert len(hidden) == 4 and frames.tolist() == lengths.tolist() == [12, 10]
    last = m.espnet.encoder.after_norm(hidden[-1]) if pre_ln else hidden[-1]
    torch.testing.assert_close(last, encoded)


def test_loss_combines_ctc_attention_and_aleatoric_terms():
    speech, speech_lengths, text, text_lengths = batch()
    for mode in AleatoricMode:
        torch.manual_seed(0)
        m = build_asr_model(tiny(aleatoric_mode=mode)).eval()
        with torch.no_grad():
            out = m(speech, speech_lengths, text, text_lengths)
        branch = out.loss_aleatoric + (out.loss_att if mode is AleatoricMode.ADD else 0.0)
        expected = 0.3 * out.loss_ctc + 0.7 * branch
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
        # ESPnet's normalisation: summed over tokens, divided by the batch size
        per_token = aleatoric_nll(
            out.logits, out.variances, out.targets, num_samples=4,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        with torch.no_grad():
            again = m(speech, speech_lengths, text, text_lengths, generator=torch.Generator().manual_seed(1))
        assert again.loss_aleatoric.item() == pytest.approx(per_token.sum().item() / 2, rel=1e-5)


def test_matches_espnet_loss_without_head():
    torch.manual_seed(0)
    m = build_asr_model(tiny(uncertainty_head=False)).eval()
    speech, speech_lengths, text, text_lengths = batch()
    with torch.no_grad():
        out = m(speech, speech_lengths, text, text_lengths)
        loss, stats, _ = m.espnet(speech, speech_lengths, text.clone(), text_lengths)
    assert out.variances is None and out.loss_aleatoric is None
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert out.loss_att.item() == pytest.approx(stats["loss_att"].item(), rel=1e-6)
    assert out.loss_ctc.item() == pytest.approx(stats["loss_ctc"].item(), rel=1e-6)
    assert float(out.acc) == pytest.approx(float(stats["acc"]))


def test_backward_reaches_every_parameter_and_loss_falls():
    torch.manual_seed(0)
    m = build_asr_model(tiny(feature_norm=FeatureNorm.UTTERANCE_MEAN_VAR))
    speech, speech_lengths, text, text_lengths = batch()

    def eval_loss() -> float:
        m.eval()
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            return m(speech, speech_lengths, text, text_lengths, generator=g).loss.item()

    before = eval_loss()
    optimiser = torch.optim.Adam(m.parameters(), lr=2e-3)
    m.train()
    for step in range(8):
        out = m(speech, speech_lengths, text, text_lengths)
        optimiser.zero_grad()
        out.loss.backward()
        if step == 0:
            missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert missing == []
        optimiser.step()
    after = eval_loss()
    assert after < 0.8 * before


def test_input_errors(model):
    speech, speech_lengths, text, text_lengths = batch()
    with pytest.raises(ValueError, match=r"text: expected token ids in \[1, 10\]"):
        model(speech, speech_lengths, text.masked_fill(text == 5, 0), text_lengths)
    with pytest.raises(ValueError, match=r"text: expected token ids in \[1, 10\]"):
        model(speech, speech_lengths, text.masked_fill(text == 5, VOCAB - 1), text_lengths)
    with pytest.raises(ValueError, match="speech_lengths: expected shape \\(2,\\)"):
        model(speech, speech_lengths[:1], text, text_lengths)
    with pytest.raises(ValueError, match="speech: expected \\[batch, samples\\]"):
        model(speech[0], speech_lengths, text, text_lengths)


def test_token_list_conventions():
    assert default_token_list(4) == ["<blank>", "<unk>", "<token_2>", "<sos/eos>"]
    with pytest.raises(ValueError, match="token_list: expected 12 symbols"):
        build_asr_model(tiny(), token_list=default_token_list(5))
    bad = default_token_list(VOCAB)
    bad[0] = "<unk>"
    with pytest.raises(ValueError, match="'<blank>' first"):
        build_asr_model(tiny(), token_list=bad)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["teacher", "base", "small", "tiny"])
def test_config_yaml_round_trip(name):
    config = AsrConfig.from_preset(name, vocab_size=500, input_layer=InputLayer.CONV2D6)
    assert AsrConfig.from_yaml(config.to_yaml()) == config
    assert AsrConfig.from_dict(config.to_dict()) == config
    assert getattr(AsrConfig, name)(500) == dataclasses.replace(config, input_layer=InputLayer.CONV2D)


def test_teacher_preset_size():
    # the teacher of docs/environment.md (GPU reference figures): 27.5M parameters at V = 500 (without the head)
    m = build_asr_model(AsrConfig.teacher(500, uncertainty_head=False))
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(27.5e6, rel=0.01)


def test_config_errors():
    with pytest.raises(ValueError, match="AsrConfig.d_model: expected a multiple of attention_heads=3"):
        tiny(attention_heads=3)
    with pytest.raises(ValueError, match="AsrConfig.ctc_weight: expected a value in \\[0, 1\\)"):
        tiny(ctc_weight=1.0)
    with pytest.raises(ValueError, match="AsrConfig.vocab_size"):
        AsrConfig.tiny(vocab_size=2)
    with pytest.raises(TypeError, match="AsrConfig.input_layer: expected InputLayer"):
        tiny(input_layer="conv2d")
    with pytest.raises(ValueError, match="AsrConfig.feature_norm: expected one of"):
        AsrConfig.from_dict({"vocab_size": 10, "feature_norm": "global"})
    with pytest.raises(ValueError, match="AsrConfig: unknown field 'layers'"):
        AsrConfig.from_dict({"vocab_size": 10, "layers": 3})
    with pytest.raises(ValueError, match="preset: expected one of"):
        AsrConfig.from_preset("huge", 10)


# ---------------------------------------------------------------- uncertainty head


def test_aleatoric_nll_matches_reference_on_the_same_noise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    variance = torch.rand(2, 3, 5, generator=g)
    targets = torch.tensor([[1, 4, 0], [2, -1, -1]])
    got = aleatoric_nll(logits, variance, targets, num_samples=6, generator=torch.Generator().manual_seed(7))
    noisy = sample_noisy_logits(logits, variance, 6, generator=torch.Generator().manual_seed(7)).double().numpy()
    for b in range(2):
        for i in range(3):
            y = int(targets[b, i])
            if y < 0:
                assert got[b, i].item() == 0.0
                continue
            probs = [np.exp(noisy[s, b, i, y]) / np.exp(noisy[s, b, i]).sum() for s in range(6)]
            assert got[b, i].item() == pytest.approx(-math.log(np.mean(probs)), rel=1e-5)


def test_aleatoric_nll_without_noise_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    targets = torch.tensor([[1, 4, 0], [2, 3, 3]])
    got = aleatoric_nll(logits, torch.full_like(logits, 1e-14), targets, num_samples=3)
    ce = F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1), reduction="none").reshape(2, 3)
    torch.testing.assert_close(got, ce, rtol=1e-5, atol=1e-6)


def test_head_initial_variance():
    head = UncertaintyHead(8, 5, initial_variance=0.02)
    torch.nn.init.zeros_(head.projection.weight)
    torch.testing.assert_close(head(torch.randn(1, 2, 8)), torch.full((1, 2, 5), 0.02))


def test_learned_variance_grows_where_labels_are_noisy():
    # Shared logits f(class) are pushed to be confident by the clean half; the head also sees a
    # clean/noisy flag, and half of the noisy half's labels are redrawn at random.
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n, vocab = 512, 4
    cls = torch.randint(0, vocab, (n,), generator=g)
    noisy = torch.arange(n) % 2 == 1
    redraw = (torch.rand(n, generator=g) < 0.5) & noisy
    labels = torch.where(redraw, torch.randint(0, vocab, (n,), generator=g), cls)
    x_logits = F.one_hot(cls, vocab).float()[None]
    x_head = torch.cat([x_logits, F.one_hot(noisy.long(), 2).float()[None]], -1)
    f = torch.nn.Linear(vocab, vocab)
    head = UncertaintyHead(vocab + 2, vocab)
    optimiser = torch.optim.Adam([*f.parameters(), *head.parameters()], lr=0.05)
    losses = []
    for _ in range(200):
        loss = aleatoric_nll(f(x_logits), head(x_head), labels[None], num_samples=16, generator=g).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        variance = head(x_head)[0].mean(-1)
    clean_var, noisy_var = variance[~noisy].mean().item(), variance[noisy].mean().item()
    assert losses[-1] < 0.6 * losses[0]
    assert clean_var < 0.05  # started at 0.01 and stays small
    assert noisy_var > 1.0 and noisy_var > 50 * clean_var
