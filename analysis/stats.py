"""Bootstrap intervals and permutation nulls over utterances.

Frames of one utterance are strongly dependent, so resampling or permuting frames would
give intervals that are far too narrow and p-values that are far too small. Every
procedure here resamples or permutes whole utterances (items), or blocks of utterances
summarised by ``LayerMoments`` for the streamed similarities. All randomness comes from
``numpy.random.default_rng(seed)``: the same seed gives the same result.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13); permutation p-value with the +1
correction of Phipson & Smyth 2010, p = (1 + #{null >= observed}) / (1 + n_perm), which is
never 0 and is exact for a one-sided test of "no association".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from analysis.streaming import LayerMoments

__all__ = [
    "BootstrapInterval",
    "CurveIntervals",
    "PermutationTest",
    "bootstrap_interval",
    "bootstrap_moments",
    "crop_to_shorter",
    "curve_intervals",
    "permutation_null",
]

T = TypeVar("T")

# paired differences between layers at most this far above 0 are rounding, not a separation (the
# curves are correlations, accuracies and bits, all of order 1)
SEPARATION_TOLERANCE = 1e-12


@dataclass(frozen=True)
class BootstrapInterval:
    """Percentile bootstrap interval of a statistic (scalar or array, shape S).

    estimate: statistic of the original items `S`; low/high: interval bounds `S`;
    samples: bootstrap replicates `[n_boot, *S]`.
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    samples: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class PermutationTest:
    """One-sided permutation test (larger statistic = more association).

    null: statistic under `[n_perm]` random re-pairings of the utterances.
    """

    observed: float
    p_value: float
    null: np.ndarray = field(repr=False, compare=False)


def _check_common(count: int, resamples: int, name: str, level: float | None = None) -> None:
    if count < 2:
        raise ValueError(f"Expected at least 2 utterances (items), found {count}")
    if resamples < 1:
        raise ValueError(f"Expected {name} >= 1, found {resamples}")
    if level is not None and not 0.0 < level < 1.0:
        raise ValueError(f"Expected level in (0, 1), found {level}")


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _interval(estimate: Any, samples: list[Any], level: float) -> BootstrapInterval:
    stacked = np.stack([_as_array(s) for s in samples])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stacked, [alpha, 1.0 - alpha], axis=0)
    return BootstrapInterval(_as_array(estimate), low, high, level, stacked)


