"""Representation similarity of two sets of activations over the same frames.

Every function takes two activation matrices ``x`` and ``y`` of shapes ``[frames, dx]`` and
``[frames, dy]`` (torch tensors or NumPy arrays; row t of both is the same frame), computes in
float64 on the tensors' device, and returns a similarity in [0, 1] (``cca`` returns the vector
of canonical correlations).

Conventions (docs/design.md §7):

- Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited"): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred X, Y.
- Debiased CKA replaces each HSIC by the unbiased estimator HSIC_1 of Song et al. 2012
  ("Feature Selection via Dependence Maximization"), computed on kernels with a zeroed
  diagonal:
      HSIC_1(K, L) = [tr(K L) + (1^T K 1)(1^T L 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1]
                     / (n (n-3)).
  It is unbiased, not bounded: for unrelated representations it can be slightly below 0,
  and it is returned unclipped.
- RBF CKA: K_ij = exp(-d_ij^2 / (2 t^2 m)), m the median of the squared distances over the
  full n x n matrix (zeros of the diagonal included), t = ``threshold``.
- CCA: centre; Sxx, Syy, Sxy with 1/(n-1); add ``epsilon`` * I to Sxx and Syy (the ridge is
  in the neurons' own units, so with ``epsilon`` > 0 the correlations depend on each neuron's
  scale, as any ridge does); canonical correlations are the singular values of
  Sxx^-1/2 Sxy Syy^-1/2, descending. Rank-deficient covariances (constant neurons, collinear
  neurons, fewer frames than neurons) are handled by whitening only the retained
  eigendirections: each neuron is first divided by its standard deviation (a diagonal map,
  which leaves canonical correlations unchanged), neurons of zero variance are dropped (a
  neuron exactly constant over frames is centred to exact zeros), and the eigendirections of
  the standardised, ridged covariance D^-1 (Sxx + epsilon I) D^-1 (D = diag of the standard
  deviations; the correlation matrix when epsilon = 0) at or below 1e-10 of its largest
  eigenvalue are dropped. So rank deficiency is decided on correlations, never on a neuron's
  scale: with epsilon = 0 the result is invariant to any invertible map of either view,
  per-neuron scaling by any factor included, and it is the CCA of the subspaces the data
  actually span, with min(rank_x, rank_y) correlations. A view that is constant over frames
  raises ``ValueError``. With fewer frames than rank_x + rank_y + 1 the correlations are
  trivially 1: pass ``epsilon`` > 0 or use SVCCA there.
- SVCCA (Raghu et al. 2017): keep the smallest k top singular directions of each centred
  view whose squared singular values reach ``keep`` of the total; mean CCA correlation.
- PWCCA (Morcos et al. 2018): weights alpha_i = sum_j |<h_i, z_j>| over the view with fewer
  neurons (x when equal), h_i = Xc a_i its canonical variates and z_j its centred neurons;
  similarity = sum_i alpha_i rho_i / sum_i alpha_i. Since <h_i, z_j> = (n-1) (a_i^T Sxx)_j,
  the weights come from covariances alone (which lets streaming.py compute them too).
  PWCCA is invariant to per-neuron offsets, neuron permutations and sign flips, isotropic
  scaling, and invertible maps of the larger view; NOT to general linear maps of the
  smaller view, whose neuron basis defines the weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_activations",
    "canonical_correlations",
    "cca",
    "covariance_whitener",
    "keep_count",
    "linear_cka",
    "linear_hsic1",
    "minibatch_cka",
    "pwcca",
    "pwcca_from_covariances",
    "pwcca_whitened",
    "pwcca_whitened_both",
    "rbf_cka",
    "svcca",
]

# Eigenvalues of a standardised (ridged) covariance at or below this fraction of the largest
# are treated as zero: float64 eigendecomposition leaves about 1e-16 * lambda_max of noise on
# a truly zero eigenvalue, and whitening it would amplify that noise into a spurious correlation.
_RANK_RTOL = 1e-10


def as_activations(x: Tensor | np.ndarray, name: str = "x") -> Tensor:
    """Validate an activation matrix and return it as a float64 tensor on its device.

    Args:
        x: activations `[frames, dims]` (torch tensor or NumPy array).
        name: argument name used in error messages.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    elif not isinstance(x, Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor or numpy.ndarray, found {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"Expected {name} of shape [frames, dims], found shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"Expected {name} with at least 2 frames, found {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"Expected {name} with at least 1 dim, found shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN/inf values out of {x.numel()}")
    return x


def _pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    x, y = as_activations(x, "x"), as_activations(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"Expected x and y with the same number of frames, found {x.shape[0]} and {y.shape[0]}"
        )
    return x, y.to(x.device)


def _centre(x: Tensor) -> Tensor:
    """Subtract column means; columns constant over frames become exactly 0 (not rounding noise)."""
    constant = (x == x[:1]).all(dim=0)
    return torch.where(constant, 0.0, x - x.mean(dim=0, keepdim=True))


def _ratio(numerator: Tensor | float, hxx: Tensor | float, hyy: Tensor | float, what: str) -> float:
    """numerator / sqrt(hxx * hyy): CKA from HSIC-like terms (squared norms when biased)."""
    hxx, hyy = float(hxx), float(hyy)
    if not (hxx > 0.0 and hyy > 0.0):
        raise ValueError(
            f"{what} is undefined: self-similarity terms must be > 0, found {hxx:.3g} (x) and "
            f"{hyy:.3g} (y); a view that is constant over frames (or too few frames) has none"
        )
    return float(numerator) / (hxx * hyy) ** 0.5


# ----------------------------------------------------------------------------- CKA


def _hsic1_gram(k: Tensor, l: Tensor) -> Tensor:
    """HSIC_1 of two `[n, n]` kernel matrices (diagonals are ignored)."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0.0)
    l = l.clone().fill_diagonal_(0.0)
    trace_kl = (k * l).sum()
    one_k_l_one = k.sum(dim=1) @ l.sum(dim=1)
    return (trace_kl + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * one_k_l_one / (n - 2)) / (
        n * (n - 3)
    )


def linear_hsic1(
    n: int,
    cross: Tensor,
    sum_x: Tensor,
    sum_y: Tensor,
    sq_x_times_y: Tensor,
    sq_y_times_x: Tensor,
    sq_x_times_sq_y: Tensor,
    sq_sum_x: Tensor,
    sq_sum_y: Tensor,
) -> Tensor:
    """HSIC_1 of linear kernels K = X X^T, L = Y Y^T from feature-space moments (no n x n matrix).

    With q_i = |x_i|^2 and r_i = |y_i|^2 (rows x_i, y_i), zeroing the diagonals gives
    tr(K L) = ||X^T Y||_F^2 - sum q_i r_i, 1^T K 1 = |sum x_i|^2 - sum q_i and
    1^T K L 1 = sum_i (x_i . s_x - q_i)(y_i . s_y - r_i), expanded below.

    Args:
        n: number of frames (>= 4).
        cross: X^T Y `[dx, dy]`.
        sum_x, sum_y: column sums `[dx]`, `[dy]`.
        sq_x_times_y: sum_i q_i y_i `[dy]`.
        sq_y_times_x: sum_i r_i x_i `[dx]`.
        sq_x_times_sq_y: sum_i q_i r_i (scalar tensor).
        sq_sum_x, sq_sum_y: sum_i q_i and sum_i r_i (scalar tensors).
    """
    trace_kl = cross.square().sum() - sq_x_times_sq_y
    sum_k = sum_x @ sum_x - sq_sum_x
    sum_l = sum_y @ sum_y - sq_sum_y
    one_k_l_one = (
        sum_x @ cross @ sum_y - sq_x_times_y @ sum_y - sq_y_times_x @ sum_x + sq_x_times_sq_y
    )
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * one_k_l_one / (n - 2)) / (
        n * (n - 3)
    )


def _linear_hsic1_data(x: Tensor, y: Tensor) -> Tensor:
    """HSIC_1 of linear kernels of `[n, dx]` and `[n, dy]`, by the cheaper of the two forms."""
    n = x.shape[0]
    if n * n < x.shape[1] * y.shape[1]:
        return _hsic1_gram(x @ x.T, y @ y.T)
    q, r = x.square().sum(dim=1), y.square().sum(dim=1)
    return linear_hsic1(n, x.T @ y, x.sum(0), y.sum(0), q @ y, r @ x, q @ r, q.sum(), r.sum())


def _check_debiased_frames(n: int) -> None:
    if n < 4:
        raise ValueError(f"Expected at least 4 frames for the debiased (HSIC_1) estimator, found {n}")


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, debiased: bool = False) -> float:
    """Linear CKA of `x` `[frames, dx]` and `y` `[frames, dy]`.

    With ``debiased=True`` each HSIC is the unbiased HSIC_1 (needs >= 4 frames; unclipped).
    """
    x, y = _pair(x, y)
    x, y = _centre(x), _centre(y)
    if debiased:
        _check_debiased_frames(x.shape[0])
        hxy, hxx, hyy = _linear_hsic1_data(x, y), _linear_hsic1_data(x, x), _linear_hsic1_data(y, y)
        return _ratio(hxy, hxx, hyy, "debiased linear CKA")
    n = x.shape[0]
    if n * n < x.shape[1] * y.shape[1]:
        k, l = x @ x.T, y @ y.T  # [n, n] Gram matrices: cheaper when frames < dims
        return _ratio((k * l).sum(), k.square().sum(), l.square().sum(), "linear CKA")
    return _ratio(
        (y.T @ x).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum(), "linear CKA"
    )


def _median(values: Tensor) -> Tensor:
    """Median of all entries, averaging the two middle ones for an even count (as NumPy)."""
    flat = values.reshape(-1)
    size = flat.numel()
    upper = torch.kthvalue(flat, size // 2 + 1).values
    if size % 2:
        return upper
    return 0.5 * (upper + torch.kthvalue(flat, size // 2).values)


def _rbf_kernel(x: Tensor, threshold: float, name: str) -> Tensor:
    sq_norms = x.square().sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)  # [n, n]
    median = float(_median(sq_dist))
    if not median > 0.0:
        raise ValueError(
            f"RBF CKA is undefined: the median squared distance between frames of {name} is 0 "
            "(at least half of the frame pairs are identical)"
        )
    return torch.exp(-sq_dist / (2.0 * threshold**2 * median))


def rbf_cka(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    debiased: bool = False,
) -> float:
    """RBF-kernel CKA of `x` `[frames, dx]` and `y` `[frames, dy]`.

    Builds two `[frames, frames]` kernels, so memory grows with frames^2: use it on a
    subsample (a few thousand frames).
    """
    if not threshold > 0.0:
        raise ValueError(f"Expected threshold > 0, found {threshold}")
    x, y = _pair(x, y)
    x, y = _centre(x), _centre(y)  # distances are unchanged; the Gram matrix is better conditioned
    k, l = _rbf_kernel(x, threshold, "x"), _rbf_kernel(y, threshold, "y")
    if debiased:
        _check_debiased_frames(x.shape[0])
        return _ratio(_hsic1_gram(k, l), _hsic1_gram(k, k), _hsic1_gram(l, l), "debiased RBF CKA")
    k = _centre(_centre(k).T)  # H K H
    l = _centre(_centre(l).T)
    return _ratio((k * l).sum(), k.square().sum(), l.square().sum(), "RBF CKA")


def minibatch_cka(pairs: Iterable[tuple[Tensor | np.ndarray, Tensor | np.ndarray]]) -> float:
    """Minibatch linear CKA (Nguyen et al. 2021, "Do Wide and Deep Networks Learn the Same Things?").

    mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) * mean_b HSIC_1(L_b, L_b)) with
    linear kernels of each minibatch.

    Args:
        pairs: iterable of (x_batch `[frames_b, dx]`, y_batch `[frames_b, dy]`), frames_b >= 4.
    """
    totals = torch.zeros(3, dtype=torch.float64)
    batches = 0
    for index, (x, y) in enumerate(pairs):
        x, y = _pair(x, y)
        if x.shape[0] < 4:
            raise ValueError(f"Expected at least 4 frames in minibatch {index}, found {x.shape[0]}")
        x, y = _centre(x), _centre(y)  # HSIC_1 is invariant to offsets; centring helps rounding
        terms = (_linear_hsic1_data(x, y), _linear_hsic1_data(x, x), _linear_hsic1_data(y, y))
        totals += torch.stack(terms).cpu()
        batches += 1
    if batches == 0:
        raise ValueError("Expected at least one (x_batch, y_batch) pair, found none")
    hxy, hxx, hyy = (totals / batches).tolist()
    return _ratio(hxy, hxx, hyy, "minibatch CKA")


# ----------------------------------------------------------------------------- CCA family


def covariance_whitener(cov: Tensor, epsilon: float) -> Tensor:
    """`[d, r]` matrix W with W^T (cov + epsilon I) W = I over the retained directions.

    W = D^-1 V_r Lambda_r^-1/2, where D = diag of the standard deviations of the neurons of
    non-zero variance and V_r, Lambda_r are the eigenpairs of D^-1 (cov + epsilon I) D^-1
    (the correlation matrix when epsilon = 0) whose eigenvalue exceeds 1e-10 of the
    largest. When nothing is dropped it is (cov + epsilon I)^-1/2 up to a rotation, which
    leaves canonical correlations unchanged. Neurons of zero variance get zero rows; r = 0
    when the view is constant.

    Standardising first makes the rank decision blind to per-neuron scale: an informative
    neuron of tiny variance is kept, while a neuron that duplicates others (a linear
    combination of them, at any scale) still gives a (numerically) zero eigenvalue.

    Args:
        cov: symmetric covariance `[d, d]`; a constant neuron's row and column are exact zeros.
        epsilon: ridge added to the covariance's diagonal, in the neurons' units (>= 0).
    """
    d = cov.shape[0]
    variance = cov.diagonal()
    varying = variance > 0.0  # [d]; constant neurons (exact zero variance) are rank deficiency
    if not bool(varying.any()):
        return cov.new_zeros(d, 0)
    inv_std = variance[varying].rsqrt()  # [d'] 1 / standard deviation
    scaled = cov[varying][:, varying] * inv_std[:, None] * inv_std[None, :]  # [d', d'] correlations
    if epsilon:
        scaled = scaled + torch.diag(epsilon * inv_std.square())  # D^-1 (epsilon I) D^-1
    evals, evecs = torch.linalg.eigh(scaled)
    kept = evals > _RANK_RTOL * evals[-1].clamp_min(0.0)
    out = cov.new_zeros(d, int(kept.sum()))
    out[varying] = evecs[:, kept] / evals[kept].sqrt() * inv_std[:, None]
    return out


def _check_epsilon(epsilon: float) -> None:
    if not epsilon >= 0.0:
        raise ValueError(f"Expected epsilon >= 0, found {epsilon}")


def _whiten_pair(sxx: Tensor, syy: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    wx, wy = covariance_whitener(sxx, epsilon), covariance_whitener(syy, epsilon)
    for name, w in (("x", wx), ("y", wy)):
        if w.shape[1] == 0:
            raise ValueError(f"CCA is undefined: {name} is constant over frames (zero covariance)")
    return wx, wy


def canonical_correlations(sxx: Tensor, sxy: Tensor, syy: Tensor, epsilon: float) -> Tensor:
    """Canonical correlations (descending) from covariances `[dx, dx]`, `[dx, dy]`, `[dy, dy]`."""
    wx, wy = _whiten_pair(sxx, syy, epsilon)
    return torch.linalg.svdvals(wx.T @ sxy @ wy).clamp(0.0, 1.0)


def pwcca_from_covariances(sxx: Tensor, sxy: Tensor, syy: Tensor, epsilon: float) -> float:
    """PWCCA from covariances; alpha is taken over x, so pass the view with fewer neurons as x."""
    return pwcca_whitened(sxx, sxy, *_whiten_pair(sxx, syy, epsilon))


def pwcca_whitened(sxx: Tensor, sxy: Tensor, wx: Tensor, wy: Tensor) -> float:
    """PWCCA from Sxx `[dx, dx]`, Sxy `[dx, dy]` and the views' whiteners `[dx, rx]`, `[dy, ry]`."""
    u, rho, _ = torch.linalg.svd(wx.T @ sxy @ wy, full_matrices=False)
    directions = wx @ u  # [dx, k] canonical directions a_i of x
    alpha = (directions.T @ sxx).abs().sum(dim=1)  # [k] sum_j |<h_i, z_j>| / (n - 1)
    return float((alpha * rho.clamp(0.0, 1.0)).sum() / alpha.sum())


