"""Figures that put several analysis reports side by side (checkpoints of a run, teacher vs student)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_layer_curves", "report_curves"]


def report_curves(reports: Mapping[str, str | os.PathLike], key: str) -> dict[str, list[float | None]]:
    """``per_layer[key]`` of each ``kd analyze`` report (label -> report.json); missing keys are skipped."""
    from analysis.report import AnalysisReport

    out = {}
    for label, path in reports.items():
        values = AnalysisReport.load(path).per_layer.get(key)
        if values:
            out[label] = list(values)
    return out


def plot_layer_curves(curves: Mapping[str, Sequence[float | None]], out_path: str | os.PathLike, *, ylabel: str,
                      title: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """One line per label over layer index (None values are gaps); saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError(f"plot_layer_curves({out_path}): expected at least one curve, found none")
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for i, (label, values) in enumerate(curves.items()):
        ys = [float("nan") if v is None else float(v) for v in values]
        ax.plot(range(len(ys)), ys, marker="o", markersize=3, label=label,
                color=cmap(i / max(1, len(curves) - 1)))
    ax.set_xlabel("layer (0 = input of the first Transformer layer)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
