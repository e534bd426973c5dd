"""Streamed all-pairs similarities equal the in-memory functions; merging and saving are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.similarity import cca, linear_cka, pwcca, svcca
from analysis.streaming import (
    LayerMoments,
    pairwise_cca,
    pairwise_linear_cka,
    pairwise_pwcca,
    pairwise_svcca,
)

TOL = 1e-10


def make_layers(frames=300, dims=(5, 7, 4, 6), offset=3.0, seed=0):
    """Correlated layers of different widths, with per-neuron offsets."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(frames, dims[0], generator=g) * torch.linspace(2.0, 0.3, dims[0])
    out = []
    for d in dims:
        h = h @ torch.randn(h.shape[1], d, generator=g) * 0.6 + torch.randn(frames, d, generator=g)
        out.append((h + offset * torch.randn(d, generator=g)).float())
    return out


def accumulate(layers, bounds, **kwargs):
    m = LayerMoments([h.shape[1] for h in layers], **kwargs)
    for a, b in zip(bounds[:-1], bounds[1:]):
        m.update([h[a:b] for h in layers])
    return m


def matrix(fn, layers, **kwargs):
    count = len(layers)
    values = [[fn(layers[i], layers[j], **kwargs) for j in range(count)] for i in range(count)]
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture(scope="module")
def layers():
    return make_layers()


@pytest.fixture(scope="module")
def moments(layers):
    return accumulate(layers, [0, 1, 17, 150, 151, 300])  # uneven chunks, one of a single frame


@pytest.mark.parametrize("debiased", [False, True])
def test_streamed_linear_cka_equals_in_memory(layers, moments, debiased):
    expected = matrix(linear_cka, layers, debiased=debiased)
    torch.testing.assert_close(pairwise_linear_cka(moments, debiased=debiased), expected, atol=TOL, rtol=0)


def test_streamed_cca_family_equals_in_memory(layers, moments):
    for i, j in [(0, 1), (1, 3), (2, 2), (3, 0)]:
        torch.testing.assert_close(pairwise_cca(moments, i, j), cca(layers[i], layers[j]), atol=TOL, rtol=0)
        torch.testing.assert_close(
            pairwise_cca(moments, i, j, epsilon=0.3), cca(layers[i], layers[j], epsilon=0.3), atol=TOL, rtol=0
        )
    for keep in (0.9, 1.0):
        expected = matrix(svcca, layers, keep=keep, epsilon=0.01)
        got = pairwise_svcca(moments, keep=keep, epsilon=0.01)
        torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    for epsilon in (0.0, 0.2):
        expected = matrix(pwcca, layers, epsilon=epsilon)
        torch.testing.assert_close(pairwise_pwcca(moments, epsilon=epsilon), expected, atol=TOL, rtol=0)


def test_large_offsets_keep_float64_accuracy():
    layers = make_layers(frames=200, dims=(4, 3), offset=1e4, seed=1)
    m = accumulate(layers, [0, 50, 200])
    for debiased in (False, True):
        assert float(pairwise_linear_cka(m, debiased=debiased)[0, 1]) == pytest.approx(
            linear_cka(layers[0], layers[1], debiased=debiased), abs=1e-9
        )


def test_internal_chunking_and_merge_equal_one_pass(layers, moments):
    small_chunks = accumulate(layers, [0, 300], chunk_frames=7)
    first, second = accumulate(layers, [0, 120]), accumulate(layers, [120, 300])  # different shifts
    merged = LayerMoments(first.dims).merge(first).merge(second)
    for m in (small_chunks, merged):
        assert m.count == 300
        for debiased in (False, True):
            torch.testing.assert_close(
                pairwise_linear_cka(m, debiased=debiased), pairwise_linear_cka(moments, debiased=debiased),
                atol=TOL, rtol=0,
            )
        torch.testing.assert_close(pairwise_pwcca(m), pairwise_pwcca(moments), atol=TOL, rtol=0)
        torch.testing.assert_close(m.covariance(1, 2), moments.covariance(1, 2), atol=1e-12, rtol=0)


def test_merge_times_counts_a_block_several_times(layers):
    block = accumulate(layers, [0, 40])
    twice = LayerMoments(block.dims).merge(block).merge(block)
    weighted = LayerMoments(block.dims).merge(block, times=2)
    assert weighted.count == twice.count == 80
    for name in ("total", "gram", "sq_cross", "sq_gram"):
        torch.testing.assert_close(getattr(weighted, name), getattr(twice, name), atol=1e-9, rtol=1e-12)
    # duplicated frames: debiased CKA of the doubled data in memory
    doubled = [torch.cat([h[:40], h[:40]]) for h in layers]
    assert float(pairwise_linear_cka(weighted, debiased=True)[0, 2]) == pytest.approx(
        linear_cka(doubled[0], doubled[2], debiased=True), abs=TOL
    )