def bootstrap_interval(
    items: Sequence[T],
    statistic: Callable[[list[T]], Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[Any] | None = None,
) -> BootstrapInterval:
    """Percentile bootstrap interval, resampling whole utterances with replacement.

    Args:
        items: one entry per utterance (e.g. a tuple of that utterance's `[frames_u, d]`
            activations of two layers).
        statistic: maps a list of items to a float, array or tensor (e.g. CKA of the
            concatenated frames).
        n_boot: number of bootstrap replicates.
        seed: seed of the resampling.
        level: coverage of the interval.
        strata: `[items]` stratum of each item, or None. Items are then resampled within their
            stratum, which keeps its size in every replicate (e.g. the held-out folds of a
            cross-validated score); the strata are drawn in sorted order from one generator.
    """
    items = list(items)
    _check_common(len(items), n_boot, "n_boot", level)
    rng = np.random.default_rng(seed)
    if strata is None:
        draws = rng.integers(0, len(items), size=(n_boot, len(items)))  # [n_boot, utterances]
    else:
        strata = np.asarray(strata)
        if strata.shape != (len(items),):
            raise ValueError(f"Expected strata of shape [{len(items)}], found {tuple(strata.shape)}")
        draws = np.empty((n_boot, len(items)), dtype=np.int64)
        for stratum in np.unique(strata):
            members = np.flatnonzero(strata == stratum)  # positions of this stratum's items
            draws[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    samples = [statistic([items[i] for i in draw]) for draw in draws]
    return _interval(statistic(items), samples, level)


def permutation_null(
    x_items: Sequence[T],
    y_items: Sequence[T],
    statistic: Callable[[list[T], list[T]], float],
    *,
    n_perm: int = 1000,
    seed: int = 0,
) -> PermutationTest:
    """Permutation test of association between two views, permuting whole utterances.

    The null pairs utterance u of x with utterance pi(u) of y, destroying the x-y
    association while keeping every utterance's internal structure. When utterances
    differ in length, the statistic must pair frames of different utterances, e.g. with
    ``crop_to_shorter``.

    Args:
        x_items, y_items: one entry per utterance for each view, in the same order.
        statistic: maps (x list, y list) to a float; larger means more association.
        n_perm: number of random permutations.
        seed: seed of the permutations.
    """
    x_items, y_items = list(x_items), list(y_items)
    if len(x_items) != len(y_items):
        raise ValueError(
            "Expected x_items and y_items with the same number of utterances, "
            f"found {len(x_items)} and {len(y_items)}"
        )
    _check_common(len(x_items), n_perm, "n_perm")
    rng = np.random.default_rng(seed)
    observed = float(statistic(x_items, y_items))
    null = np.empty(n_perm)
    for k in range(n_perm):
        order = rng.permutation(len(y_items))
        null[k] = float(statistic(x_items, [y_items[i] for i in order]))
    p_value = (1.0 + np.count_nonzero(null >= observed)) / (1.0 + n_perm)
    return PermutationTest(observed, float(p_value), null)


def crop_to_shorter(x_items: Sequence[Tensor], y_items: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Concatenate paired utterances, each pair cropped to its shorter length.

    Args:
        x_items: per-utterance activations `[frames_u, dx]`.
        y_items: per-utterance activations `[frames'_u, dy]`, paired with x_items in order.

    Returns:
        `[sum_u min(frames_u, frames'_u), dx]` and `[..., dy]`.
    """
    if len(x_items) != len(y_items):
        raise ValueError(f"Expected as many x as y utterances, found {len(x_items)} and {len(y_items)}")
    lengths = [min(x.shape[0], y.shape[0]) for x, y in zip(x_items, y_items)]
    x = torch.cat([x[:k] for x, k in zip(x_items, lengths)])
    y = torch.cat([y[:k] for y, k in zip(y_items, lengths)])
    return x, y


def bootstrap_moments(
    blocks: Sequence[LayerMoments],
    statistic: Callable[[LayerMoments], Any],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Bootstrap a streamed similarity by resampling blocks of utterances.

    Each block is the ``LayerMoments`` of a disjoint group of whole utterances; a replicate
    merges the blocks drawn with replacement (a block drawn c times counts c times). Each
    replicate costs one pass over the blocks' `[D, D]` moments, so use tens of blocks, not
    one per utterance.

    Args:
        blocks: per-block moments, all with the same dims.
        statistic: maps merged moments to a float or tensor, e.g.
            ``lambda m: pairwise_linear_cka(m)``.
    """
    blocks = list(blocks)
    _check_common(len(blocks), n_boot, "n_boot", level)
    empty = [index for index, block in enumerate(blocks) if block.count == 0]
    if empty:
        raise ValueError(f"Expected every block to hold frames, found empty blocks {empty}")
    reference = blocks[0].shift
    # one common reference point, so that merging a replicate is plain addition
    blocks = [b if torch.equal(b.shift.to(reference), reference) else b.rebased(reference) for b in blocks]

    def merged(counts: np.ndarray) -> LayerMoments:
        out = LayerMoments(blocks[0].dims, device=blocks[0].device)
        for index in np.flatnonzero(counts):
            out.merge(blocks[index], times=int(counts[index]))
        return out

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(blocks), size=(n_boot, len(blocks)))
    samples = [statistic(merged(np.bincount(draw, minlength=len(blocks)))) for draw in draws]
    return _interval(statistic(merged(np.ones(len(blocks), dtype=np.int64))), samples, level)


@dataclass(frozen=True)
class CurveIntervals:
    """Percentile bootstrap intervals of a per-layer curve and paired differences between its layers.

    Each replicate resamples the utterances once for all layers, so a difference between two layers
    is paired: an utterance that is hard for both moves both alike and drops out of the difference,
    which is therefore much tighter than the two layers' own intervals.

    Per layer `[L]`: estimate (the curve of the original utterances), low and high (its interval);
    vs_best = estimate[best] - estimate, with its interval vs_best_low / vs_best_high (0 at best);
    vs_last = estimate - estimate[L - 1], with vs_last_low / vs_last_high (0 at the last layer).
    best: the layer with the highest finite estimate (the earliest among equal ones), None if none is
    finite. utterances: how many utterances (items) each replicate resamples.
    """

    level: float
    n_boot: int
    utterances: int
    estimate: list[float]
    low: list[float]
    high: list[float]
    best: int | None
    vs_best: list[float]
    vs_best_low: list[float]
    vs_best_high: list[float]
    vs_last: list[float]
    vs_last_low: list[float]
    vs_last_high: list[float]

    def tied_with_best(self) -> list[int]:
        """The layers not separated from the best, sorted: the best itself and every layer whose paired
        interval of best minus it does not lie above 0 (an undefined one counts as not separated; a
        lower bound within ``SEPARATION_TOLERANCE`` of 0 counts as 0, so that two equal layers whose
        replicates differ only by rounding stay tied). ``[best]`` alone means the best layer beats every
        other layer beyond the choice of utterances."""
        if self.best is None:
            return []
        return [layer for layer, low in enumerate(self.vs_best_low)
                if layer == self.best or low is None or not low > SEPARATION_TOLERANCE]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CurveIntervals":
        known = {f.name for f in fields(cls)}
        if set(data) != known:
            raise ValueError(f"Expected CurveIntervals fields {sorted(known)}, found {sorted(data)}")
        return cls(**data)


def curve_intervals(
    statistic: Callable[[np.ndarray], Any],
    num_items: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[Any] | None = None,
) -> CurveIntervals:
    """Percentile bootstrap intervals of a per-layer curve, resampling whole utterances.

    The curve is a function of per-utterance statistics already computed (correct counts,
    cross-entropy terms, projected moments): a replicate only reweights them, nothing is fitted
    again. ``bootstrap_interval`` draws the replicates, so the same seed gives the same draws.

    Args:
        statistic: maps utterance weights `[num_items]` (how many times each utterance is drawn;
            all ones for the original utterances) to the curve `[L]`.
        num_items: number of utterances (items).
        strata: `[num_items]` stratum of each utterance, resampled within (see ``bootstrap_interval``).
    """
    estimate = np.asarray(statistic(np.ones(num_items)), dtype=np.float64)
    if estimate.ndim != 1 or estimate.size == 0:
        raise ValueError(f"Expected the statistic to give a curve of shape [layers], found {estimate.shape}")
    finite = np.flatnonzero(np.isfinite(estimate))
    best = int(finite[np.argmax(estimate[finite])]) if finite.size else None  # argmax: the earliest maximum
    anchor = estimate.size - 1 if best is None else best

    def paired(chosen: list[int]) -> np.ndarray:
        curve = np.asarray(statistic(np.bincount(chosen, minlength=num_items).astype(np.float64)), dtype=np.float64)
        return np.concatenate([curve, curve[anchor] - curve, curve - curve[-1]])

    boot = bootstrap_interval(range(num_items), paired, n_boot=n_boot, seed=seed, level=level, strata=strata)
    layers = estimate.size
    part = lambda values, k: values[k * layers: (k + 1) * layers].tolist()  # noqa: E731
    vs_best = [math.nan] * layers if best is None else part(boot.estimate, 1)
    vs_best_low = [math.nan] * layers if best is None else part(boot.low, 1)
    vs_best_high = [math.nan] * layers if best is None else part(boot.high, 1)
    return CurveIntervals(
        level=level, n_boot=n_boot, utterances=num_items, estimate=estimate.tolist(),
        low=part(boot.low, 0), high=part(boot.high, 0), best=best,
        vs_best=vs_best, vs_best_low=vs_best_low, vs_best_high=vs_best_high,
        vs_last=part(boot.estimate, 2), vs_last_low=part(boot.low, 2), vs_last_high=part(boot.high, 2))
