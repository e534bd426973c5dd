"""The beam search batched over utterances against ESPnet's BatchBeamSearch, one utterance at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.data.text import CharTokenizer
from kd.evaluation.beam import BeamHypothesis, _Ended, batched_beam_search
from kd.evaluation.decode import DecodeConfig, build_beam_search, decode_ids, encode_utterances
from kd.testing import TOKENS, speech_batch, train_briefly

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

SOS_EOS = len(TOKENS) - 1


@pytest.fixture(scope="module")
def model():
    from kd.models.asr import AsrConfig, build_asr_model

    torch.manual_seed(0)
    model = build_asr_model(AsrConfig.tiny(vocab_size=len(TOKENS)), list(TOKENS))
    return train_briefly(model, speech_batch(), CharTokenizer(TOKENS), steps=60)


@pytest.fixture(scope="module")
def encoded(model):
    """Encoder outputs of the three training utterances and of three unseen noise utterances.

    The trained ones decode to their transcripts; the noise gives other lengths (18 to 30
    frames) and hypotheses whose competitors score close to them.
    """
    seen = speech_batch()
    noise = speech_batch(lengths=(8000, 20000, 14000))
    g = torch.Generator().manual_seed(7)
    noise.speech = 0.1 * torch.randn(noise.speech.shape, generator=g) * (noise.speech != 0)
    with torch.no_grad():
        out = encode_utterances(model, seen.speech, seen.speech_lengths)
        out += encode_utterances(model, noise.speech, noise.speech_lengths)
    return out


def espnet_best(model, enc: torch.Tensor, config: DecodeConfig) -> BeamHypothesis | None:
    search = build_beam_search(model, config, TOKENS)
    with torch.no_grad():
        hyps = search(x=enc, maxlenratio=config.maxlenratio, minlenratio=config.minlenratio)
    if not hyps:
        return None
    return BeamHypothesis(tuple(hyps[0].yseq[1:-1].tolist()), float(hyps[0].score))


def batched_best(model, encoded: list[torch.Tensor], config: DecodeConfig) -> list[BeamHypothesis | None]:
    espnet = model.espnet
    return batched_beam_search(
        espnet.decoder, espnet.ctc, encoded, vocab_size=len(TOKENS), sos=espnet.sos, eos=espnet.eos,
        blank=espnet.blank_id, beam_size=config.beam_size, ctc_weight=config.ctc_weight, penalty=config.penalty,
        maxlenratio=config.maxlenratio, minlenratio=config.minlenratio, normalize_length=config.normalize_length,
    )


def assert_same(got: BeamHypothesis | None, expected: BeamHypothesis | None) -> None:
    if expected is None:
        assert got is None
        return
    assert got is not None and got.tokens == expected.tokens
    # scores agree up to float rounding (matrix products over a different number of rows)
    assert got.score == pytest.approx(expected.score, rel=1e-5, abs=1e-4)


# ctc_weight 1.0 is exact too: ESPnet then runs no pre-beam and scores every token by CTC alone,
# and so does the batched search
@pytest.mark.parametrize("beam_size", [1, 5])
@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
def test_same_hypotheses_as_espnet(model, encoded, beam_size, ctc_weight):
    config = DecodeConfig(beam_size=beam_size, ctc_weight=ctc_weight)
    got = batched_best(model, encoded, config)
    for enc, hyp in zip(encoded, got):
        assert_same(hyp, espnet_best(model, enc, config))
    assert all(len(h.tokens) >= 3 for h in got)  # real hypotheses, not empty ones
    if ctc_weight == 0.3 and beam_size == 5:  # the joint search recovers the transcripts
        assert [h.tokens for h in got[:3]] == [tuple(CharTokenizer(TOKENS).encode(t)) for t in
                                               ("abc dea", "bad cab ed", "ace")]


@pytest.mark.parametrize("settings", [
    dict(beam_size=6, ctc_weight=0.3),  # int(1.5 * 6) = V: no pre-beam, every token scored by CTC
    dict(beam_size=3, ctc_weight=0.5, penalty=0.7, normalize_length=True),
    dict(beam_size=4, ctc_weight=0.3, penalty=-1.0),
    dict(beam_size=3, ctc_weight=0.3, maxlenratio=0.2),  # stops at the max length, <eos> appended
    dict(beam_size=2, ctc_weight=0.0, maxlenratio=-4.0),
    dict(beam_size=3, ctc_weight=0.3, minlenratio=0.5),  # long minimum: <eos> held back
    # nothing ends, searched again with 0.9 (attention only: with CTC, hypotheses this long for so
    # few frames score log 0 = -1e10 and tie)
    dict(beam_size=2, ctc_weight=0.0, minlenratio=1.0),
    dict(beam_size=2, ctc_weight=0.3, minlenratio=-20.0),  # fixed minimum that nothing reaches: empty
], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_same_hypotheses_as_espnet_with_other_settings(model, encoded, settings):
    config = DecodeConfig(**settings)
    got = batched_best(model, encoded, config)
    for enc, hyp in zip(encoded, got):
        assert_same(hyp, espnet_best(model, enc, config))


def test_batch_is_the_same_as_each_utterance_alone(model, encoded):
    config = DecodeConfig(beam_size=4, ctc_weight=0.3)
    together = batched_best(model, encoded, config)
    for enc, hyp in zip(encoded, together):
        assert_same(batched_best(model, [enc], config)[0], hyp)
    # and in another order, with an utterance twice
    order = [4, 0, 4, 2]
    assert [h.tokens for h in batched_best(model, [encoded[i] for i in order], config)] == \
        [together[i].tokens for i in order]


def test_decode_ids_with_batched_search(model):
    batch = speech_batch()
    for config in (DecodeConfig(beam_size=3, ctc_weight=0.3), DecodeConfig(beam_size=1, ctc_weight=0.0)):
        batched = DecodeConfig.from_dict({**config.to_dict(), "batched_search": True})
        assert decode_ids(model, batch.speech, batch.speech_lengths, batched) == \
            decode_ids(model, batch.speech, batch.speech_lengths, config)
    assert DecodeConfig().batched_search is False  # ESPnet's search stays the default
    assert DecodeConfig.from_dict(batched.to_dict()) == batched


def test_end_detection_is_espnets_rule():
    from espnet.nets.e2e_asr_common import end_detect

    rng = np.random.default_rng(0)
    for _ in range(300):
        ended, rows = _Ended(normalize_length=False), []
        for _ in range(rng.integers(0, 8)):
            tokens = tuple(range(int(rng.integers(0, 6))))
            score = float(rng.choice([0.0, -5.0, -9.0, -10.0, -10.5, -25.0]) + rng.normal(0, 0.3))
            ended.add(tokens, score)
            rows.append({"yseq": [0] * (len(tokens) + 2), "score": score})
        for step in range(9):
            assert ended.end_detected(step) == end_detect(rows, step)


def test_normalize_length_picks_by_score_per_token():
    ended = _Ended(normalize_length=True)
    ended.add((1,), -3.0)  # -3 / 2
    ended.add((1, 2, 3, 4), -6.0)  # -6 / 5: better per token, worse in total
    assert ended.best == BeamHypothesis((1, 2, 3, 4), -6.0)
    plain = _Ended(normalize_length=False)
    plain.add((1,), -3.0)
    plain.add((1, 2, 3, 4), -6.0)
    plain.add((2,), -3.0)  # equal scores: the first ended wins, as in ESPnet's stable sort
    assert plain.best == BeamHypothesis((1,), -3.0)


def test_empty_and_frameless_input(model, encoded):
    assert batched_best(model, [], DecodeConfig(beam_size=2)) == []
    enc = torch.zeros(0, model.config.d_model)
    assert batched_best(model, [enc], DecodeConfig(beam_size=2)) == [None]
    fixed = DecodeConfig(beam_size=2, maxlenratio=-3.0)  # a fixed length, yet no frame to emit it from
    assert batched_best(model, [enc, encoded[0]], fixed) == [None, batched_best(model, [encoded[0]], fixed)[0]]


def test_bad_input(model, encoded):
    espnet = model.espnet
    kwargs = dict(vocab_size=len(TOKENS), sos=SOS_EOS, eos=SOS_EOS, beam_size=4)
    with pytest.raises(ValueError, match="beam_size: expected a positive int, found 0"):
        batched_beam_search(espnet.decoder, espnet.ctc, encoded, **{**kwargs, "beam_size": 0})
    with pytest.raises(ValueError, match="beam_size: expected at most vocab_size = 9, found 10"):
        batched_beam_search(espnet.decoder, espnet.ctc, encoded, **{**kwargs, "beam_size": 10})
    with pytest.raises(ValueError, match=r"ctc_weight: expected a value in \[0, 1\], found 1.5"):
        batched_beam_search(espnet.decoder, espnet.ctc, encoded, ctc_weight=1.5, **kwargs)
    with pytest.raises(ValueError, match="ctc: expected a CTC module for ctc_weight=0.3, found None"):
        batched_beam_search(espnet.decoder, None, encoded, ctc_weight=0.3, **kwargs)
    with pytest.raises(ValueError, match="decoder: expected an attention decoder for ctc_weight=0.5, found None"):
        batched_beam_search(None, espnet.ctc, encoded, ctc_weight=0.5, **kwargs)
    with pytest.raises(ValueError, match=r"encoded\[1\]: expected a tensor \[frames, d_model\], found \(1, 5, 64\)"):
        batched_beam_search(espnet.decoder, espnet.ctc, [encoded[0], torch.zeros(1, 5, 64)], **kwargs)
    with pytest.raises(ValueError, match=r"encoded\[1\]: expected d_model 64, .* found 32"):
        batched_beam_search(espnet.decoder, espnet.ctc, [encoded[0], torch.zeros(5, 32)], **kwargs)
    with pytest.raises(ValueError, match=r"decoder: expected 12 outputs \(vocab_size\), found 9"):
        batched_beam_search(espnet.decoder, espnet.ctc, encoded, ctc_weight=0.0, **{**kwargs, "vocab_size": 12})
    with pytest.raises(ValueError, match=r"ctc: expected 12 outputs \(vocab_size\), found 9"):
        batched_beam_search(espnet.decoder, espnet.ctc, encoded, **{**kwargs, "vocab_size": 12, "ctc_weight": 1.0})
    with pytest.raises(TypeError, match="DecodeConfig.batched_search: expected a bool, found 'yes'"):
        DecodeConfig(batched_search="yes")
    batch = speech_batch(lengths=(9000,))
    with pytest.raises(ValueError, match="lm: expected none with DecodeConfig.batched_search"):
        decode_ids(model, batch.speech, batch.speech_lengths, DecodeConfig(beam_size=2, batched_search=True), lm=object())
    # an LM with weight 0 takes no part, as in ESPnet's search
    config = DecodeConfig(beam_size=2, batched_search=True, lm_weight=0.0)
    assert decode_ids(model, batch.speech, batch.speech_lengths, config, lm=object()) == \
        decode_ids(model, batch.speech, batch.speech_lengths, config)
