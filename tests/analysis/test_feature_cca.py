"""Held-out CCA against external features: utterance-grouped folds and a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.feature_cca import (
    FeatureCCAConfig,
    cca_curve_intervals,
    heldout_cca,
    label_cca,
    one_hot,
    segment_cca,
    segment_means,
    speaker_cca,
    utterance_folds,
)


def ref_heldout(xs, ys, folds, n_folds, weights=None):
    """Fit CCA on the other folds' frames (eigh whitening), correlate the held-out projections
    (each held-out utterance repeated ``weights[u]`` times; default once)."""
    weights = np.ones(len(xs), dtype=int) if weights is None else weights
    scores = []
    for f in range(n_folds):
        train = [u for u in range(len(xs)) if folds[u] != f]
        test = [u for u in range(len(xs)) if folds[u] == f]
        x = np.concatenate([xs[u] for u in train]).astype(np.float64)
        y = np.concatenate([ys[u] for u in train]).astype(np.float64)
        x, y = x - x.mean(0), y - y.mean(0)
        inv_sqrt = lambda c: (lambda e, v: v @ np.diag(e**-0.5) @ v.T)(*np.linalg.eigh(c))
        wx, wy = inv_sqrt(x.T @ x), inv_sqrt(y.T @ y)
        u_, _, vt = np.linalg.svd(wx @ x.T @ y @ wy)
        k = min(x.shape[1], y.shape[1])
        a, b = wx @ u_[:, :k], wy @ vt[:k].T
        px = np.concatenate([xs[u] for u in test for _ in range(weights[u])]) @ a
        py = np.concatenate([ys[u] for u in test for _ in range(weights[u])]) @ b
        scores.append(np.mean([np.corrcoef(px[:, i], py[:, i])[0, 1] for i in range(k)]))
    return np.mean(scores), scores


def related_utterances(count=15, dx=5, dy=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dx, dy, generator=g)
    xs, ys = [], []
    for _ in range(count):
        frames = int(torch.randint(6, 14, (1,), generator=g))
        x = torch.randn(frames, dx, generator=g) + torch.randn(dx, generator=g)
        xs.append(x)
        ys.append(x @ mix + torch.randn(frames, dy, generator=g))
    return xs, ys


def test_folds_group_whole_utterances_and_are_seeded():
    folds = utterance_folds(23, 5, seed=1)
    assert folds.shape == (23,)
    assert sorted(np.bincount(folds).tolist()) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(folds, utterance_folds(23, 5, seed=1))
    assert not np.array_equal(folds, utterance_folds(23, 5, seed=2))
    with pytest.raises(ValueError, match="at least n_folds=5 utterances, found 3"):
        utterance_folds(3, 5)


def test_heldout_cca_matches_numpy_reference():
    xs, ys = related_utterances()
    config = FeatureCCAConfig(n_folds=4, seed=3)
    result = heldout_cca(xs, ys, config)
    folds = utterance_folds(15, 4, 3)
    score, fold_scores = ref_heldout([x.numpy() for x in xs], [y.numpy() for y in ys], folds, 4)
    assert result.score == pytest.approx(score, abs=1e-10)
    np.testing.assert_allclose(result.fold_scores, fold_scores, atol=1e-10)
    assert result.n_dims == 3
    assert heldout_cca(xs, ys, FeatureCCAConfig(n_folds=4, max_dims=1)).n_dims == 1


def test_grouped_folds_do_not_leak_utterance_identity():
    # x and y share nothing but which utterance a frame comes from: an unrelated random
    # offset per utterance in each view. Splitting utterances across folds would let the
    # fit memorise the offset pairs; utterance-grouped folds must not generalise.
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for _ in range(20):
        xs.append(torch.randn(6, generator=g) + 0.1 * torch.randn(15, 6, generator=g))
        ys.append(torch.randn(6, generator=g) + 0.1 * torch.randn(15, 6, generator=g))
    config = FeatureCCAConfig(n_folds=5)
    grouped = heldout_cca(xs, ys, config)
    frame_split = heldout_cca([r[None] for x in xs for r in x], [r[None] for y in ys for r in y], config)
    assert grouped.score < 0.1
    assert frame_split.score > 0.3


def test_one_hot_labels_dropping_a_column_keeps_the_span():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(12, 4, generator=g) for _ in range(10)]
    labels = [(x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() for x in xs]  # 3 classes from x
    config = FeatureCCAConfig(n_folds=3)
    dropped = heldout_cca(xs, [one_hot(l, 3) for l in labels], config)
    full = heldout_cca(xs, [one_hot(l, 3, drop_last=False) for l in labels], config)
    assert dropped.n_dims == full.n_dims == 2
    assert dropped.score == pytest.approx(full.score, abs=1e-9)
    assert label_cca(xs, labels, 3, config) == dropped
    assert dropped.score > 0.3


def test_unlabelled_frames_are_left_out():
    xs, _ = related_utterances(count=9)
    labels = [torch.arange(x.shape[0]) % 3 for x in xs]
    masked = [torch.where(torch.arange(x.shape[0]) % 4 == 0, -1, l) for x, l in zip(xs, labels)]
    keep = [l >= 0 for l in masked]
    config = FeatureCCAConfig(n_folds=3)
    kept_x = [x[k] for x, k in zip(xs, keep)]
    expected = heldout_cca(kept_x, [one_hot(l[k], 3) for l, k in zip(masked, keep)], config)
    assert label_cca(xs, masked, 3, config) == expected


def test_speaker_cca_broadcasts_utterance_labels():
    xs, _ = related_utterances(count=9)
    speakers = [u % 3 for u in range(9)]
    config = FeatureCCAConfig(n_folds=3)
    frame_labels = [torch.full((x.shape[0],), s) for x, s in zip(xs, speakers)]
    assert speaker_cca(xs, speakers, 3, config) == label_cca(xs, frame_labels, 3, config)


def test_segment_means_and_segment_cca():
    xs, _ = related_utterances(count=8)
    segments = [(u, s, s + 2, (u + s) % 3) for u in range(8) for s in range(0, 6, 2)]
    means, labels = segment_means(xs, segments)
    torch.testing.assert_close(means[2][1], xs[2][2:4].double().mean(0))
    assert labels[2].tolist() == [(2 + 0) % 3, (2 + 2) % 3, (2 + 4) % 3]
    config = FeatureCCAConfig(n_folds=4)
    expected = heldout_cca(means, [one_hot(l, 3) for l in labels], config)
    assert segment_cca(xs, segments, 3, config) == expected
    with pytest.raises(ValueError, match=r"Segment 1 of utterance 0: expected 0 <= start < end"):
        segment_means(xs, [(0, 0, 1, 0), (0, 3, 3, 0)])
    with pytest.raises(ValueError, match="utt_index in"):
        segment_means(xs, [(9, 0, 1, 0)])


def test_class_absent_from_a_training_fold_gives_a_finite_score():
    xs, _ = related_utterances(count=6)
    labels = [torch.arange(x.shape[0]) % 2 for x in xs]
    labels[0][:3] = 2  # class 2 exists in one utterance only
    result = label_cca(xs, labels, 3, FeatureCCAConfig(n_folds=3))
    assert np.isfinite(result.score) and all(np.isfinite(result.fold_scores))


def test_config_round_trip_and_validation():
    config = FeatureCCAConfig(n_folds=3, epsilon=0.1, max_dims=4, seed=2)
    assert FeatureCCAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="^FeatureCCAConfig.n_folds: expected at least 2, found 1"):
        FeatureCCAConfig(n_folds=1)
    with pytest.raises(ValueError, match="^FeatureCCAConfig.epsilon: expected at least 0"):
        FeatureCCAConfig(epsilon=-1.0)
    with pytest.raises(ValueError, match=r"^FeatureCCAConfig: unknown field 'folds' \(did you mean 'n_folds'\?\)"):
        FeatureCCAConfig.from_dict({"folds": 3})


def test_input_errors():
    xs, ys = related_utterances(count=6)
    with pytest.raises(ValueError, match="utterance 2 as"):
        heldout_cca(xs, ys[:2] + [ys[2][:-1]] + ys[3:], FeatureCCAConfig(n_folds=2))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\), found range \[0, 5\]"):
        one_hot(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="labels of utterance 0"):
        label_cca(xs, [torch.zeros(1, dtype=torch.long)] * 6, 3)


@pytest.mark.parametrize("factor", (1e-8, 1e-5, 1e2, 1e8))
def test_heldout_cca_invariant_to_rescaling_a_neuron(factor):
    # the fitted projections are CCA's, which no per-neuron scale may change (the rank decision
    # is made on correlations); the held-out Pearson correlations are scale-free too
    xs, ys = related_utterances()
    xs = [x.to(torch.float64) for x in xs]
    config = FeatureCCAConfig(n_folds=3)
    base = heldout_cca(xs, ys, config)
    column = torch.ones(5, dtype=torch.float64)
    column[2] = factor
    got = heldout_cca([x * column for x in xs], ys, config)
    assert got.score == pytest.approx(base.score, abs=1e-6)
    assert got.n_dims == base.n_dims


def test_heldout_projections_rescore_resampled_utterances_with_the_fit_held_fixed():
    xs, ys = related_utterances(count=16)
    config = FeatureCCAConfig(n_folds=4, seed=3)
    result = heldout_cca(xs, ys, config)
    folds = utterance_folds(16, 4, 3)
    assert result.heldout.scores(np.ones(16))[0] == pytest.approx(result.score, abs=1e-10)
    # a resample: utterances drawn 0, 1 or 2 times within their folds; the NumPy reference fits on the
    # original folds and correlates the repeated held-out frames
    weights = np.array([2, 0, 1, 1, 0, 2, 1, 1, 2, 1, 0, 1, 1, 1, 2, 0])
    expected, _ = ref_heldout([x.numpy() for x in xs], [y.numpy() for y in ys], folds, 4, weights)
    assert result.heldout.scores(weights[None].astype(float))[0] == pytest.approx(expected, abs=1e-10)
    np.testing.assert_array_equal(result.heldout.folds, folds)
    assert result.heldout.sums.shape == (16, 5, 3) and result.heldout.pairs.tolist() == [3, 3, 3, 3]


def test_cca_curve_intervals_single_out_the_related_layer():
    xs, ys = related_utterances(count=40, seed=1)
    g = torch.Generator().manual_seed(5)
    layers = [xs, [x + 2.0 * torch.randn(x.shape, generator=g) for x in xs],
              [torch.randn(x.shape, generator=g) for x in xs]]  # related, noisier, unrelated
    config = FeatureCCAConfig(n_folds=4)
    results = [heldout_cca(layer, ys, config) for layer in layers]
    got = cca_curve_intervals(results, n_boot=300, seed=1)
    assert got.estimate == pytest.approx([r.score for r in results], abs=1e-10)
    assert got.best == 0 and got.tied_with_best() == [0] and got.utterances == 40
    for layer in range(3):
        assert got.low[layer] <= got.estimate[layer] <= got.high[layer]
    assert got.vs_best_low[1] > 0 and got.vs_best_low[2] > 0
    # the same layer twice: tied, the paired difference exactly 0
    twin = cca_curve_intervals([results[0], results[0]], n_boot=50)
    assert twin.tied_with_best() == [0, 1]
    assert twin.vs_best_low == pytest.approx([0.0, 0.0], abs=1e-12) == twin.vs_best_high
    other = heldout_cca(xs, ys, FeatureCCAConfig(n_folds=4, seed=9))
    with pytest.raises(ValueError, match="same utterances, frames and folds, found layer 1 differing"):
        cca_curve_intervals([results[0], other])
