"""Claims' intervals and verdicts (kd.evaluation.evidence): the paired two-level bootstrap, AUROC, token uncertainty."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kd.evaluation.evidence import (NOT_A_TEST, REPRODUCES, DOES_NOT_REPRODUCE, Interval, UttErrors, auroc,
                                    paired_interval, read_utterance_errors, verdict)


def _run(errors, lengths=None):
    errors = np.asarray(errors, float)
    lengths = np.full(len(errors), 10.0) if lengths is None else np.asarray(lengths, float)
    return UttErrors(tuple(f"u{i:03d}" for i in range(len(errors))), errors, lengths)


def test_auroc_hand_computed():
    # positives 0.8, 0.4; negatives 0.5, 0.1, 0.4: pairs (pos > neg) = 0.8 beats 3, 0.4 beats 0.1 and ties 0.4
    # -> (3 + 1 + 0.5) / (2 * 3) = 0.75
    assert auroc([0.8, 0.5, 0.4, 0.1, 0.4], [True, False, True, False, False]) == pytest.approx(0.75)
    assert auroc([1, 2, 3], [False, False, True]) == 1.0
    assert auroc([1, 2, 3], [True, False, False]) == 0.0
    assert np.isnan(auroc([1, 2], [True, True]))
    with pytest.raises(ValueError, match="one shape"):
        auroc([1, 2, 3], [True, False])


def test_identical_systems_tie_and_never_reproduce():
    rng = np.random.default_rng(0)
    runs = {s: _run(rng.integers(0, 4, 200)) for s in range(3)}
    interval = paired_interval(runs, runs)
    assert interval.diff == 0.0 and interval.lo == 0.0 and interval.hi == 0.0
    assert interval.holds_zero and verdict(interval) == DOES_NOT_REPRODUCE


def test_clear_difference_reproduces_and_estimate_is_the_mean_over_seeds():
    rng = np.random.default_rng(1)
    b = {s: _run(rng.integers(2, 6, 300)) for s in range(3)}
    a = {s: _run(np.maximum(b[s].errors - 2, 0)) for s in range(3)}  # a makes fewer errors everywhere
    interval = paired_interval(a, b, resamples=500)
    expected = np.mean([(a[s].errors.sum() - b[s].errors.sum()) / b[s].lengths.sum() for s in range(3)]) * 100
    assert interval.diff == pytest.approx(expected)
    assert interval.hi < 0 and verdict(interval) == REPRODUCES
    assert verdict(paired_interval(b, a, resamples=500)) == DOES_NOT_REPRODUCE  # the reverse claim
    assert verdict(interval, premise=False) == NOT_A_TEST


def test_noise_without_effect_is_a_tie():
    # per utterance, a and b differ at random by +-1 error: no systematic difference
    rng = np.random.default_rng(2)
    b = {0: _run(rng.integers(1, 5, 100))}
    a = {0: _run(b[0].errors + rng.choice([-1, 1], 100))}
    interval = paired_interval(a, b, resamples=1000)
    assert interval.lo < 0 < interval.hi
    assert verdict(interval) == DOES_NOT_REPRODUCE


def test_seed_spread_widens_the_interval():
    # every utterance's difference is the same within a seed, but the seeds disagree: the seed-level
    # resampling must make the interval hold 0 although each seed alone is "significant"
    b = {s: _run(np.full(200, 3.0)) for s in range(4)}
    shifts = {0: -2.0, 1: 1.5, 2: -1.5, 3: 2.0}
    a = {s: _run(np.full(200, 3.0 + shifts[s])) for s in range(4)}
    interval = paired_interval(a, b, resamples=2000)
    assert interval.lo < 0 < interval.hi
    one = paired_interval({0: a[0]}, {0: b[0]})
    assert one.hi < 0  # seed 0 alone


def test_mismatched_runs_are_errors():
    with pytest.raises(ValueError, match="same seeds"):
        paired_interval({0: _run([1, 2])}, {1: _run([1, 2])})
    other = UttErrors(("x", "y"), np.array([1.0, 2.0]), np.array([10.0, 10.0]))
    with pytest.raises(ValueError, match="same test utterances"):
        paired_interval({0: _run([1, 2]), 1: other}, {0: _run([1, 2]), 1: _run([1, 2])})
    with pytest.raises(ValueError, match="as many errors and lengths"):
        UttErrors(("a",), np.array([1.0, 2.0]), np.array([1.0]))


def test_read_utterance_errors(tmp_path):
    rows = [{"utt": "b", "domain": "target", "ref": "x y", "hyp": "x", "ref_words": 2, "errors": 1, "ref_chars": 3,
             "char_errors": 2},
            {"utt": "a", "domain": "target", "ref": "x", "hyp": "x", "ref_words": 1, "errors": 0, "ref_chars": 1,
             "char_errors": 0},
            {"utt": "c", "domain": "us", "ref": "z", "hyp": "", "ref_words": 1, "errors": 1, "ref_chars": 1,
             "char_errors": 1}]
    (tmp_path / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wer = read_utterance_errors(tmp_path, "wer", domain="target")
    assert wer.utts == ("a", "b") and wer.errors.tolist() == [0, 1] and wer.rate == pytest.approx(1 / 3)
    cer = read_utterance_errors(tmp_path, "cer")
    assert cer.utts == ("a", "b", "c") and cer.rate == pytest.approx(3 / 5)
    (tmp_path / "utterances.jsonl").write_text(json.dumps({"utt": "a", "errors": 0, "ref_words": 1}) + "\n")
    with pytest.raises(ValueError, match=r"utterances.jsonl:1: expected fields 'char_errors' and 'ref_chars'"):
        read_utterance_errors(tmp_path, "cer")
    with pytest.raises(ValueError, match="expected 'wer' or 'cer'"):
        read_utterance_errors(tmp_path, "ter")


def test_interval_holds_zero_flag():
    assert Interval(diff=0.1, lo=-0.2, hi=0.4, seeds=1, utterances=10).holds_zero
    assert not Interval(diff=-1.0, lo=-2.0, hi=-0.1, seeds=1, utterances=10).holds_zero


def test_token_uncertainty_scores_are_the_model_outputs(tests_corpus, tmp_path):
    """Each token's three scores, recomputed from one teacher-forced forward pass of the same model."""
    import torch

    from kd.data.batching import AudioDataset, collate
    from kd.data.datadir import load_data_dir
    from kd.data.text import CharTokenizer
    from kd.evaluation.evidence import token_uncertainty, uncertainty_summary
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.models.model_dir import save_model_dir

    root = tests_corpus[0]
    data_dir = root / "target" / "test"
    tokenizer = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz' "])
    torch.manual_seed(0)
    model = build_asr_model(AsrConfig.tiny(vocab_size=tokenizer.vocab_size), list(tokenizer.tokens))
    save_model_dir(model, tokenizer, tmp_path / "m")
    tokens = token_uncertainty(tmp_path / "m", data_dir, max_batch_seconds=1e-3)  # one utterance a batch
    data = load_data_dir(data_dir)
    assert tokens.utts == tuple(u.utt for u in data.utterances)
    dataset = AudioDataset(data, tokenizer=tokenizer)
    model.eval()
    for u in range(len(data.utterances)):  # one utterance at a time: no padding
        batch = collate([dataset[u]])
        with torch.no_grad():
            out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
        n = int(out.token_mask[0].sum())
        sl = slice(tokens.offsets[u], tokens.offsets[u + 1])
        assert tokens.offsets[u + 1] - tokens.offsets[u] == n
        predicted = out.logits[0, :n].argmax(-1)
        np.testing.assert_allclose(tokens.variance[sl], out.variances[0, :n].mean(-1).numpy(), rtol=1e-5)
        np.testing.assert_allclose(tokens.variance_predicted[sl],
                                   out.variances[0, :n].gather(-1, predicted[:, None])[:, 0].numpy(), rtol=1e-5)
        np.testing.assert_allclose(tokens.posterior_doubt[sl],
                                   1 - out.logits[0, :n].softmax(-1).max(-1).values.numpy(), rtol=1e-5, atol=1e-7)
        assert tokens.error[sl].tolist() == (predicted != out.targets[0, :n]).tolist()
    summary = uncertainty_summary(tokens)
    errors = tokens.error
    assert summary["tokens"] == len(errors) and summary["token_error"] == pytest.approx(errors.mean())
    if 0 < errors.sum() < len(errors):
        assert summary["auroc"] == auroc(tokens.variance_predicted, errors)
        assert summary["auroc_mean_variance"] == auroc(tokens.variance, errors)
        assert summary["auroc_posterior"] == auroc(tokens.posterior_doubt, errors)
