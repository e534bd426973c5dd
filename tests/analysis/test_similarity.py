"""In-memory similarities against direct float64 NumPy references, invariances and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.similarity import cca, linear_cka, minibatch_cka, pwcca, rbf_cka, svcca

# ------------------------------------------------------------------ NumPy references


def centred(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def ref_linear_cka(x, y):
    """CKA as HSIC ratios of centred Gram matrices: tr(K H L H) / sqrt(...)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def ref_hsic1(k, l):
    """Song et al. 2012 unbiased HSIC, written with explicit loops over the formula's terms."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    ones = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ kt @ lt @ ones)
    ) / (n * (n - 3))


def ref_debiased_cka(k, l):
    return ref_hsic1(k, l) / np.sqrt(ref_hsic1(k, k) * ref_hsic1(l, l))


def ref_rbf_kernel(x, threshold):
    diff = x[:, None, :] - x[None, :, :]
    sq = (diff**2).sum(-1)
    return np.exp(-sq / (2.0 * threshold**2 * np.median(sq)))


def ref_cca(x, y):
    """Canonical correlations from orthonormal bases (QR) of the centred views."""
    qx, _ = np.linalg.qr(centred(x))
    qy, _ = np.linalg.qr(centred(y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def ref_svcca(x, y, keep):
    views = []
    for v in (centred(x), centred(y)):
        u, s, _ = np.linalg.svd(v, full_matrices=False)
        share = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.argmax(share >= keep)) + 1
        views.append(u[:, :k] * s[:k])
    return ref_cca(*views).mean()


def ref_pwcca(x, y):
    """Canonical variates h_i of the smaller view, weights sum_j |<h_i, z_j>| (Morcos et al.)."""
    x, y = centred(x), centred(y)
    if y.shape[1] < x.shape[1]:
        x, y = y, x
    qx, _ = np.linalg.qr(x)
    qy, _ = np.linalg.qr(y)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u
    alpha = np.abs(h.T @ x).sum(axis=1)
    return (alpha * rho).sum() / alpha.sum()


# ------------------------------------------------------------------ data


@pytest.fixture
def views():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.2]) + 4.0
    y = x @ rng.normal(size=(6, 5)) + rng.normal(size=(60, 5)) - 2.0
    return x, y


def random_orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def random_invertible(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    assert abs(np.linalg.det(a)) > 1e-3  # internal: the test's map must be invertible
    return a


# ------------------------------------------------------------------ CKA


def test_linear_cka_matches_gram_reference_in_both_regimes(views):
    x, y = views
    assert linear_cka(x, y) == pytest.approx(ref_linear_cka(centred(x), centred(y)), abs=1e-12)
    # fewer frames than dims: the implementation switches to [n, n] Gram matrices
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 12)), rng.normal(size=(7, 9))
    assert linear_cka(a, b) == pytest.approx(ref_linear_cka(centred(a), centred(b)), abs=1e-12)


def test_debiased_linear_cka_matches_hsic1_reference(views):
    x, y = views
    expected = ref_debiased_cka(x @ x.T, y @ y.T)  # raw features: HSIC_1 ignores offsets
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, abs=1e-10)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 20)), rng.normal(size=(8, 15))  # Gram route
    assert linear_cka(a, b, debiased=True) == pytest.approx(ref_debiased_cka(a @ a.T, b @ b.T), abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_reference(views, debiased):
    x, y = views
    k, l = ref_rbf_kernel(x, 0.5), ref_rbf_kernel(y, 0.5)
    if debiased:
        expected = ref_debiased_cka(k, l)
    else:
        n = x.shape[0]
        h = np.eye(n) - 1.0 / n
        kc, lc = h @ k @ h, h @ l @ h
        expected = (kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum())
    assert rbf_cka(x, y, debiased=debiased) == pytest.approx(expected, abs=1e-10)


def test_rbf_cka_threshold_changes_value(views):
    x, y = views
    assert abs(rbf_cka(x, y, threshold=0.5) - rbf_cka(x, y, threshold=2.0)) > 1e-3


def test_minibatch_cka_matches_reference(views):
    x, y = views
    batches = [(x[i : i + 15], y[i : i + 15]) for i in range(0, 60, 15)]
    terms = np.array([[ref_hsic1(a @ a.T, b @ b.T), ref_hsic1(a @ a.T, a @ a.T), ref_hsic1(b @ b.T, b @ b.T)]
                      for a, b in batches]).mean(axis=0)
    assert minibatch_cka(iter(batches)) == pytest.approx(terms[0] / np.sqrt(terms[1] * terms[2]), abs=1e-10)


@pytest.mark.parametrize("metric", [linear_cka, rbf_cka])
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(views, metric):
    x, y = views
    base = metric(x, y)
    assert metric(3.7 * x @ random_orthogonal(6, 3) + 1.0, y) == pytest.approx(base, abs=1e-10)
    assert metric(x, 0.2 * y @ random_orthogonal(5, 4)) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("metric", [linear_cka, rbf_cka])
def test_cka_changes_under_a_general_linear_map(views, metric):
    x, y = views
    stretch = np.diag([5.0, 1.0, 1.0, 0.1, 1.0, 3.0]) @ random_invertible(6, 5)
    assert abs(metric(x @ stretch, y) - metric(x, y)) > 1e-3


def test_self_similarity_is_one(views):
    x, _ = views
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert minibatch_cka([(x[:30], x[:30]), (x[30:], x[30:])]) == pytest.approx(1.0, abs=1e-12)
    assert svcca(x, x) == pytest.approx(1.0, abs=1e-10)
    assert pwcca(x, x) == pytest.approx(1.0, abs=1e-10)


def test_torch_and_numpy_inputs_agree(views):
    x, y = views
    tx, ty = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    expected = linear_cka(x.astype(np.float32), y.astype(np.float32))
    assert linear_cka(tx, ty) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ CCA family


def test_cca_matches_qr_reference(views):
    x, y = views
    got = cca(x, y)
    assert got.dtype == torch.float64 and got.shape == (5,)
    assert torch.all(got[:-1] >= got[1:])
    np.testing.assert_allclose(got.numpy(), ref_cca(x, y), atol=1e-10)


def test_svcca_and_pwcca_match_references(views):
    x, y = views
    for keep in (0.5, 0.9, 0.99, 1.0):
        assert svcca(x, y, keep=keep) == pytest.approx(ref_svcca(x, y, keep), abs=1e-10)
    assert pwcca(x, y) == pytest.approx(ref_pwcca(x, y), abs=1e-10)
    assert pwcca(y, x) == pytest.approx(ref_pwcca(y, x), abs=1e-10)


def test_epsilon_ridge_lowers_correlations(views):
    x, y = views
    assert torch.all(cca(x, y, epsilon=0.5) < cca(x, y) + 1e-12)
    assert cca(x, y, epsilon=0.5)[0] < cca(x, y)[0] - 1e-4


def test_cca_family_invariant_to_invertible_maps_and_offsets(views):
    x, y = views
    rng = np.random.default_rng(6)
    x2 = x @ random_invertible(6, 7) + rng.normal(size=6) * 10
    y2 = y @ random_invertible(5, 8) + rng.normal(size=5) * 10
    np.testing.assert_allclose(cca(x2, y2).numpy(), cca(x, y).numpy(), atol=1e-9)
    assert svcca(x2, y2, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-9)


def test_pwcca_invariances_and_its_dependence_on_the_smaller_views_basis(views):
    x, y = views  # y has fewer neurons: its basis defines the weights
    base = pwcca(x, y)
    rng = np.random.default_rng(9)
    signed_permutation = np.eye(5)[rng.permutation(5)] * np.array([1, -1, 1, -1, -1])
    assert pwcca(x + 7.0, 2.5 * y @ signed_permutation - 3.0) == pytest.approx(base, abs=1e-10)
    assert pwcca(x @ random_invertible(6, 10), y) == pytest.approx(base, abs=1e-9)
    assert abs(pwcca(x, y @ random_invertible(5, 11)) - base) > 1e-3


def test_pwcca_weights_the_larger_correlations_of_dominant_directions():
    rng = np.random.default_rng(12)
    z = rng.normal(size=(400, 2))
    # neuron 0 is large and shared with y; neuron 1 is small and unrelated
    x = np.column_stack([5.0 * z[:, 0], 0.1 * z[:, 1]])
    y = np.column_stack([z[:, 0] + 0.1 * rng.normal(size=400), rng.normal(size=400)])
    assert pwcca(x, y) > cca(x, y).mean().item() + 0.3


# ------------------------------------------------------------------ degenerate inputs and errors


def test_constant_and_duplicated_neurons_do_not_change_cca(views):
    x, y = views
    padded = np.column_stack([x, np.full(60, 3.0), x[:, 0] * 2.0])
    np.testing.assert_allclose(cca(padded, y).numpy(), cca(x, y).numpy(), atol=1e-8)
    assert pwcca(padded, y) == pytest.approx(pwcca(x, y), abs=1e-8)
    assert svcca(padded, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-8)


def test_fewer_frames_than_dims_gives_rank_limited_trivial_correlations():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(8, 10)), rng.normal(size=(8, 12))
    got = cca(x, y)
    assert got.shape == (7,)  # centred rank is frames - 1
    np.testing.assert_allclose(got.numpy(), 1.0, atol=1e-8)
    assert cca(x, y, epsilon=1.0)[0] < 0.99


def test_one_hot_views_are_handled():
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 4, size=80)
    one_hot = np.eye(4)[labels]  # rank 3 after centring
    x = one_hot @ rng.normal(size=(4, 6)) + 0.1 * rng.normal(size=(80, 6))
    got = cca(x, one_hot)
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), cca(x, one_hot[:, :3]).numpy(), atol=1e-10)


def test_constant_view_raises():
    rng = np.random.default_rng(15)
    x, flat = rng.normal(size=(300, 3)), np.full((300, 2), 0.3)  # mean of 300 x 0.3 is inexact
    with pytest.raises(ValueError, match="CKA is undefined"):
        linear_cka(x, flat)
    with pytest.raises(ValueError, match="CKA is undefined"):
        linear_cka(flat, x, debiased=True)
    with pytest.raises(ValueError, match="y is constant"):
        cca(x, flat)
    with pytest.raises(ValueError, match="SVCCA is undefined"):
        svcca(flat, x)
    with pytest.raises(ValueError, match="median squared distance"):
        rbf_cka(x, flat)


def test_input_validation_messages():
    x = np.zeros((5, 3))
    x[0, 0], x[1, 1] = 1.0, 2.0
    with pytest.raises(ValueError, match="same number of frames, found 5 and 4"):
        linear_cka(x, x[:4])
    with pytest.raises(ValueError, match=r"shape \[frames, dims\], found shape \(5,\)"):
        cca(x[:, 0], x)
    with pytest.raises(ValueError, match="at least 2 frames, found 1"):
        svcca(x[:1], x[:1])
    bad = x.copy()
    bad[0, 0], bad[2, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match="y has 2 NaN/inf values out of 15"):
        pwcca(x, bad)
    with pytest.raises(TypeError, match="found list"):
        linear_cka([[1.0]], x)
    with pytest.raises(ValueError, match="at least 4 frames"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="keep in"):
        svcca(x, x, keep=0.0)
    with pytest.raises(ValueError, match="epsilon >= 0"):
        cca(x, x, epsilon=-1.0)
    with pytest.raises(ValueError, match="minibatch 1"):
        minibatch_cka([(x, x), (x[:3], x[:3])])
    with pytest.raises(ValueError, match="found none"):
        minibatch_cka([])


def test_pwcca_of_both_directions_from_one_svd():
    """pwcca_whitened_both gives what two separate pwcca_whitened calls give (x-weighted, y-weighted)."""
    from analysis.similarity import _covariances, _centre, covariance_whitener, pwcca_whitened, pwcca_whitened_both

    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    y = x[:, :9] @ torch.randn(9, 9, generator=g, dtype=torch.float64) + 0.5 * torch.randn(400, 9, generator=g,
                                                                                           dtype=torch.float64)
    sxx, sxy, syy = _covariances(_centre(x), _centre(y))
    wx, wy = covariance_whitener(sxx, 0.0), covariance_whitener(syy, 0.0)
    from_x, from_y = pwcca_whitened_both(sxx, syy, sxy, wx, wy)
    assert from_x == pytest.approx(pwcca_whitened(sxx, sxy, wx, wy), abs=1e-12)
    assert from_y == pytest.approx(pwcca_whitened(syy, sxy.T, wy, wx), abs=1e-12)
    assert from_x != pytest.approx(from_y, abs=1e-3)  # the two weightings differ here


# ------------------------------------------------------------------ per-neuron scale

# Factors far beyond the 1e-10 eigenvalue threshold in both directions: the rank decision must
# not mistake a neuron's small (or its neighbours' large) scale for rank deficiency.
FACTORS = (1e-8, 1e-5, 1e-2, 1e2, 1e5, 1e8)


def scaled(v, column, factor):
    out = np.array(v, dtype=np.float64, copy=True)
    out[:, column] *= factor
    return out


@pytest.mark.parametrize("factor", FACTORS)
def test_cca_invariant_to_rescaling_one_neuron(views, factor):
    x, y = views
    base = cca(x, y).numpy()
    for column in (0, 5):  # the largest and the smallest neuron of x
        np.testing.assert_allclose(cca(scaled(x, column, factor), y).numpy(), base, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cca(x, scaled(y, 2, factor)).numpy(), base, atol=1e-6, rtol=0)


def test_cca_invariant_to_rescaling_every_neuron_differently(views):
    x, y = views
    factors = np.array(FACTORS)  # x has 6 neurons: one factor each
    base = cca(x, y).numpy()
    np.testing.assert_allclose(cca(x * factors, y * factors[::-1][:5]).numpy(), base, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cca(x * factors[::-1], y).numpy(), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("factor", FACTORS)
def test_pwcca_invariant_to_rescaling_the_larger_views_neurons(views, factor):
    # y (5 neurons) weights the variates; x's neurons may be mapped by anything invertible
    x, y = views
    base = pwcca(x, y)
    assert pwcca(scaled(x, 5, factor), y) == pytest.approx(base, abs=1e-6)
    assert pwcca(x * np.array(FACTORS), y) == pytest.approx(base, abs=1e-6)
    assert pwcca(y, scaled(x, 0, factor)) == pytest.approx(base, abs=1e-6)  # x is still the larger view


@pytest.mark.parametrize("factor", FACTORS)
def test_pwcca_rescaled_smaller_view(views, factor):
    # A common factor on the weighting view's neurons leaves PWCCA unchanged; one neuron's
    # factor changes its weight sum_j |<h_i, z_j>| by design, so there the value must follow
    # the QR reference (which no eigenvalue threshold touches) rather than drop the neuron.
    x, y = views
    assert pwcca(x, factor * y) == pytest.approx(pwcca(x, y), abs=1e-6)
    y1 = scaled(y, 3, factor)
    assert pwcca(x, y1) == pytest.approx(ref_pwcca(x, y1), abs=1e-6)


@pytest.mark.parametrize("factor", FACTORS)
def test_svcca_invariant_to_a_common_factor_of_a_view(views, factor):
    # The SVD step keeps the directions that carry `keep` of the variance, so rescaling ONE
    # neuron changes which directions those are: SVCCA is not invariant to per-neuron scaling
    # by construction. A common factor of all neurons of a view leaves the variance shares,
    # hence the kept directions and their CCA, unchanged.
    x, y = views
    for keep in (0.9, 0.99, 1.0):
        base = svcca(x, y, keep=keep)
        assert svcca(factor * x, y, keep=keep) == pytest.approx(base, abs=1e-6)
        assert svcca(x, factor * y, keep=keep) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("factor", (1e-5, 1e-2, 1e2, 1e5))
def test_svcca_cca_stage_invariant_to_rescaling_a_singular_direction(views, factor):
    # x given in its own singular basis (orthogonal centred columns, same span as x): rescaling
    # one column rescales one singular direction and keeps the set of directions. With
    # keep=1.0 all of them are kept as long as the smallest share is not lost to float64
    # rounding of the cumulative share (1e-8 squared is 1e-16 of the variance, so that factor
    # is left out), and the CCA stage must then be blind to their scales.
    x, y = views
    q, _ = np.linalg.qr(centred(x))
    basis_view = q * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.2])
    base = svcca(basis_view, y, keep=1.0)
    assert base == pytest.approx(svcca(x, y, keep=1.0), abs=1e-9)
    for column in (0, 5):
        assert svcca(scaled(basis_view, column, factor), y, keep=1.0) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("factor", FACTORS)
def test_rank_deficiency_is_detected_whatever_the_scale(views, factor):
    # a copy of a neuron, a combination of two neurons and a constant neuron, each at any
    # scale, add no direction: the results are those without them
    x, y = views
    padded = np.column_stack([x, factor * x[:, 5], factor * x[:, 0] + 3.0 * x[:, 4], np.full(60, factor)])
    np.testing.assert_allclose(cca(padded, y).numpy(), cca(x, y).numpy(), atol=1e-6, rtol=0)
    assert cca(padded, y).shape == (5,)
    assert pwcca(padded, y) == pytest.approx(pwcca(x, y), abs=1e-6)
    if factor < 1e8:  # at 1e8 x's own directions carry 1e-16 of the variance: keep=1.0 loses them
        assert svcca(padded, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), abs=1e-6)