def test_rebased_moments_describe_the_same_data(layers, moments):
    other = moments.rebased(torch.randn(moments.total_dim, dtype=torch.float64) * 5)
    expected = pairwise_linear_cka(moments, debiased=True)
    torch.testing.assert_close(pairwise_linear_cka(other, debiased=True), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(other.mean(3), layers[3].double().mean(0), atol=1e-12, rtol=0)


def test_cross_model_rows_and_cols(layers):
    model_b = make_layers(frames=300, dims=(3, 5), seed=7)
    m = accumulate(layers + model_b, [0, 100, 300])
    rows, cols = range(4), range(4, 6)
    got = pairwise_linear_cka(m, rows, cols)
    assert got.shape == (4, 2)
    expected = torch.tensor([[linear_cka(a, b) for b in model_b] for a in layers], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(pairwise_linear_cka(m)[:4, 4:], got, atol=1e-14, rtol=0)
    expected = torch.tensor([[svcca(a, b) for b in model_b] for a in layers], dtype=torch.float64)
    torch.testing.assert_close(pairwise_svcca(m, rows, cols), expected, atol=TOL, rtol=0)


def test_save_load_and_dict_round_trip(tmp_path, moments):
    path = tmp_path / "moments.safetensors"
    moments.save(path)
    loaded = LayerMoments.load(path)
    again = LayerMoments.from_dict(moments.to_dict())
    for m in (loaded, again):
        assert m.dims == moments.dims and m.count == moments.count
        torch.testing.assert_close(m.gram, moments.gram, atol=0, rtol=0)
        torch.testing.assert_close(m.sq_gram, moments.sq_gram, atol=0, rtol=0)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="Expected a LayerMoments file"):
        LayerMoments.load(tmp_path / "other.safetensors")


def test_constant_neurons_match_in_memory_exactly(layers):
    padded = [torch.cat([layers[0], torch.full((300, 1), 0.1)], dim=1), layers[1]]
    m = accumulate(padded, [0, 33, 300])
    for i, j in [(0, 1), (1, 0), (0, 0)]:
        torch.testing.assert_close(pairwise_cca(m, i, j), cca(padded[i], padded[j]), atol=TOL, rtol=0)
    torch.testing.assert_close(pairwise_pwcca(m), matrix(pwcca, padded), atol=TOL, rtol=0)
    expected = matrix(linear_cka, padded, debiased=True)
    torch.testing.assert_close(pairwise_linear_cka(m, debiased=True), expected, atol=TOL, rtol=0)


def test_statistics_follow_the_tensors_device(layers):
    m = accumulate(layers, [0, 10])
    assert m.gram.device == layers[0].device and m.gram.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_accumulation_equals_cpu(layers, moments):
    m = accumulate([h.cuda() for h in layers], [0, 150, 300])
    assert m.gram.is_cuda
    torch.testing.assert_close(pairwise_linear_cka(m).cpu(), pairwise_linear_cka(moments), atol=TOL, rtol=0)


def test_degenerate_layers_and_errors(layers):
    frames = layers[0].shape[0]
    constant = torch.full((frames, 2), 0.1, dtype=torch.float64)  # its mean is inexact in binary
    m = accumulate([layers[0], constant], [0, 7, frames])
    assert m.constant_layers() == [1]
    with pytest.raises(ValueError, match=r"CKA is undefined for layers \[1\]"):
        pairwise_linear_cka(m, debiased=True)
    with pytest.raises(ValueError, match=r"PWCCA is undefined for layers \[1\]"):
        pairwise_pwcca(m)
    with pytest.raises(ValueError, match="SVCCA is undefined"):
        pairwise_svcca(m)
    with pytest.raises(ValueError, match="y is constant"):
        pairwise_cca(m, 0, 1)
    m = LayerMoments([5, 7])
    with pytest.raises(ValueError, match="Expected 2 layer tensors, found 1"):
        m.update([layers[0]])
    with pytest.raises(ValueError, match=r"layer 1 of shape \[300, 7\]"):
        m.update([layers[0], layers[1][:10]])
    bad = layers[1].clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"counts per layer \[0, 1\]"):
        m.update([layers[0], bad])
    with pytest.raises(ValueError, match="dims"):
        LayerMoments([5, 0])
    with pytest.raises(ValueError, match="with dims"):
        LayerMoments([5, 7]).merge(LayerMoments([5, 6]))
    m.update([layers[0][:3], layers[1][:3]])
    with pytest.raises(ValueError, match="at least 4 frames"):
        pairwise_linear_cka(m, debiased=True)
    with pytest.raises(ValueError, match=r"layer index in \[0, 2\), found 2"):
        pairwise_linear_cka(m, rows=[2])
    with pytest.raises(ValueError, match="Cannot serialise empty"):
        LayerMoments([1]).to_dict()


