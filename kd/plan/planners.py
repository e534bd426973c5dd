"""Planners: turn a layer budget (and optionally layer-similarity analyses) into a CompressionPlan.

Baselines, always available: :func:`first_k`, :func:`every_k` (Peng et al. 2021, "Shrinking
Bigfoot") and :func:`linspace` (first and last layer plus evenly spaced ones, as distil-whisper
initialises its decoder). The analysis-driven planner :func:`plan_from_similarity` segments the
layer chain into contiguous blocks of similar layers and keeps one representative per block
(or, with ``share_blocks=True``, keeps every layer and lets each block share one set of weights).

Every function is deterministic. Layer indices count Transformer layers from 0; a similarity
matrix ``sim[i, j]`` compares the *outputs* of layers ``i`` and ``j`` (higher = more similar).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from kd.plan import CompressionPlan

# two scores closer than this (relative to the matrix scale) count as a tie
_TIE_RTOL = 1e-9


def _check_budget(num_layers: int, k: int, name: str = "k") -> None:
    for field, value in (("num_layers", num_layers), (name, k)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{field}: expected an integer, found {value!r}")
    if num_layers < 1:
        raise ValueError(f"num_layers: expected at least 1, found {num_layers}")
    if not 1 <= k <= num_layers:
        raise ValueError(f"{name}: expected 1 <= {name} <= num_layers={num_layers}, found {k}")


def first_k(num_layers: int, k: int) -> CompressionPlan:
    """Keep the first ``k`` layers: ``[0, 1, ..., k - 1]``."""
    _check_budget(num_layers, k)
    return CompressionPlan(keep_layers=list(range(k)), num_teacher_layers=num_layers)


def every_k(num_layers: int, k: int) -> CompressionPlan:
    """Keep every ``k``-th layer: layers ``k, 2k, 3k, ...`` counted from 1.

    In 0-based indices that is ``[k-1, 2k-1, ...]``, so the last layer is kept whenever ``k``
    divides ``num_layers`` (12 layers, k=2 -> ``[1, 3, 5, 7, 9, 11]``); the student has
    ``num_layers // k`` layers. ``k`` is a stride here, not a layer count.
    """
    _check_budget(num_layers, k)
    return CompressionPlan(keep_layers=list(range(k - 1, num_layers, k)), num_teacher_layers=num_layers)


def linspace(num_layers: int, k: int) -> CompressionPlan:
    """Keep ``k`` layers evenly spaced from the first to the last, both included.

    Layer ``i`` of the student is teacher layer ``floor(i * (L - 1) / (k - 1) + 0.5)`` (round half
    up, so the result does not depend on a library's rounding rule). Needs ``k >= 2``.
    """
    _check_budget(num_layers, k)
    if k < 2:
        raise ValueError(f"k: linspace keeps the first and the last layer, so it needs k >= 2, found {k}")
    keep = [math.floor(i * (num_layers - 1) / (k - 1) + 0.5) for i in range(k)]
    return CompressionPlan(keep_layers=keep, num_teacher_layers=num_layers)


def _square_matrix(matrix: Any, name: str) -> np.ndarray:
    """``matrix`` as a symmetric float64 array; a CPU tensor, array or nested list."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty square [layers, layers] matrix, found shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return (m + m.T) / 2  # analyses may return slightly asymmetric estimates


def _tolerance(m: np.ndarray) -> float:
    return _TIE_RTOL * max(1.0, float(np.abs(m).max())) * m.shape[0]


def block_representative(sim: Any, start: int, stop: int) -> int:
    """The layer of block ``[start, stop)`` most similar to the block's layers (its medoid).

    Score of candidate ``r``: ``sum_{i in block} sim[i, r]`` (``sim[r, r]`` included, so every
    candidate gets the same self term when the diagonal is constant). Ties go to the deepest
    layer: its output is the block's output in the teacher, which the next block consumes.
    """
    s = _square_matrix(sim, "sim")
    if not 0 <= start < stop <= s.shape[0]:
        raise ValueError(f"block: expected 0 <= start < stop <= {s.shape[0]}, found [{start}, {stop})")
    return _representative(s, start, stop, _tolerance(s))


def _representative(s: np.ndarray, start: int, stop: int, tol: float) -> int:
    scores = s[start:stop, start:stop].sum(axis=0)  # [block] similarity of each candidate to the block
    return start + int(np.flatnonzero(scores >= scores.max() - tol).max())


def segment_layers(sim: Any, num_blocks: int) -> list[tuple[int, int]]:
    """Split layers ``0..L-1`` into ``num_blocks`` contiguous blocks ``[start, stop)``.

    Maximises ``sum_blocks max_r sum_{i in block} sim[i, r]``: every layer is scored by its
    similarity to its block's representative (a k-medoids objective restricted to contiguous
    blocks, solved exactly by dynamic programming in O(L^3)). With similarities in [0, 1] this
    equals minimising the total dissimilarity ``1 - sim`` between dropped layers and the kept
    layer that stands in for them. Ties between segmentations go to the earliest block boundary.
    """
    s = _square_matrix(sim, "sim")
    n = s.shape[0]
    _check_budget(n, num_blocks, "num_blocks")
    tol = _tolerance(s)
    # prefix[i, r] = sum_{t < i} s[t, r]  ->  column sums of any block in O(1) per candidate
    prefix = np.vstack([np.zeros((1, n)), np.cumsum(s, axis=0)])  # [L + 1, L]
    score = np.full((n + 1, n + 1), -np.inf)  # score[a, b] of block [a, b)
    for a in range(n):
        for b in range(a + 1, n + 1):
            score[a, b] = (prefix[b, a:b] - prefix[a, a:b]).max()
    best = np.full((num_blocks + 1, n + 1), -np.inf)  # best[j, m]: first m layers in j blocks
    back = np.zeros((num_blocks + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for j in range(1, num_blocks + 1):
        for m in range(j, n - (num_blocks - j) + 1):
            for i in range(j - 1, m):  # last block is [i, m)
                value = best[j - 1, i] + score[i, m]
                if value > best[j, m] + tol:
                    best[j, m], back[j, m] = value, i
    blocks, m = [], n
    for j in range(num_blocks, 0, -1):
        i = int(back[j, m])
        blocks.append((i, m))
        m = i
    return blocks[::-1]


def _layer_similarity(sim: Any, includes_input: bool) -> np.ndarray:
    """``sim`` as a square array over Transformer layers; with ``includes_input`` row and column 0
    (the input of the first layer, as in Hugging Face ``hidden_states``) are dropped."""
    s = _square_matrix(sim, "sim")
    if includes_input:
        s = s[1:, 1:]
        if s.shape[0] == 0:
            raise ValueError("sim: with includes_input=True expected at least a 2 x 2 matrix, found 1 x 1")
    return s


def stand_in_dissimilarity(sim: Any, keep_layers: Sequence[int], *, includes_input: bool = False) -> dict[str, float]:
    """How well the kept layers stand in for all the teacher's layers, on a similarity matrix.

    Every layer ``i`` (kept ones included, at 0 when the diagonal is 1) is scored by
    ``1 - max_{r in keep_layers} sim[i, r]``; returns the ``mean`` and ``max`` over layers. It
    lets plans from any planner be compared on one analysis: a plan that leaves no layer far
    from a kept one scores low, and plans whose scores differ by a few thousandths are not told
    apart by that analysis. ``sim`` and ``includes_input`` as in :func:`plan_from_similarity`
    (an analysis report's matrices include the input: pass ``includes_input=True``).
    """
    s = _layer_similarity(sim, includes_input)
    keep = list(keep_layers)
    if not keep:
        raise ValueError("keep_layers: expected at least one layer, found an empty list")
    bad = [r for r in keep if isinstance(r, bool) or not isinstance(r, Integral) or not 0 <= r < s.shape[0]]
    if bad:
        raise ValueError(f"keep_layers: {bad} are not layers of the {s.shape[0]}-layer similarity matrix")
    gap = 1.0 - s[:, keep].max(axis=1)
    return {"mean": float(gap.mean()), "max": float(gap.max())}


def layers_for_param_budget(layer_params: Sequence[int], budget_params: int) -> int:
    """How many Transformer layers fit in ``budget_params`` parameters.

    ``layer_params[i]`` is the parameter count of teacher layer ``i``; the budget counts
    Transformer-layer parameters only (feature extractor and heads excluded). Conservative:
    ``floor(budget / max(layer_params))``, so any choice of that many layers fits (layers differ
    a little, e.g. WavLM's first layer carries the relative-position table).
    """
    counts = [int(c) for c in layer_params]
    if not counts or min(counts) <= 0:
        raise ValueError(f"layer_params: expected positive per-layer parameter counts, found {list(layer_params)}")
    if isinstance(budget_params, bool) or not isinstance(budget_params, Real):
        raise TypeError(f"budget_params: expected a number of parameters, found {budget_params!r}")
    k = min(int(budget_params // max(counts)), len(counts))
    if k < 1:
        raise ValueError(f"budget_params: {budget_params} parameters do not fit one layer "
                         f"(the largest layer has {max(counts)})")
    return k


def layers_for_latency_budget(measured: Sequence[tuple[int, float]], budget_ms: float, max_layers: int) -> int:
    """How many Transformer layers fit in a latency budget, from measured latencies.

    ``measured``: ``(layers, latency_ms)`` of at least two models of different depth that share
    everything but the number of layers (e.g. the teacher and one pruned student, timed with
    ``kd bench speed`` at the batch size and input length that matter). Latency is modelled as
    ``fixed + layers * per_layer`` (least squares over the points); the answer is the largest
    ``k <= max_layers`` with a predicted latency within ``budget_ms``.
    """
    points = [(int(n), float(ms)) for n, ms in measured]
    if len({n for n, _ in points}) < 2:
        raise ValueError(f"measured: expected latencies of at least two different depths, found {list(measured)}")
    if any(ms <= 0 or n < 1 for n, ms in points):
        raise ValueError(f"measured: expected depths >= 1 and positive latencies, found {list(measured)}")
    n_mean = sum(n for n, _ in points) / len(points)
    ms_mean = sum(ms for _, ms in points) / len(points)
    per_layer = (sum((n - n_mean) * (ms - ms_mean) for n, ms in points)
                 / sum((n - n_mean) ** 2 for n, _ in points))
    if not per_layer > 0:
        raise ValueError(f"measured: latency does not grow with depth ({per_layer:.3g} ms per layer); "
                         "time the models again with more repeats")
    fixed = ms_mean - per_layer * n_mean
    k = min(int((budget_ms - fixed) // per_layer), max_layers)
    if k < 1:
        raise ValueError(f"budget_ms: {budget_ms} ms does not fit one layer (fixed part {fixed:.1f} ms, "
                         f"{per_layer:.2f} ms per layer)")
    return k


def reuse_groups_from_jsd(teacher_layers: Sequence[int], jsd: Any, threshold: float) -> list[list[int]]:
    """Attention-reuse groups (student indices) from an attention Jensen-Shannon divergence matrix.

    ``jsd[a, b]`` is the head-averaged JSD (base 2, in [0, 1]) between the attention maps of
    teacher layers ``a`` and ``b`` (Chi et al. 2021). Student layers are walked in order; a layer
    whose divergence from the current leader's teacher layer is ``<= threshold`` follows that
    leader, otherwise it becomes the next leader. Only groups with followers are returned.
    """
    d = _square_matrix(jsd, "attention_jsd")
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or threshold < 0:
        raise ValueError(f"reuse_threshold: expected a non-negative number, found {threshold!r}")
    bad = [t for t in teacher_layers if not 0 <= t < d.shape[0]]
    if bad:
        raise ValueError(f"teacher layers {bad} are outside the {d.shape[0]}-layer attention_jsd matrix")
    groups: list[list[int]] = []
    for s, t in enumerate(teacher_layers):
        if groups and d[teacher_layers[groups[-1][0]], t] <= threshold:
            groups[-1].append(s)
        else:
            groups.append([s])
    return [g for g in groups if len(g) > 1]


def plan_from_similarity(
    sim: Any,
    *,
    budget_layers: int | None = None,
    budget_params: int | None = None,
    layer_params: Sequence[int] | None = None,
    share_blocks: bool = False,
    attention_jsd: Any = None,
    reuse_threshold: float | None = None,
    includes_input: bool = False,
) -> CompressionPlan:
    """Plan from a layer x layer similarity matrix (e.g. linear CKA between layer outputs).

    Args:
        sim: ``[L, L]`` similarities of the teacher's layer outputs, or ``[L + 1, L + 1]`` with
            the input of the first layer at index 0 when ``includes_input`` (as in Hugging Face
            ``hidden_states``); that row and column are dropped.
        budget_layers: number of blocks, i.e. student layers (or weight sets with ``share_blocks``).
        budget_params: alternatively a Transformer-layer parameter budget, converted to a number
            of layers by :func:`layers_for_param_budget` with ``layer_params`` (``[L]`` counts).
        share_blocks: keep every teacher layer and make each block of two or more layers one
            ALBERT-style share group led by its representative: depth stays ``L``, parameters drop
            to ``budget_layers`` layers. Otherwise keep only the representatives.
        attention_jsd: ``[L, L]`` attention JSD between teacher layers; with ``reuse_threshold``
            adds attention-reuse groups by :func:`reuse_groups_from_jsd`.
    """
    s = _layer_similarity(sim, includes_input)
    n = s.shape[0]
    if (budget_layers is None) == (budget_params is None):
        raise ValueError("give exactly one of budget_layers and budget_params, "
                         f"found budget_layers={budget_layers!r}, budget_params={budget_params!r}")
    if budget_params is not None:
        if layer_params is None or len(layer_params) != n:
            raise ValueError(f"layer_params: budget_params needs one parameter count per layer ({n}), "
                             f"found {None if layer_params is None else len(layer_params)}")
        budget_layers = layers_for_param_budget(layer_params, budget_params)
    blocks = segment_layers(s, budget_layers)
    tol = _tolerance(s)
    reps = [_representative(s, a, b, tol) for a, b in blocks]
    if share_blocks:
        keep = list(range(n))
        share = [[r] + [i for i in range(a, b) if i != r] for (a, b), r in zip(blocks, reps) if b - a > 1]
    else:
        keep, share = reps, []
    reuse: list[list[int]] = []
    if (attention_jsd is None) != (reuse_threshold is None):
        raise ValueError("attention_jsd and reuse_threshold go together; give both or neither")
    if attention_jsd is not None:
        jsd = _square_matrix(attention_jsd, "attention_jsd")
        if jsd.shape[0] != n:
            raise ValueError(f"attention_jsd: expected a {n} x {n} matrix (one row per layer), found {jsd.shape}")
        reuse = reuse_groups_from_jsd(keep, jsd, reuse_threshold)
    return CompressionPlan(keep_layers=keep, share_groups=share, attention_reuse=reuse, num_teacher_layers=n)
