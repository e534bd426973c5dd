"""Bootstrap intervals and permutation nulls resample whole utterances, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.similarity import linear_cka
from analysis.stats import bootstrap_interval, bootstrap_moments, crop_to_shorter, permutation_null
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