def test_bench_streamed_matches_the_numpy_baseline():
    from analysis.bench import bench_similarity, bench_streaming_scale

    result = bench_similarity(layers=3, dim=8, frames=400, chunk_frames=150)
    assert set(result["max_abs_diff"]) == {"cka", "svcca", "pwcca"}
    assert max(result["max_abs_diff"].values()) < 1e-10
    assert result["speedup"] > 0
    scale = bench_streaming_scale(layers=2, dim=4, frames=100, chunk_frames=30, device="cpu")
    assert scale["peak_memory_bytes"] is None and scale["accumulate_seconds"] > 0


# ------------------------------------------------------------------ per-neuron scale

FACTORS = (1e-8, 1e-5, 1e-2, 1e2, 1e5, 1e8)


def two_views(frames=200, seed=5):
    """x `[frames, 6]` (the larger view) and a related y `[frames, 4]`, float64 with offsets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, 6, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.2, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 4, generator=g, dtype=torch.float64) + torch.randn(frames, 4, generator=g,
                                                                             dtype=torch.float64)
    return x + 4.0, y - 2.0


def streamed(x, y, **svcca_kwargs):
    m = accumulate([x, y], [0, 13, 90, x.shape[0]])
    return (pairwise_cca(m, 0, 1), float(pairwise_pwcca(m, [0], [1])[0, 0]),
            float(pairwise_svcca(m, [0], [1], **svcca_kwargs)[0, 0]))


def rescaled(v, factors):
    return v * torch.as_tensor(factors, dtype=torch.float64)


@pytest.mark.parametrize("factor", FACTORS)
def test_streamed_cca_and_pwcca_invariant_to_rescaling_neurons(factor):
    # y (4 neurons) weights PWCCA's variates, so x's neurons may be rescaled freely; y only by
    # a common factor (one neuron's factor changes its PWCCA weight by design)
    x, y = two_views()
    base_cca, base_pwcca, _ = streamed(x, y)
    one = torch.ones(6, dtype=torch.float64)
    one[5] = factor  # the smallest neuron of x
    for x2, y2 in ((rescaled(x, one), y), (rescaled(x, FACTORS), y), (x, factor * y)):
        got_cca, got_pwcca, _ = streamed(x2, y2)
        torch.testing.assert_close(got_cca, base_cca, atol=1e-6, rtol=0)
        assert got_pwcca == pytest.approx(base_pwcca, abs=1e-6)
    y_one = y.clone()
    y_one[:, 1] *= factor
    torch.testing.assert_close(streamed(x, y_one)[0], base_cca, atol=1e-6, rtol=0)
    assert streamed(x, y_one)[1] == pytest.approx(pwcca(x, y_one), abs=1e-6)


@pytest.mark.parametrize("factor", FACTORS)
def test_streamed_svcca_invariant_to_a_common_factor_of_a_view(factor):
    # The SVD step keeps the directions carrying `keep` of the variance, which one neuron's
    # factor changes (SVCCA is not per-neuron scale invariant by construction); a common
    # factor of a view keeps the shares, hence the kept directions and their CCA.
    x, y = two_views()
    for keep in (0.9, 0.99, 1.0):
        base = streamed(x, y, keep=keep)[2]
        assert streamed(factor * x, y, keep=keep)[2] == pytest.approx(base, abs=1e-6)
        assert streamed(x, factor * y, keep=keep)[2] == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("factor", FACTORS)
def test_streamed_rank_deficiency_is_detected_whatever_the_scale(factor):
    x, y = two_views()
    frames = x.shape[0]
    padded = torch.column_stack([x, factor * x[:, 5], factor * x[:, 0] + 3.0 * x[:, 4],
                                 torch.full((frames,), 0.1 * factor, dtype=torch.float64)])
    base_cca, base_pwcca, _ = streamed(x, y)
    got_cca, got_pwcca, _ = streamed(padded, y)
    assert got_cca.shape == (4,)
    torch.testing.assert_close(got_cca, base_cca, atol=1e-6, rtol=0)
    assert got_pwcca == pytest.approx(base_pwcca, abs=1e-6)
