"""CTC greedy decoding, ESPnet's joint CTC/attention beam search and the decode entry point."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kd.data.text import CharTokenizer, normalize_text
from kd.evaluation.decode import DecodeConfig, DecodeMethod, ctc_greedy, decode, decode_ids, encode_utterances
from kd.testing import TEXTS, TOKENS, speech_batch, train_briefly

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    from kd.models.asr import AsrConfig, build_asr_model

    torch.manual_seed(0)
    model = build_asr_model(AsrConfig.tiny(vocab_size=len(TOKENS)), list(TOKENS))
    return train_briefly(model, speech_batch(), CharTokenizer(TOKENS), steps=60)


# ---------------------------------------------------------------- ctc_greedy


def one_hot_scores(paths: list[list[int]], vocab: int) -> torch.Tensor:
    """Log-posteriors whose per-frame argmax is the given path (padded with token 4)."""
    frames = max(len(p) for p in paths)
    scores = torch.full((len(paths), frames, vocab), -5.0)
    for b, path in enumerate(paths):
        for t in range(frames):
            scores[b, t, path[t] if t < len(path) else 4] = -0.1
    return scores


def test_ctc_greedy_merges_repeats_then_drops_blanks():
    scores = one_hot_scores([[1, 1, 0, 1, 2, 2, 0, 0, 3]], vocab=5)
    # the blank between the two 1s keeps them apart; the repeated 2s merge
    assert ctc_greedy(scores, torch.tensor([9])) == [[1, 1, 2, 3]]


def test_ctc_greedy_respects_lengths_and_blank_id():
    scores = one_hot_scores([[3, 3, 0, 2], [2, 2, 2, 2], [1, 1, 1, 1]], vocab=5)
    # frames past each length (the padding argmax is token 4) are ignored
    assert ctc_greedy(scores, torch.tensor([2, 4, 0])) == [[3], [2], []]
    # with blank = 3 the zeros become tokens and the 3s disappear
    assert ctc_greedy(scores, torch.tensor([4, 1, 4]), blank=3) == [[0, 2], [2], [1]]


def test_ctc_greedy_matches_an_independent_best_path():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30, 7))
    logits[..., 0] += 1.0  # a blank-heavy posterior, like a real CTC model's
    lengths = [30, 17, 5, 1]
    expected = []
    for b, n in enumerate(lengths):
        best = logits[b, :n].argmax(-1)
        expected.append([int(k) for k, _ in itertools.groupby(best) if k != 0])
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1)
    assert ctc_greedy(log_probs, torch.tensor(lengths)) == expected


def test_ctc_greedy_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"log_probs: expected \[batch, frames, vocab\]"):
        ctc_greedy(torch.zeros(3, 5), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="lengths: expected shape"):
        ctc_greedy(torch.zeros(2, 5, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\]"):
        ctc_greedy(torch.zeros(2, 5, 3), torch.tensor([1, 6]))


# ---------------------------------------------------------------- config


def test_decode_config_round_trip_and_validation():
    config = DecodeConfig(method=DecodeMethod.CTC_GREEDY, beam_size=4, ctc_weight=0.5, penalty=-0.5)
    assert DecodeConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["method"] == "ctc_greedy"
    with pytest.raises(ValueError, match=r"DecodeConfig.ctc_weight: expected a value in \[0, 1\], found 1.5"):
        DecodeConfig(ctc_weight=1.5)
    with pytest.raises(ValueError, match="DecodeConfig.beam_size: expected a positive int, found 0"):
        DecodeConfig(beam_size=0)
    with pytest.raises(ValueError, match=r"DecodeConfig.method: expected one of \['ctc_greedy', 'beam'\]"):
        DecodeConfig.from_dict({"method": "greedy"})
    with pytest.raises(ValueError, match=r"DecodeConfig: unknown field 'beam' \(did you mean 'beam_size'\?\)"):
        DecodeConfig.from_dict({"beam": 3})


# ---------------------------------------------------------------- model decoding


def test_ctc_greedy_decoding_of_the_model(model):
    batch = speech_batch()
    got = decode_ids(model, batch.speech, batch.speech_lengths, DecodeConfig(method=DecodeMethod.CTC_GREEDY))
    with torch.no_grad():
        for i, n in enumerate(batch.speech_lengths.tolist()):
            enc, _ = model.encode(batch.speech[i : i + 1, :n], batch.speech_lengths[i : i + 1])
            best = model.espnet.ctc.ctc_lo(enc)[0].argmax(-1).tolist()
            assert got[i] == [k for k, _ in itertools.groupby(best) if k != 0]
    assert any(got)  # a random model emits tokens, so the comparison is not between empty lists


def attention_greedy(model, enc: torch.Tensor, maxlen: int) -> list[int]:
    """Argmax of the decoder's full teacher-forced forward, one token at a time, until <eos>."""
    sos = eos = len(TOKENS) - 1
    ys = [sos]
    for _ in range(maxlen):
        logits, _ = model.espnet.decoder(enc[None], torch.tensor([enc.size(0)]), torch.tensor([ys]),
                                         torch.tensor([len(ys)]))
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        ys.append(token)
    return [t for t in ys[1:] if t != 0]  # blanks are not text (Speech2Text drops them too)


