"""Bootstrap intervals and permutation nulls resample whole utterances, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.similarity import linear_cka
from analysis.stats import (
    CurveIntervals,
    bootstrap_interval,
    bootstrap_moments,
    crop_to_shorter,
    curve_intervals,
    permutation_null,
)
from analysis.streaming import LayerMoments, pairwise_linear_cka


def utterances(count=24, dependent=True, seed=0):
    """Per-utterance (x, y) activations of varying length; y depends on x when dependent."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for _ in range(count):
        frames = int(torch.randint(8, 20, (1,), generator=g))
        # a per-utterance offset makes frames within an utterance dependent
        x = torch.randn(frames, 4, generator=g) + 2.0 * torch.randn(4, generator=g)
        noise = torch.randn(frames, 3, generator=g) + 2.0 * torch.randn(3, generator=g)
        ys.append(x[:, :3] + 0.5 * noise if dependent else noise)
        xs.append(x)
    return xs, ys


def cka_of(xs, ys):
    return linear_cka(*crop_to_shorter(xs, ys))


def test_bootstrap_is_deterministic_and_resamples_whole_utterances():
    xs, ys = utterances()
    items = list(zip(xs, ys))
    seen = []

    def statistic(sample):
        seen.extend(sample)
        return linear_cka(torch.cat([x for x, _ in sample]), torch.cat([y for _, y in sample]))

    first = bootstrap_interval(items, statistic, n_boot=30, seed=3)
    assert all(any(item is original for original in items) for item in seen)
    again = bootstrap_interval(items, statistic, n_boot=30, seed=3)
    other = bootstrap_interval(items, statistic, n_boot=30, seed=4)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)
    assert first.low <= first.estimate <= first.high
    assert float(first.estimate) == pytest.approx(cka_of(xs, ys), abs=1e-12)


def test_bootstrap_width_matches_the_standard_error_of_a_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    result = bootstrap_interval(list(values), lambda s: float(np.mean(s)), n_boot=2000, seed=0, level=0.9)
    expected = 2 * 1.6449 * values.std() / np.sqrt(len(values))
    assert float(result.high - result.low) == pytest.approx(expected, rel=0.15)


def test_bootstrap_of_an_array_statistic():
    items = [np.arange(3.0) + i for i in range(5)]
    result = bootstrap_interval(items, lambda s: np.mean(s, axis=0), n_boot=20)
    assert result.estimate.shape == result.low.shape == (3,) and result.samples.shape == (20, 3)


def test_permutation_null_separates_dependent_from_independent_data():
    dependent = permutation_null(*utterances(dependent=True), cka_of, n_perm=99, seed=0)
    independent = permutation_null(*utterances(dependent=False, seed=1), cka_of, n_perm=99, seed=0)
    assert dependent.p_value == pytest.approx(0.01)  # the smallest possible with 99 permutations
    assert independent.p_value > 0.1
    again = permutation_null(*utterances(dependent=False, seed=1), cka_of, n_perm=99, seed=0)
    np.testing.assert_array_equal(independent.null, again.null)
    assert independent.p_value == again.p_value
    expected = (1 + np.count_nonzero(independent.null >= independent.observed)) / 100
    assert independent.p_value == pytest.approx(expected)


def test_crop_to_shorter_pairs_frames_in_order():
    xs = [torch.arange(5.0)[:, None], torch.arange(3.0)[:, None] + 10]
    ys = [torch.arange(2.0)[:, None], torch.arange(4.0)[:, None] + 20]
    x, y = crop_to_shorter(xs, ys)
    assert x.squeeze(1).tolist() == [0.0, 1.0, 10.0, 11.0, 12.0]
    assert y.squeeze(1).tolist() == [0.0, 1.0, 20.0, 21.0, 22.0]


def test_bootstrap_moments_reproduces_in_memory_resamples():
    xs, ys = utterances(count=12)
    ys = [y[: x.shape[0]] for x, y in zip(xs, ys)]
    groups = [range(0, 3), range(3, 7), range(7, 12)]  # blocks of whole utterances
    blocks = []
    for group in groups:
        m = LayerMoments([4, 3])
        for u in group:
            m.update([xs[u], ys[u]])
        blocks.append(m)
    statistic = lambda m: pairwise_linear_cka(m, [0], [1], debiased=True)[0, 0]
    result = bootstrap_moments(blocks, statistic, n_boot=5, seed=11)
    draws = np.random.default_rng(11).integers(0, 3, size=(5, 3))
    for sample, draw in zip(result.samples, draws):
        chosen = [u for b in draw for u in groups[b]]
        x, y = torch.cat([xs[u] for u in chosen]), torch.cat([ys[u] for u in chosen])
        expected = linear_cka(x, y, debiased=True)
        assert float(sample) == pytest.approx(expected, abs=1e-10)
    expected = linear_cka(torch.cat(xs), torch.cat(ys), debiased=True)
    assert float(result.estimate) == pytest.approx(expected, abs=1e-10)
    again = bootstrap_moments(blocks, statistic, n_boot=5, seed=11)
    np.testing.assert_array_equal(result.samples, again.samples)


