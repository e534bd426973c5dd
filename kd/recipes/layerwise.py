"""Stages of the layer-wise recipe (``recipes/layerwise_analysis``) that need more than one library layer.

:func:`analyse_run_checkpoints`: every checkpoint that a ``kd train`` run kept, analysed layer by layer
(``kd analyze``) and scored (CTC greedy WER) on the same dev set; the per-layer curves across training as
figures; and whether the label-free MI bound tracks the phone probe (over checkpoints and layers) and the
WER (over checkpoints): :func:`kd.analyze.checkpoints.tracking_table`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["analyse_run_checkpoints", "tracking_markdown"]

CURVES = {  # report key -> y label of the figures across checkpoints
    "probe_phone_accuracy": "phone probe accuracy",
    "mi_cluster_normalized": "label-free MI bound / H(C)",
    "mi_phone_bits": "MI bound with phones (bits)",
    "cca_phone": "CCA with phones (frame level)",
    "cca_word": "CCA with words (frame level)",
    "cca_fbank": "CCA with FBANK",
}


def analyse_run_checkpoints(run_dir: str | os.PathLike, dev: str | os.PathLike, out_dir: str | os.PathLike,
                            config: Any, *, title: str) -> dict[str, Any]:
    """Export, analyse and score every kept checkpoint of ``run_dir`` on ``dev``; figures and the tracking
    table under ``out_dir``. Returns the tracking table with the figures' paths."""
    from kd.analyze.checkpoints import export_run_checkpoints, tracking_table
    from kd.analyze.figures import plot_layer_curves, report_curves
    from kd.analyze.layerwise import analyze_model_dir
    from kd.core.io import write_json
    from kd.recipes.multidomain import GREEDY, evaluate_model

    out = Path(out_dir)
    models = export_run_checkpoints(run_dir, out / "models")
    reports: dict[str, Path] = {}
    wers: dict[str, float] = {}
    for label, model in models.items():
        folder = out / "analysis" / label.replace(" ", "-")
        if not (folder / "report.json").is_file():
            analyze_model_dir(model, dev, folder, config)
        reports[label] = folder / "report.json"
        wers[label] = round(evaluate_model(model, dev, GREEDY, out / "eval" / label.replace(" ", "-"),
                                           device=config.device)["wer"], 2)
    figures = []
    for key, ylabel in CURVES.items():
        curves = report_curves(reports, key)
        if curves:
            figures.append(str(plot_layer_curves(curves, out / "figures" / f"checkpoints_{key}.png", ylabel=ylabel,
                                                 title=f"{title}: {ylabel}")))
    table = {**tracking_table(reports, wers), "figures": figures, "wer_decoding": "CTC greedy"}
    write_json(out / "tracking.json", table)
    return table


def tracking_markdown(table: Mapping[str, Any]) -> str:
    """The tracking table as markdown: per checkpoint, WER and the bound; each rank correlation."""
    lines = ["| checkpoint | dev WER % (CTC greedy) | bound, last layer | bound, best layer |", "|---|---|---|---|"]
    number = lambda v: "undefined" if v is None else f"{v:.4f}"  # noqa: E731
    for label, row in table["per_checkpoint"].items():
        lines.append(f"| {label} | {row['wer']:.1f} | {number(row['bound_last_layer'])} | "
                     f"{number(row['bound_best_layer'])} |")
    lines += ["", f"Spearman's rho (95% bootstrap interval over the points) of `{table['bound']}`:", "",
              "| against | points | rho | 95% interval | tracks |", "|---|---|---|---|---|"]
    names = {"bound_vs_probe_over_checkpoints_and_layers": f"`{table['probe']}`, every checkpoint and layer",
             "last_layer_bound_vs_wer": "WER, the last layer's bound per checkpoint",
             "best_layer_bound_vs_wer": "WER, the best layer's bound per checkpoint"}
    for key, name in names.items():
        r = table[key]
        if r["rho"] is None:
            lines.append(f"| {name} | {r['n']} | | | {r['note']} |")
        else:
            lines.append(f"| {name} | {r['n']} | {r['rho']:+.3f} | [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | "
                         f"{'yes' if r['tracks'] else 'no (the interval holds 0)'} |")
    return "\n".join(lines) + "\n"
