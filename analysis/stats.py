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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from analysis.streaming import LayerMoments

__all__ = [
    "BootstrapInterval",
    "PermutationTest",
    "bootstrap_interval",
    "bootstrap_moments",
    "crop_to_shorter",
    "permutation_null",
]

T = TypeVar("T")


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
    """
    items = list(items)
    _check_common(len(items), n_boot, "n_boot", level)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(n_boot, len(items)))  # [n_boot, utterances]
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
