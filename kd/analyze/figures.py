"""Figures that put several analysis reports side by side (checkpoints of a run, teacher vs student),
and the learning curves of a wav2vec 2.0 pre-training run."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_layer_curves", "plot_pretraining_curves", "report_curves"]


def _save(fig, out_path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it as a PNG at ``out_path`` (parent folders made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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
    """One line per label over layer index (None values are gaps); saved as PNG. Up to 8 curves get a
    legend; more (a run's checkpoints, in order) are told apart by a colour bar over their labels."""
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
    if len(curves) <= 8:
        ax.legend(fontsize=7)
    else:  # a legend of many entries would cover the curves
        from matplotlib.colors import BoundaryNorm
        from matplotlib.cm import ScalarMappable

        labels = list(curves)
        norm = BoundaryNorm([i - 0.5 for i in range(len(labels) + 1)], cmap.N)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        shown = sorted({0, len(labels) - 1, *range(0, len(labels), max(1, len(labels) // 6))})
        bar.set_ticks(shown)
        bar.set_ticklabels([labels[i] for i in shown], fontsize=7)
    return _save(fig, out_path)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of the finite values among the last ``window`` at each position (fewer at the start;
    NaN where none is finite), so a diverged update leaves a gap instead of spoiling the rest."""
    out = []
    for i in range(len(values)):
        finite = [v for v in values[max(0, i + 1 - window):i + 1] if math.isfinite(v)]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def plot_pretraining_curves(log_csv: str | os.PathLike, out_path: str | os.PathLike, *, codebook_size: int,
                            smooth: int = 10, title: str = "wav2vec 2.0 pre-training") -> Path:
    """Learning curves of a ``kd.ssl.pretrain`` run from its ``log.csv``; saved as PNG.

    Left: the contrastive loss per masked frame against its chance level (the loss of a model
    that cannot tell a target from its distractors; absent from logs written before it was
    logged): learning shows as the loss falling below the chance line, codebook collapse as both
    falling together. Right: the codebook perplexity against its maximum ``codebook_size`` (G x V),
    the perplexity of one frame's code distribution (``frame_perplexity``, where logged: near the
    pooled perplexity, the codes are drawn at random and the targets cannot be predicted) and the
    Gumbel temperature. Third panel, where logged: how often neighbouring frames share their code
    against how often they would by chance (``neighbour_codes``; at chance the targets change like
    noise from frame to frame and cannot be predicted from context). Thin lines are per update,
    thick ones a moving average over ``smooth`` updates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kd.core.io import read_csv_log

    rows = read_csv_log(log_csv)
    if not rows:
        raise ValueError(f"{log_csv}: expected at least one logged update, found none")
    for column in ("step", "contrastive", "perplexity", "temperature"):
        if column not in rows[0]:
            raise ValueError(f"{log_csv}: column {column!r} missing (columns: {sorted(rows[0])})")
    steps = [r["step"] for r in rows]

    def curve(ax, values, color, label):  # thin per update, thick moving average
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(steps, _moving_average(values, smooth), color=color, linewidth=1.8, label=label)

    neighbours = all(c in rows[0] for c in ("neighbour_codes", "neighbour_codes_chance"))
    fig, axes = plt.subplots(1, 3 if neighbours else 2, figsize=(15 if neighbours else 10, 3.8))
    left, right = axes[:2]
    curve(left, [r["contrastive"] for r in rows], "tab:blue", "contrastive loss")
    if "chance" in rows[0]:
        curve(left, [r["chance"] for r in rows], "tab:gray", "chance level")
    left.set_xlabel("update")
    left.set_ylabel("nats per masked frame")
    left.legend(fontsize=8)
    left.set_title("contrastive task")
    curve(right, [r["perplexity"] for r in rows], "tab:green", "perplexity")
    if "frame_perplexity" in rows[0]:
        curve(right, [r["frame_perplexity"] for r in rows], "tab:olive", "per frame (drawn from)")
    right.axhline(codebook_size, color="tab:green", linestyle=":", linewidth=1, label=f"maximum ({codebook_size})")
    right.set_xlabel("update")
    right.set_ylabel("codebook perplexity (log scale)")
    right.set_yscale("log", base=2)  # from 1 (one code) to G x V: collapse and spread both stay readable
    right.set_ylim(1, codebook_size * 1.5)
    twin = right.twinx()
    twin.plot(steps, [r["temperature"] for r in rows], color="tab:red", linewidth=1.2, label="Gumbel temperature")
    twin.set_ylabel("Gumbel temperature")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right")
    right.set_title("quantiser")
    if neighbours:
        ax = axes[2]
        curve(ax, [100 * r["neighbour_codes"] for r in rows], "tab:purple", "neighbouring frames")
        curve(ax, [100 * r["neighbour_codes_chance"] for r in rows], "tab:gray", "by chance (codes shuffled in time)")
        ax.set_xlabel("update")
        ax.set_ylabel("same code (%, mean over groups)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
        ax.set_title("targets in time")
    fig.suptitle(title)
    return _save(fig, out_path)