def test_stratified_bootstrap_resamples_within_each_stratum():
    strata = ["b", "a", "b", "a", "b"]
    seen = []
    result = bootstrap_interval(range(5), lambda chosen: seen.append(list(chosen)) or float(np.sum(chosen)),
                                n_boot=6, seed=2, strata=strata)
    rng = np.random.default_rng(2)  # strata in sorted order: "a" (items 1, 3), then "b" (items 0, 2, 4)
    draws = np.empty((6, 5), dtype=np.int64)
    draws[:, [1, 3]] = np.array([1, 3])[rng.integers(0, 2, size=(6, 2))]
    draws[:, [0, 2, 4]] = np.array([0, 2, 4])[rng.integers(0, 3, size=(6, 3))]
    assert seen[:6] == draws.tolist() and seen[6] == [0, 1, 2, 3, 4]  # the replicates, then the data
    for draw in seen[:6]:  # every replicate keeps each stratum's size
        assert sorted(strata[i] for i in draw) == sorted(strata)
    # one item per stratum: every replicate is the data, the interval collapses onto the estimate
    single = bootstrap_interval([1.0, 5.0, 6.0], np.mean, n_boot=20, strata=[0, 1, 2])
    assert single.low == single.high == single.estimate == 4.0
    with pytest.raises(ValueError, match=r"Expected strata of shape \[3\], found \(2,\)"):
        bootstrap_interval([1.0, 5.0, 6.0], np.mean, strata=[0, 1])


def test_curve_intervals_by_hand():
    """Per-utterance sums of two layers, 5 replicates at level 0.5: the percentiles fall on the 2nd
    and 4th of the 5 sorted replicates (positions (5 - 1) x 0.25 = 1 and 3), no interpolation."""
    correct = np.array([[1.0, 3.0], [2.0, 1.0], [4.0, 1.0]])  # [utts, layers]
    sizes = np.array([2.0, 2.0, 4.0])
    got = curve_intervals(lambda w: (w @ correct) / (w @ sizes), 3, n_boot=5, seed=7, level=0.5)
    assert got.estimate == [7 / 8, 5 / 8] and got.best == 0 and got.utterances == 3
    draws = np.random.default_rng(7).integers(0, 3, size=(5, 3))  # bootstrap_interval's draws
    replicates = np.array([correct[d].sum(0) / sizes[d].sum() for d in draws])  # [5, layers]
    ordered = np.sort(replicates, axis=0)
    assert got.low == pytest.approx(ordered[1].tolist()) and got.high == pytest.approx(ordered[3].tolist())
    gap = np.sort(replicates[:, 0] - replicates[:, 1])
    assert got.vs_best == pytest.approx([0.0, 0.25])
    assert got.vs_best_low == pytest.approx([0.0, gap[1]]) and got.vs_best_high == pytest.approx([0.0, gap[3]])
    assert got.vs_last_low == pytest.approx([gap[1], 0.0]) and got.vs_last_high == pytest.approx([gap[3], 0.0])
    assert CurveIntervals.from_dict(got.to_dict()) == got


def test_tied_with_best_names_the_layers_not_separated():
    base = dict(level=0.95, n_boot=10, utterances=5, estimate=[0.5, 0.7, 0.69], low=[0.4, 0.6, 0.6],
                high=[0.6, 0.8, 0.8], best=1, vs_best=[0.2, 0.0, 0.01], vs_best_high=[0.3, 0.0, 0.03],
                vs_last=[-0.19, 0.01, 0.0], vs_last_low=[-0.3, -0.01, 0.0], vs_last_high=[-0.1, 0.03, 0.0])
    assert CurveIntervals(**base, vs_best_low=[0.1, 0.0, -0.01]).tied_with_best() == [1, 2]
    assert CurveIntervals(**base, vs_best_low=[0.1, 0.0, 0.002]).tied_with_best() == [1]
    assert CurveIntervals(**base, vs_best_low=[None, 0.0, 0.002]).tied_with_best() == [0, 1]  # undefined: not separated
    with pytest.raises(ValueError, match="Expected CurveIntervals fields"):
        CurveIntervals.from_dict({"level": 0.95})


def test_errors():
    with pytest.raises(ValueError, match="at least 2 utterances"):
        bootstrap_interval([1.0], np.mean)
    with pytest.raises(ValueError, match="level in"):
        bootstrap_interval([1.0, 2.0], np.mean, level=1.0)
    with pytest.raises(ValueError, match="n_boot >= 1"):
        bootstrap_interval([1.0, 2.0], np.mean, n_boot=0)
    with pytest.raises(ValueError, match="same number of utterances, found 2 and 3"):
        permutation_null([1, 2], [1, 2, 3], lambda a, b: 0.0)
    with pytest.raises(ValueError, match="empty blocks"):
        bootstrap_moments([LayerMoments([1]), LayerMoments([1])], lambda m: 0.0)
