"""A training run's checkpoints as models to analyse, and whether one per-layer measure tracks another.

Liu et al. (the label-free mutual-information bound of speech representations) ask whether a bound that
needs no labels tracks what labels measure: phone probes per layer, and the recogniser's error rate along
training. :func:`export_run_checkpoints` turns the checkpoints that ``kd train`` kept into model dirs that
``kd analyze`` and ``kd eval`` read; :func:`rank_correlation` is Spearman's rho between two measures over
a set of points with a bootstrap interval over those points; :func:`tracking_table` asks it of the
``kd analyze`` reports of every checkpoint and their error rates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["export_run_checkpoints", "rank_correlation", "tracking_table"]


def export_run_checkpoints(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Each finished checkpoint of a ``kd train`` run as a model dir ``out_dir/step-<N>`` (the run's model
    config and tokens, the checkpoint's weights); returns ``{"step N": model dir}``, oldest first. A model
    dir already exported is kept."""
    from kd.models.model_dir import save_model_dir
    from kd.training.checkpoint import CHECKPOINTS_DIR, WEIGHTS, list_checkpoints
    from kd.training.teachers import load_run_model

    run_dir, out = Path(run_dir), Path(out_dir)
    found = list_checkpoints(run_dir / CHECKPOINTS_DIR)
    if not found:
        raise FileNotFoundError(f"{run_dir / CHECKPOINTS_DIR}: no finished checkpoint to export")
    exported = {}
    for info in found:
        target = out / f"step-{info.step}"
        if not (target / "model.safetensors").is_file():
            model, tokenizer = load_run_model(run_dir, weights=str(Path(CHECKPOINTS_DIR) / info.path.name / WEIGHTS))
            save_model_dir(model, tokenizer, target)
        exported[f"step {info.step}"] = target
    return exported


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def rank_correlation(x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, Any]:
    """Spearman's rho of paired values and a percentile bootstrap interval over the pairs (resamples in
    which either side is constant are left out). ``"excludes_zero"``: the interval excludes 0 (on
    either side)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"rank_correlation: expected two equal-length lists of 3 or more values, found "
                         f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("rank_correlation: expected finite values")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        i = rng.integers(len(x), size=len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            draws.append(_spearman(x[i], y[i]))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [tail, 1.0 - tail]) if draws else (float("nan"), float("nan"))
    return {"rho": round(_spearman(x, y), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "n": len(x),
            "excludes_zero": bool(lo > 0 or hi < 0)}


def tracking_table(reports: Mapping[str, str | os.PathLike], wers: Mapping[str, float], *,
                   bound: str = "mi_cluster_normalized", probe: str = "probe_phone_accuracy") -> dict[str, Any]:
    """Whether the MI bound ``bound`` tracks the phone probe ``probe`` over every (checkpoint, layer), and
    the error rate over checkpoints (the bound of the last layer, and its best layer, against the WER).

    A bound at or below 0 is vacuous (it shows no information; :mod:`analysis.mutual_info`): such a point
    is left out of the correlations and counted (``"vacuous"``). The bound tracks the probe when the
    interval of rho lies above 0, and the WER when it lies below 0 (a higher bound, a lower error rate);
    an interval on the other side of 0 reads ``"opposite"``, one that holds 0 ``"no"``.

    Args:
        reports: checkpoint label -> ``kd analyze`` report.json, in training order.
        wers: checkpoint label -> WER (%) of that checkpoint (the same labels).
    """
    from analysis.report import AnalysisReport

    if set(reports) != set(wers):
        raise ValueError(f"tracking_table: expected a WER per report, found reports {sorted(reports)} and WERs "
                         f"{sorted(wers)}")
    per = {label: AnalysisReport.load(path).per_layer for label, path in reports.items()}
    missing = sorted(label for label, p in per.items() if bound not in p or probe not in p)
    if missing:
        raise ValueError(f"tracking_table: the reports of {missing} lack {bound!r} or {probe!r}")

    def finite(v: Any) -> bool:
        return v is not None and np.isfinite(v)

    # layers 1..L (layer 0, the input, is no learned representation); a value the report left undefined
    # (None: e.g. too few utterances for a bound) is no point
    pairs = [(a, b) for p in per.values() for a, b in zip(p[bound][1:], p[probe][1:]) if finite(a) and finite(b)]
    labels = list(reports)
    last = {label: per[label][bound][-1] for label in labels}
    best = {label: max((v for v in per[label][bound][1:] if finite(v)), default=None) for label in labels}

    def correlate(points: list[tuple[float, float]], expected: int) -> dict[str, Any]:
        informative = [(a, b) for a, b in points if a > 0.0]
        vacuous = len(points) - len(informative)
        if len(informative) < 3:
            note = (f"the bound is vacuous at {vacuous} of {len(points)} points" if vacuous
                    else "fewer than 3 points")
            return {"n": len(informative), "vacuous": vacuous, "rho": None, "ci95": None, "tracks": None,
                    "note": note}
        r = rank_correlation([a for a, _ in informative], [b for _, b in informative])
        lo, hi = r["ci95"]
        side = 1 if lo > 0 else -1 if hi < 0 else 0
        return {**r, "vacuous": vacuous, "expected": "+" if expected > 0 else "-",
                "tracks": "yes" if side == expected else "opposite" if side == -expected else "no"}

    out = {"bound": bound, "probe": probe, "checkpoints": labels,
           "bound_vs_probe_over_checkpoints_and_layers": correlate(pairs, +1)}
    for name, values in (("last_layer_bound_vs_wer", last), ("best_layer_bound_vs_wer", best)):
        out[name] = correlate([(values[label], wers[label]) for label in labels if finite(values[label])], -1)
    out["per_checkpoint"] = {label: {"wer": wers[label],
                                     "bound_last_layer": round(float(last[label]), 4) if finite(last[label]) else None,
                                     "bound_best_layer": round(float(best[label]), 4) if finite(best[label]) else None}
                             for label in labels}
    return out