def test_beam_one_without_ctc_is_attention_greedy(model):
    batch = speech_batch()
    config = DecodeConfig(beam_size=1, ctc_weight=0.0, maxlenratio=0.0)
    got = decode_ids(model, batch.speech, batch.speech_lengths, config)
    with torch.no_grad():
        encoded = encode_utterances(model, batch.speech, batch.speech_lengths)
        expected = [attention_greedy(model, enc, maxlen=enc.size(0)) for enc in encoded]
    assert got == expected
    assert all(got) and any(len(seq) > 3 for seq in got)


def test_maxlenratio_below_zero_caps_the_length(model):
    batch = speech_batch()
    got = decode_ids(model, batch.speech, batch.speech_lengths, DecodeConfig(beam_size=2, maxlenratio=-3.0))
    assert all(len(seq) <= 3 for seq in got)


def test_decode_is_the_same_in_a_padded_batch_and_alone(model):
    batch = speech_batch()
    tokenizer = CharTokenizer(TOKENS)
    config = DecodeConfig(beam_size=2, ctc_weight=0.5)
    together = decode(model, batch, config, tokenizer=tokenizer)
    assert together == list(TEXTS)  # the model has memorised its three training utterances
    for i, n in enumerate(batch.speech_lengths.tolist()):
        alone = speech_batch(lengths=(n,))
        alone.speech[0] = batch.speech[i, :n]
        assert decode(model, alone, config, tokenizer=tokenizer) == [together[i]]
    ids = decode_ids(model, batch.speech, batch.speech_lengths, config)
    assert together == [normalize_text(tokenizer.decode(seq)) for seq in ids]


class BiasedLM:
    """A fake LM scorer: log-probability 0 for one token, -10 for every other (incl. <eos>)."""

    def __init__(self, token: int, vocab: int):
        self.token, self.vocab = token, vocab

    def init_state(self, x):
        return None

    def select_state(self, state, i, new_id=None):
        return state

    def score(self, y, state, x):
        scores = torch.full((self.vocab,), -10.0)
        scores[self.token] = 0.0
        return scores, state

    def final_score(self, state):
        return 0.0


def test_lm_fusion_hook_steers_the_search(model):
    from espnet.nets.scorer_interface import ScorerInterface

    class Scorer(BiasedLM, ScorerInterface):
        pass

    batch = speech_batch(lengths=(12000,))
    lm = Scorer(token=5, vocab=len(TOKENS))
    config = DecodeConfig(beam_size=2, ctc_weight=0.0, lm_weight=100.0, maxlenratio=-4.0)
    assert decode_ids(model, batch.speech, batch.speech_lengths, config, lm=lm) == [[5, 5, 5, 5]]
    # without the LM, or with weight 0, the search is the model's own
    plain = decode_ids(model, batch.speech, batch.speech_lengths, DecodeConfig(beam_size=2, ctc_weight=0.0,
                                                                                maxlenratio=-4.0))
    assert plain != [[5, 5, 5, 5]]
    zero = DecodeConfig(beam_size=2, ctc_weight=0.0, lm_weight=0.0, maxlenratio=-4.0)
    assert decode_ids(model, batch.speech, batch.speech_lengths, zero, lm=lm) == plain
    with pytest.raises(TypeError, match="lm: expected an ESPnet ScorerInterface, found BiasedLM"):
        decode_ids(model, batch.speech, batch.speech_lengths, config, lm=BiasedLM(5, len(TOKENS)))
