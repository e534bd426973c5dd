"""Held-out CCA between a layer's activations and external features.

Following Pasad et al. (2021, "Layer-wise Analysis of a Self-supervised Speech
Representation Model"; 2023, "Comparative Layer-wise Analysis of Self-supervised Speech
Models"): fit CCA projections on training data, project held-out data, and report the mean
correlation of the projected pairs. Features: log-mel FBANK frames, one-hot phone, word or
speaker labels per frame, and segment-level views (the mean of a layer's frames within each
phone or word segment against the segment's one-hot label).

Conventions:
- Folds are groups of whole utterances (never frames of one utterance in two folds),
  assigned by a seeded shuffle, round-robin.
- Fitting is ``similarity.cca``'s: centred, 1/(n-1) covariances, ``epsilon`` ridge on both
  (added to the diagonal, in the activations' units), rank-deficient directions dropped after
  standardising each neuron (so the rank decision does not depend on any neuron's scale; see
  ``similarity.covariance_whitener``). The top ``max_dims`` canonical pairs (by training
  correlation) are kept.
- Held-out score of a fold: the mean over kept pairs of the Pearson correlation of the
  projected held-out views (computed from the fold's own moments, so nothing is stored per
  frame); a projection that is constant on the held-out fold counts as 0. Correlations are
  not clipped: a fit that does not generalise can score below 0.
- Intervals (``cca_curve_intervals``): each fold's fitted directions project its own held-out
  utterances, and the per-utterance sums of the projections are kept (``HeldoutProjections``); a
  bootstrap replicate resamples the utterances within each fold and recomputes the fold scores
  from those sums, with the fitted directions held fixed.
- One-hot labels drop the last class's column: after centring, a full one-hot block has
  rank K-1 (its columns sum to 1), and dropping a column leaves the same span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from analysis.config import CONFIG, parse_config, to_plain, with_config
from analysis.similarity import covariance_whitener
from analysis.streaming import LayerMoments

__all__ = [
    "FeatureCCAConfig",
    "FeatureCCAResult",
    "HeldoutProjections",
    "cca_curve_intervals",
    "heldout_cca",
    "label_cca",
    "one_hot",
    "segment_cca",
    "segment_means",
    "speaker_cca",
    "utterance_folds",
]


@dataclass(frozen=True)
@with_config(CONFIG)
class FeatureCCAConfig:
    """Options of the held-out CCA; read from a mapping by ``from_dict`` (:func:`analysis.config.parse_config`)."""

    n_folds: int = 5  # utterance-grouped folds; each is held out once
    epsilon: float = 0.0  # ridge added to both training covariances' diagonals (covariance units)
    max_dims: int | None = None  # keep at most this many canonical pairs; None: all
    seed: int = 0  # seed of the utterance shuffle that forms the folds
    version: int = 1  # format version of this config

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ValueError(f"FeatureCCAConfig.n_folds: expected at least 2, found {self.n_folds}")
        if not self.epsilon >= 0.0:
            raise ValueError(f"FeatureCCAConfig.epsilon: expected at least 0, found {self.epsilon}")
        if self.max_dims is not None and self.max_dims < 1:
            raise ValueError(f"FeatureCCAConfig.max_dims: expected at least 1 or null, found {self.max_dims}")
        if self.version != 1:
            raise ValueError(f"FeatureCCAConfig.version: expected 1, found {self.version}")

    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None) -> FeatureCCAConfig:
        """The config written by :meth:`to_dict`, read by :func:`analysis.config.parse_config` (``where``
        names it in errors; default ``FeatureCCAConfig``)."""
        return parse_config(cls, data, where)


@dataclass(frozen=True)
class HeldoutProjections:
    """Per utterance, sums over its frames of the two projected views, each utterance projected by
    the directions fitted without its fold and centred at its fold's means (numerical headroom
    only: a correlation does not depend on the centre).

    sums: `[utts, 5, k]` float64, rows (x, y, x^2, y^2, x y) summed over the utterance's frames, one
    column per canonical pair (columns past its fold's ``pairs`` are 0); frames: `[utts]`; folds:
    `[utts]` fold of each utterance; pairs: `[n_folds]` canonical pairs kept by each fold.
    """

    sums: np.ndarray
    frames: np.ndarray
    folds: np.ndarray
    pairs: np.ndarray

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """Held-out scores for utterance weights `[R, utts]` (how often each utterance counts) -> `[R]`.

        As ``heldout_cca``: per fold, the mean over its kept pairs of the Pearson correlation of the
        weighted projected frames (0 where a projection is constant), then the mean over folds. All
        ones give the score of the data.
        """
        return _fold_scores(self.sums[:, None], self.frames, self.folds, self.pairs[None], weights)[:, 0]


def _fold_scores(sums: np.ndarray, frames: np.ndarray, folds: np.ndarray, pairs: np.ndarray,
                 weights: np.ndarray) -> np.ndarray:
    """Held-out scores of several layers at once: sums `[utts, L, 5, k]`, frames `[utts]`, folds
    `[utts]`, pairs `[L, n_folds]`, weights `[R, utts]` -> `[R, L]`."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    utts, layers, _, k = sums.shape
    flat = sums.reshape(utts, layers * 5 * k)
    columns = np.arange(k)
    out = np.zeros((weights.shape[0], layers))
    for fold in range(pairs.shape[1]):
        w = weights * (folds == fold)  # [R, utts]
        n = (w @ frames)[:, None, None]  # [R, 1, 1] frames
        sx, sy, sxx, syy, sxy = np.moveaxis((w @ flat).reshape(-1, layers, 5, k), 2, 0)  # each [R, L, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = sxy - sx * sy / n
            denom = np.sqrt(np.clip(sxx - sx * sx / n, 0.0, None) * np.clip(syy - sy * sy / n, 0.0, None))
            corr = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), 0.0)  # constant projection: 0
        kept = columns[None, :] < pairs[:, fold, None]  # [L, k] the pairs this fold kept
        out += (corr * kept).sum(-1) / pairs[:, fold]
    return out / pairs.shape[1]