def pwcca_whitened_both(sxx: Tensor, syy: Tensor, sxy: Tensor, wx: Tensor, wy: Tensor) -> tuple[float, float]:
    """PWCCA weighted from x and weighted from y, from one SVD of the whitened cross-covariance.

    The SVD of W_y^T S_yx W_x is the transpose of that of W_x^T S_xy W_y, so the canonical
    directions of both views and the shared correlations come from one decomposition.
    """
    u, rho, vh = torch.linalg.svd(wx.T @ sxy @ wy, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    out = []
    for directions, cov in ((wx @ u, sxx), (wy @ vh.T, syy)):
        alpha = (directions.T @ cov).abs().sum(dim=1)
        out.append(float((alpha * rho).sum() / alpha.sum()))
    return out[0], out[1]


def keep_count(energy: Tensor, keep: float) -> int:
    """Smallest k whose top-k share of `energy` (descending, `[d]`) reaches `keep`."""
    cumulative = energy.clamp_min(0.0).cumsum(dim=0)
    if not cumulative[-1] > 0.0:
        raise ValueError("SVCCA is undefined: a view is constant over frames (no variance to keep)")
    share = (cumulative / cumulative[-1]).tolist()
    return next(k for k, value in enumerate(share, start=1) if value >= keep or k == len(share))


def _check_keep(keep: float) -> None:
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"Expected keep in (0, 1], found {keep}")


