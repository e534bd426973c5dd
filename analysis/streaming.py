"""One-pass float64 moments of many layers, and all-pairs similarities computed from them.

``LayerMoments`` sees each chunk of frames once and keeps, for the concatenation
z = [z_1, ..., z_L] of the layers' activations (D = sum of the layer dims):

    count  n
    low, high           [D]     per-dim minimum and maximum, to tell exactly constant neurons
                                (zeroed in every covariance) from rounding noise
    shift  c            [D]     a reference point (the first chunk's mean), so that the sums
                                below are of w = z - c and stay well conditioned in float64
    total  sum w        [D]
    gram   sum w w^T    [D, D]  one GEMM per chunk over all layers: every pair's cross moment
    sq_cross sum q w^T  [L, D]  q_l = |w_l|^2, the squared norm of layer l's part of w
    sq_gram  sum q q^T  [L, L]

Count, shift, total and gram give every covariance, hence linear CKA, CCA, SVCCA and PWCCA of any layer
pair, with ``similarity``'s conventions (the ``epsilon`` ridge on each covariance's diagonal,
and the rank decision made on the standardised covariance, so no neuron is dropped for its
scale). The last two are the fourth-order terms that the debiased (HSIC_1) linear CKA needs
(see ``similarity.linear_hsic1``); they cost an extra L/D of the main GEMM. Re-expressing
the moments about another reference point is exact algebra (``rebased``), which is how
accumulators merge and how debiased CKA is evaluated on centred data, matching the
in-memory functions of ``analysis.similarity`` to rounding.

Two models: accumulate one ``LayerMoments`` over both models' layers (dims_a + dims_b) and
ask for ``rows=range(len(dims_a))``, ``cols=range(len(dims_a), len(dims_a) + len(dims_b))``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from analysis.similarity import (
    canonical_correlations,
    covariance_whitener,
    keep_count,
    linear_hsic1,
    pwcca_whitened_both,
)

__all__ = [
    "LayerMoments",
    "pairwise_cca",
    "pairwise_linear_cka",
    "pairwise_pwcca",
    "pairwise_svcca",
]

_FORMAT_VERSION = 1
_STATS = ("shift", "total", "gram", "sq_cross", "sq_gram")  # shift first; the rest add on merge
_RANGE = ("low", "high")


class LayerMoments:
    """Streaming float64 moments of L layers observed on the same frames.

    Args:
        dims: feature size of each layer, in the order ``update`` receives them.
        device: where the statistics live; None means the device of the first update's
            tensors (a GPU when the activations are on one).
        chunk_frames: updates larger than this are processed in pieces of this many frames,
            bounding the float64 working copy to chunk_frames x D.
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        device: torch.device | str | None = None,
        chunk_frames: int = 16384,
    ):
        dims = tuple(dims)
        if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"Expected dims to be a non-empty sequence of ints >= 1, found {dims}")
        if chunk_frames < 1:
            raise ValueError(f"Expected chunk_frames >= 1, found {chunk_frames}")
        self.dims = dims
        self.chunk_frames = chunk_frames
        bounds = [0]
        for d in dims:
            bounds.append(bounds[-1] + d)
        self.slices = tuple(slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]))
        self.device = torch.device(device) if device is not None else None
        self.count = 0
        self.shift: Tensor | None = None
        self.total: Tensor | None = None
        self.gram: Tensor | None = None
        self.sq_cross: Tensor | None = None
        self.sq_gram: Tensor | None = None
        self.low: Tensor | None = None
        self.high: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.dims)

    @property
    def total_dim(self) -> int:
        return self.slices[-1].stop

    def _allocate(self, shift: Tensor) -> None:
        d, layers = self.total_dim, self.num_layers
        self.device = shift.device
        self.shift = shift
        self.total = shift.new_zeros(d)
        self.gram = shift.new_zeros(d, d)
        self.sq_cross = shift.new_zeros(layers, d)
        self.sq_gram = shift.new_zeros(layers, layers)
        self.low = shift.new_full((d,), float("inf"))
        self.high = shift.new_full((d,), float("-inf"))

    def update(self, layers: Sequence[Tensor]) -> None:
        """Add frames.

        Args:
            layers: one tensor per layer, `[frames, dims[l]]`, all for the same frames.
        """
        if len(layers) != self.num_layers:
            raise ValueError(f"Expected {self.num_layers} layer tensors, found {len(layers)}")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Tensor):
                raise TypeError(f"Expected layer {index} to be a torch.Tensor, found {type(layer).__name__}")
        frames = layers[0].shape[0] if layers[0].ndim == 2 else "frames"
        for index, (layer, dim) in enumerate(zip(layers, self.dims)):
            if layer.ndim != 2 or tuple(layer.shape) != (frames, dim):
                raise ValueError(
                    f"Expected layer {index} of shape [{frames}, {dim}] (same frames as layer 0), "
                    f"found {tuple(layer.shape)}"
                )
        for start in range(0, frames, self.chunk_frames):
            self._update_chunk([layer[start : start + self.chunk_frames] for layer in layers])

    def _update_chunk(self, layers: Sequence[Tensor]) -> None:
        device = self.device if self.device is not None else layers[0].device
        w = torch.empty(layers[0].shape[0], self.total_dim, dtype=torch.float64, device=device)
        for layer, part in zip(layers, self.slices):
            w[:, part].copy_(layer.detach())
        if not bool(torch.isfinite(w).all()):
            counts = [int((~torch.isfinite(w[:, part])).sum()) for part in self.slices]
            raise ValueError(f"Non-finite (NaN/inf) activations: counts per layer {counts}")
        if self.shift is None:
            self._allocate(w.mean(dim=0))
        torch.minimum(self.low, w.amin(dim=0), out=self.low)
        torch.maximum(self.high, w.amax(dim=0), out=self.high)
        w -= self.shift  # [frames, D]
        sq = torch.stack([w[:, part].square().sum(dim=1) for part in self.slices], dim=1)  # [frames, L]
        self.total += w.sum(dim=0)
        self.gram.addmm_(w.T, w)
        self.sq_cross.addmm_(sq.T, w)
        self.sq_gram.addmm_(sq.T, sq)
        self.count += w.shape[0]

    def rebased(self, shift: Tensor) -> LayerMoments:
        """The same moments expressed about another reference point `shift` `[D]` (exact algebra).

        With delta = shift - self.shift, w' = w - delta, q'_l = q_l - 2 delta_l.w_l + |delta_l|^2.
        """
        if self.shift is None:
            raise ValueError("Cannot rebase empty LayerMoments (no frames seen)")
        n = self.count
        delta = shift.to(self.shift) - self.shift  # [D]
        s, m, qz, qq = self.total, self.gram, self.sq_cross, self.sq_gram
        g = torch.zeros_like(qz)  # [L, D]: row l is delta on layer l's block
        for row, part in enumerate(self.slices):
            g[row, part] = delta[part]
        k = g.square().sum(dim=1)  # [L] |delta_l|^2
        sq_sum = torch.stack([m[part, part].diagonal().sum() for part in self.slices])  # [L] sum q
        gs = g @ s  # [L]
        gm = g @ m  # [L, D]
        out = LayerMoments(self.dims, device=self.device, chunk_frames=self.chunk_frames)
        out.count = n
        out.low, out.high = self.low.clone(), self.high.clone()
        out.shift = shift.to(self.shift).clone()
        out.total = s - n * delta
        out.gram = m - torch.outer(s, delta) - torch.outer(delta, s) + n * torch.outer(delta, delta)
        out.sq_cross = (
            qz - torch.outer(sq_sum, delta) - 2.0 * gm + 2.0 * torch.outer(gs, delta)
            + torch.outer(k, s) - n * torch.outer(k, delta)
        )
        qz_g = qz @ g.T  # [L, L]
        out.sq_gram = (
            qq - 2.0 * qz_g - 2.0 * qz_g.T + 4.0 * gm @ g.T
            + torch.outer(sq_sum, k) + torch.outer(k, sq_sum)
            - 2.0 * torch.outer(gs, k) - 2.0 * torch.outer(k, gs) + n * torch.outer(k, k)
        )
        return out

    def merge(self, other: LayerMoments, *, times: int = 1) -> LayerMoments:
        """Add `times` copies of `other` (other workers' or blocks' frames) into self; returns self."""
        if other.dims != self.dims:
            raise ValueError(f"Expected LayerMoments with dims {self.dims}, found {other.dims}")
        if times < 0:
            raise ValueError(f"Expected times >= 0, found {times}")
        if other.count == 0 or times == 0:
            return self
        if self.shift is None:
            device = self.device if self.device is not None else other.device
            self._allocate(other.shift.to(device).clone())
        if not torch.equal(other.shift.to(self.shift), self.shift):
            other = other.rebased(self.shift)
        for name in _STATS[1:]:
            getattr(self, name).add_(getattr(other, name).to(self.shift), alpha=times)
        torch.minimum(self.low, other.low.to(self.low), out=self.low)
        torch.maximum(self.high, other.high.to(self.high), out=self.high)
        self.count += times * other.count
        return self

    def to_dict(self) -> dict[str, Tensor]:
        """Tensors of the state (CPU), loadable with ``from_dict``."""
        if self.shift is None:
            raise ValueError("Cannot serialise empty LayerMoments (no frames seen)")
        state = {name: getattr(self, name).detach().cpu() for name in _STATS + _RANGE}
        state["dims"] = torch.tensor(self.dims, dtype=torch.int64)
        state["count"] = torch.tensor(self.count, dtype=torch.int64)
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Tensor], *, device: torch.device | str | None = None) -> LayerMoments:
        missing = sorted({"dims", "count", *_STATS, *_RANGE} - set(state))
        if missing:
            raise ValueError(f"LayerMoments state is missing {missing}")
        out = cls([int(d) for d in state["dims"].tolist()], device=device)
        target = out.device if out.device is not None else state["shift"].device
        out._allocate(state["shift"].to(target, torch.float64))
        for name in _STATS[1:] + _RANGE:
            getattr(out, name).copy_(state[name])
        out.count = int(state["count"])
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the state as safetensors (written to a temporary file, then renamed)."""
        from safetensors.torch import save_file

        tmp = f"{os.fspath(path)}.tmp"
        save_file(
            {k: v.contiguous() for k, v in self.to_dict().items()},
            tmp,
            metadata={
                "format": "LayerMoments",
                "version": str(_FORMAT_VERSION),
                "dims": json.dumps(self.dims),
            },
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> LayerMoments:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(os.fspath(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != "LayerMoments" or meta.get("version") != str(_FORMAT_VERSION):
            raise ValueError(
                f"Expected a LayerMoments file of version {_FORMAT_VERSION} at {path}, found metadata {meta}"
            )
        return cls.from_dict(load_file(os.fspath(path)), device=device)

    def mean(self, layer: int) -> Tensor:
        """Mean activation of `layer`, `[dims[layer]]`."""
        self._check_layer(layer)
        self._check_frames(1)
        part = self.slices[layer]
        return self.shift[part] + self.total[part] / self.count

    def covariance(self, i: int, j: int) -> Tensor:
        """Sample covariance (1/(n-1)) between layers i and j, `[dims[i], dims[j]]`."""
        self._check_layer(i)
        self._check_layer(j)
        self._check_frames(2)
        pi, pj = self.slices[i], self.slices[j]
        s = self.total
        cov = (self.gram[pi, pj] - torch.outer(s[pi], s[pj]) / self.count) / (self.count - 1)
        varying = self.high > self.low  # [D]; constant neurons get exact zeros
        return cov * (varying[pi, None] & varying[None, pj])

    def constant_layers(self) -> list[int]:
        """Layers whose every neuron is exactly constant over the frames seen."""
        varying = self.high > self.low
        return [l for l, part in enumerate(self.slices) if not bool(varying[part].any())]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"Expected a layer index in [0, {self.num_layers}), found {layer}")

    def _check_frames(self, minimum: int) -> None:
        if self.count < minimum:
            raise ValueError(f"Expected LayerMoments over at least {minimum} frames, found {self.count}")


def _indices(
    m: LayerMoments, rows: Sequence[int] | None, cols: Sequence[int] | None, what: str
) -> tuple[list[int], list[int]]:
    """Validated row and column layer indices (all layers by default); constant layers raise."""
    rows = list(range(m.num_layers)) if rows is None else [int(r) for r in rows]
    cols = list(range(m.num_layers)) if cols is None else [int(c) for c in cols]
    for layer in rows + cols:
        m._check_layer(layer)
    m._check_frames(2)
    constant = sorted(set(m.constant_layers()) & set(rows + cols))
    if constant:
        raise ValueError(f"{what} is undefined for layers {constant}: constant over all frames")
    return rows, cols


def pairwise_linear_cka(
    m: LayerMoments,
    rows: Sequence[int] | None = None,
    cols: Sequence[int] | None = None,
    *,
    debiased: bool = False,
) -> Tensor:
    """Linear CKA between layers `rows` and layers `cols` (all layers by default).

    Debiased CKA is exact: the moments are rebased on the mean (centred data, as
    ``similarity.linear_cka``) and fed to ``similarity.linear_hsic1``.

    Returns:
        float64 tensor `[len(rows), len(cols)]`.
    """
    rows, cols = _indices(m, rows, cols, "CKA")
    m._check_frames(4 if debiased else 2)
    layers = sorted(set(rows + cols))
    if debiased:
        c = m.rebased(m.shift + m.total / m.count)  # moments of the centred data
        sq_sums = {l: c.gram[c.slices[l], c.slices[l]].diagonal().sum() for l in layers}

    def hsic(i: int, j: int) -> Tensor:
        if not debiased:
            return m.covariance(i, j).square().sum()  # ||X^T Y||_F^2 / (n-1)^2
        pi, pj = c.slices[i], c.slices[j]
        return linear_hsic1(
            c.count, c.gram[pi, pj], c.total[pi], c.total[pj],
            c.sq_cross[i, pj], c.sq_cross[j, pi], c.sq_gram[i, j], sq_sums[i], sq_sums[j],
        )

    # biased: ||C_ij||^2 / (||C_ii|| ||C_jj||) with selves holding the squared norms
    selves = {l: hsic(l, l) for l in layers}
    for l, value in selves.items():
        if not float(value) > 0.0:
            raise ValueError(f"CKA is undefined for layer {l}: self term {float(value):.3g}, expected > 0")
    out = torch.empty(len(rows), len(cols), dtype=torch.float64, device=m.device)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            out[a, b] = hsic(i, j) / (selves[i] * selves[j]).sqrt()
    return out


def pairwise_cca(m: LayerMoments, i: int, j: int, *, epsilon: float = 0.0) -> Tensor:
    """Canonical correlations `[min(rank_i, rank_j)]` of layers i and j (as ``similarity.cca``)."""
    if not epsilon >= 0.0:
        raise ValueError(f"Expected epsilon >= 0, found {epsilon}")
    return canonical_correlations(m.covariance(i, i), m.covariance(i, j), m.covariance(j, j), epsilon)


def pairwise_svcca(
    m: LayerMoments,
    rows: Sequence[int] | None = None,
    cols: Sequence[int] | None = None,
    *,
    keep: float = 0.99,
    epsilon: float = 0.0,
) -> Tensor:
    """SVCCA between layers `rows` and `cols` (as ``similarity.svcca``), `[len(rows), len(cols)]`.

    The singular directions of a centred view are the eigenvectors of its covariance, and its
    squared singular values (n-1) times the eigenvalues, so no activations are needed.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"Expected keep in (0, 1], found {keep}")
    if not epsilon >= 0.0:
        raise ValueError(f"Expected epsilon >= 0, found {epsilon}")
    rows, cols = _indices(m, rows, cols, "SVCCA")
    projections = {}  # layer -> [d, r]: top-k eigenvectors, then whitening of the reduced view
    for l in sorted(set(rows + cols)):
        cov = m.covariance(l, l)
        evals, evecs = torch.linalg.eigh(cov)
        basis = evecs.flip(1)[:, : keep_count(evals.flip(0), keep)]  # [d, k]
        whitener = covariance_whitener(basis.T @ cov @ basis, epsilon)
        if whitener.shape[1] == 0:
            raise ValueError(f"SVCCA is undefined for layer {l}: it is constant over frames")
        projections[l] = basis @ whitener
    out = torch.empty(len(rows), len(cols), dtype=torch.float64, device=m.device)
    done: dict[tuple[int, int], Tensor] = {}  # SVCCA is symmetric: each unordered pair is computed once
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            key = (min(i, j), max(i, j))
            if key not in done:
                product = projections[i].T @ m.covariance(i, j) @ projections[j]
                done[key] = torch.linalg.svdvals(product).clamp(0.0, 1.0).mean()
            out[a, b] = done[key]
    return out