@dataclass(frozen=True)
class FeatureCCAResult:
    """score: mean of fold_scores; n_dims: canonical pairs kept (smallest over folds);
    heldout: per-utterance sums of the projected held-out views, for ``cca_curve_intervals``."""

    score: float
    fold_scores: tuple[float, ...]
    n_dims: int
    heldout: HeldoutProjections | None = field(default=None, repr=False, compare=False)


def utterance_folds(num_utterances: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index `[num_utterances]` of every utterance (seeded shuffle, then round-robin)."""
    if num_utterances < n_folds:
        raise ValueError(f"Expected at least n_folds={n_folds} utterances, found {num_utterances}")
    folds = np.empty(num_utterances, dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(num_utterances)] = np.arange(num_utterances) % n_folds
    return folds


def heldout_cca(
    x_utts: Sequence[Tensor], y_utts: Sequence[Tensor], config: FeatureCCAConfig = FeatureCCAConfig()
) -> FeatureCCAResult:
    """Held-out CCA of two views given per utterance.

    Args:
        x_utts: per-utterance layer activations `[frames_u, dx]`.
        y_utts: per-utterance features `[frames_u, dy]` on the same frames (e.g. FBANK at the
            layer's frame rate, or one-hot labels).
        config: folds, ridge and number of kept pairs.
    """
    if len(x_utts) != len(y_utts):
        raise ValueError(f"Expected as many x as y utterances, found {len(x_utts)} and {len(y_utts)}")
    dims = None
    for u, (x, y) in enumerate(zip(x_utts, y_utts)):
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected utterance {u} as [frames, dx] and [frames, dy] with equal frames, "
                f"found {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if dims is not None and (x.shape[1], y.shape[1]) != dims:
            raise ValueError(f"Expected utterance {u} with dims {dims}, found {(x.shape[1], y.shape[1])}")
        dims = (x.shape[1], y.shape[1])
    folds = utterance_folds(len(x_utts), config.n_folds, config.seed)
    per_fold = [LayerMoments(dims) for _ in range(config.n_folds)]
    for x, y, fold in zip(x_utts, y_utts, folds):
        if x.shape[0]:
            per_fold[fold].update([x, y])
    for fold, moments in enumerate(per_fold):
        if moments.count < 2:
            raise ValueError(f"Expected at least 2 frames in fold {fold}, found {moments.count}")
    scores, kept, directions = [], [], []
    for fold in range(config.n_folds):
        train = LayerMoments(dims)
        for other in range(config.n_folds):
            if other != fold:
                train.merge(per_fold[other])
        a, b = _fit(train, config)
        scores.append(_heldout_score(per_fold[fold], a, b))
        kept.append(a.shape[1])
        directions.append((a, b))
    width = max(kept)
    sums = np.zeros((len(x_utts), 5, width))
    for u, (x, y, fold) in enumerate(zip(x_utts, y_utts, folds)):
        if x.shape[0]:
            a, b = directions[fold]
            px = (x.to(a) - per_fold[fold].mean(0).to(a)) @ a  # [frames_u, k_fold]
            py = (y.to(b) - per_fold[fold].mean(1).to(b)) @ b
            moments = torch.stack([px.sum(0), py.sum(0), (px * px).sum(0), (py * py).sum(0), (px * py).sum(0)])
            sums[u, :, : a.shape[1]] = moments.cpu().numpy()
    frames = np.array([x.shape[0] for x in x_utts], dtype=np.float64)
    heldout = HeldoutProjections(sums, frames, folds, np.array(kept))
    return FeatureCCAResult(float(np.mean(scores)), tuple(scores), min(kept), heldout)


def _fit(train: LayerMoments, config: FeatureCCAConfig) -> tuple[Tensor, Tensor]:
    """Canonical directions `[dx, k]`, `[dy, k]` fitted on the training moments."""
    wx = covariance_whitener(train.covariance(0, 0), config.epsilon)
    wy = covariance_whitener(train.covariance(1, 1), config.epsilon)
    if wx.shape[1] == 0 or wy.shape[1] == 0:
        raise ValueError("Held-out CCA is undefined: a view is constant over the training frames")
    u, _, vh = torch.linalg.svd(wx.T @ train.covariance(0, 1) @ wy, full_matrices=False)
    k = u.shape[1] if config.max_dims is None else min(config.max_dims, u.shape[1])
    return wx @ u[:, :k], wy @ vh[:k].T


def _heldout_score(test: LayerMoments, a: Tensor, b: Tensor) -> float:
    """Mean Pearson correlation of the projected held-out views, from the fold's moments."""
    cross = (a * (test.covariance(0, 1) @ b)).sum(dim=0)  # [k] cov(x a_i, y b_i)
    var_x = (a * (test.covariance(0, 0) @ a)).sum(dim=0)
    var_y = (b * (test.covariance(1, 1) @ b)).sum(dim=0)
    denom = (var_x * var_y).sqrt()
    corr = torch.where(denom > 0, cross / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)
    return float(corr.mean())


def one_hot(labels: Tensor, num_classes: int, *, drop_last: bool = True) -> Tensor:
    """One-hot float64 rows `[n, num_classes - 1]` (or `[n, num_classes]` with drop_last=False).

    Args:
        labels: integer class ids `[n]` in [0, num_classes).
    """
    if num_classes < 2:
        raise ValueError(f"Expected num_classes >= 2, found {num_classes}")
    if labels.ndim != 1:
        raise ValueError(f"Expected labels of shape [n], found {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"Expected labels in [0, {num_classes}), found range [{int(labels.min())}, {int(labels.max())}]"
        )
    out = torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float64)
    return out[:, :-1] if drop_last else out


def label_cca(
    layer_utts: Sequence[Tensor],
    label_utts: Sequence[Tensor],
    num_classes: int,
    config: FeatureCCAConfig = FeatureCCAConfig(),
) -> FeatureCCAResult:
    """Frame-level held-out CCA of a layer against one-hot labels (phones or words).

    Args:
        layer_utts: per-utterance activations `[frames_u, d]`.
        label_utts: per-utterance frame labels `[frames_u]` in [0, num_classes); frames
            labelled -1 (no label, e.g. outside any word) are left out.
    """
    if len(layer_utts) != len(label_utts):
        raise ValueError(
            f"Expected as many label as layer utterances, found {len(label_utts)} and {len(layer_utts)}"
        )
    xs, ys = [], []
    for u, (x, labels) in enumerate(zip(layer_utts, label_utts)):
        if labels.shape != (x.shape[0],):
            raise ValueError(
                f"Expected labels of utterance {u} of shape [{x.shape[0]}], found {tuple(labels.shape)}"
            )
        keep = labels >= 0
        xs.append(x[keep.to(x.device)])
        ys.append(one_hot(labels[keep], num_classes))
    return heldout_cca(xs, ys, config)


def speaker_cca(
    layer_utts: Sequence[Tensor],
    speakers: Sequence[int],
    num_speakers: int,
    config: FeatureCCAConfig = FeatureCCAConfig(),
) -> FeatureCCAResult:
    """Frame-level held-out CCA of a layer against one-hot speaker ids (one id per utterance).

    Folds hold out utterances, not speakers: the score measures how well the layer
    encodes the identity of speakers seen in training.
    """
    if len(layer_utts) != len(speakers):
        raise ValueError(f"Expected one speaker per utterance, found {len(speakers)} for {len(layer_utts)}")
    labels = [torch.full((x.shape[0],), int(s), dtype=torch.long) for x, s in zip(layer_utts, speakers)]
    return label_cca(layer_utts, labels, num_speakers, config)


def segment_means(
    layer_utts: Sequence[Tensor], segments: Sequence[tuple[int, int, int, int]]
) -> tuple[list[Tensor], list[Tensor]]:
    """Mean of a layer's frames within each segment, grouped by utterance.

    Args:
        layer_utts: per-utterance activations `[frames_u, d]`.
        segments: (utt_index, start_frame, end_frame, label), end exclusive, start < end.

    Returns:
        per-utterance segment means `[segments_u, d]` and labels `[segments_u]`.
    """
    means: list[list[Tensor]] = [[] for _ in layer_utts]
    labels: list[list[int]] = [[] for _ in layer_utts]
    for index, (u, start, end, label) in enumerate(segments):
        if not 0 <= u < len(layer_utts):
            raise ValueError(f"Segment {index}: expected utt_index in [0, {len(layer_utts)}), found {u}")
        frames = layer_utts[u].shape[0]
        if not 0 <= start < end <= frames:
            raise ValueError(
                f"Segment {index} of utterance {u}: expected 0 <= start < end <= {frames}, "
                f"found ({start}, {end})"
            )
        means[u].append(layer_utts[u][start:end].to(torch.float64).mean(dim=0))
        labels[u].append(int(label))
    dim = layer_utts[0].shape[1] if layer_utts else 0
    out_means = [torch.stack(m) if m else torch.zeros(0, dim, dtype=torch.float64) for m in means]
    return out_means, [torch.tensor(l, dtype=torch.long) for l in labels]


def segment_cca(
    layer_utts: Sequence[Tensor],
    segments: Sequence[tuple[int, int, int, int]],
    num_classes: int,
    config: FeatureCCAConfig = FeatureCCAConfig(),
) -> FeatureCCAResult:
    """Segment-level held-out CCA: segment-mean activations against one-hot segment labels.

    Folds are grouped by the segments' utterances.
    """
    means, labels = segment_means(layer_utts, segments)
    return heldout_cca(means, [one_hot(l, num_classes) for l in labels], config)


def cca_curve_intervals(
    results: Sequence[FeatureCCAResult], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
):
    """Bootstrap intervals of a per-layer held-out CCA curve (one result per layer, all over the same
    utterances and folds) and of the paired differences between layers.

    Resampled: the utterances within each fold (each fold keeps its size, so the mean over folds keeps
    its design), the same draw for every layer. Held fixed: each fold's fitted canonical directions,
    so the interval covers the choice of held-out utterances, not the fit.

    Returns:
        ``analysis.stats.CurveIntervals`` over `[layers]`.
    """
    from analysis.stats import curve_intervals

    if not results:
        raise ValueError("Expected one held-out CCA result per layer, found none")
    for layer, result in enumerate(results):
        if result.heldout is None:
            raise ValueError(f"Expected the per-utterance projections of layer {layer}'s result, found none")
    folds = results[0].heldout.folds
    for layer, result in enumerate(results[1:], start=1):
        if not (np.array_equal(result.heldout.folds, folds) and np.array_equal(result.heldout.frames,
                                                                             results[0].heldout.frames)):
            raise ValueError(f"Expected every layer over the same utterances, frames and folds, found layer {layer} "
                             "differing")
    width = max(r.heldout.sums.shape[2] for r in results)
    sums = np.zeros((len(folds), len(results), 5, width))  # [utts, L, 5, k]: every layer padded to one width
    for layer, result in enumerate(results):
        sums[:, layer, :, : result.heldout.sums.shape[2]] = result.heldout.sums
    pairs = np.stack([r.heldout.pairs for r in results])  # [L, n_folds]
    frames = results[0].heldout.frames
    return curve_intervals(lambda w: _fold_scores(sums, frames, folds, pairs, w)[0], len(folds),
                           n_boot=n_boot, seed=seed, level=level, strata=folds)