def _covariances(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sample covariances of centred `[n, dx]`, `[n, dy]`."""
    scale = 1.0 / (x.shape[0] - 1)
    return x.T @ x * scale, x.T @ y * scale, y.T @ y * scale


def cca(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, epsilon: float = 0.0) -> Tensor:
    """Canonical correlations of `x` `[frames, dx]` and `y` `[frames, dy]`.

    Returns:
        float64 tensor `[min(rank_x, rank_y)]`, descending, in [0, 1].
    """
    _check_epsilon(epsilon)
    x, y = _pair(x, y)
    return canonical_correlations(*_covariances(_centre(x), _centre(y)), epsilon)


def _svd_basis(x: Tensor, keep: float) -> Tensor:
    """Top-k right singular vectors `[d, k]` of centred `x` `[n, d]`."""
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[: keep_count(singular.square(), keep)].T


def svcca(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, keep: float = 0.99, epsilon: float = 0.0
) -> float:
    """SVCCA: mean canonical correlation of the top singular directions of `x`, `y` `[frames, d]`."""
    _check_keep(keep)
    _check_epsilon(epsilon)
    x, y = _pair(x, y)
    x, y = _centre(x), _centre(y)
    xk, yk = x @ _svd_basis(x, keep), y @ _svd_basis(y, keep)  # [n, kx], [n, ky]
    return float(canonical_correlations(*_covariances(xk, yk), epsilon).mean())


def pwcca(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, epsilon: float = 0.0) -> float:
    """Projection-weighted CCA of `x` `[frames, dx]` and `y` `[frames, dy]`.

    Weights come from the view with fewer neurons (x when dx == dy), so pwcca(x, y) and
    pwcca(y, x) can differ when dx == dy.
    """
    _check_epsilon(epsilon)
    x, y = _pair(x, y)
    sxx, sxy, syy = _covariances(_centre(x), _centre(y))
    if y.shape[1] < x.shape[1]:
        return pwcca_from_covariances(syy, sxy.T, sxx, epsilon)
    return pwcca_from_covariances(sxx, sxy, syy, epsilon)