def pairwise_pwcca(
    m: LayerMoments,
    rows: Sequence[int] | None = None,
    cols: Sequence[int] | None = None,
    *,
    epsilon: float = 0.0,
) -> Tensor:
    """PWCCA between layers `rows` and `cols` (as ``similarity.pwcca``), `[len(rows), len(cols)]`.

    Weights come from the layer with fewer neurons (the row layer when equal), so the
    all-layers matrix is not symmetric.
    """
    if not epsilon >= 0.0:
        raise ValueError(f"Expected epsilon >= 0, found {epsilon}")
    rows, cols = _indices(m, rows, cols, "PWCCA")
    covs, whiteners = {}, {}
    for l in sorted(set(rows + cols)):
        covs[l] = m.covariance(l, l)
        whiteners[l] = covariance_whitener(covs[l], epsilon)
        if whiteners[l].shape[1] == 0:
            raise ValueError(f"PWCCA is undefined for layer {l}: it is constant over frames")
    out = torch.empty(len(rows), len(cols), dtype=torch.float64, device=m.device)
    pairs: dict[tuple[int, int], tuple[float, float]] = {}  # (i, j), i <= j -> (weighted from i, from j)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            x, y = (j, i) if m.dims[j] < m.dims[i] else (i, j)  # x: the view with fewer neurons
            key = (min(x, y), max(x, y))
            if key not in pairs:  # one SVD serves both directions: (W_y^T C_yx W_x) = (W_x^T C_xy W_y)^T
                p, q = key
                pairs[key] = pwcca_whitened_both(covs[p], covs[q], m.covariance(p, q), whiteners[p], whiteners[q])
            out[a, b] = pairs[key][0 if x == key[0] else 1]
    return out
