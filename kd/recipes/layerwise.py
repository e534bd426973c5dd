"""Stages of the layer-wise recipe (``recipes/layerwise_analysis``) that need more than one library layer.

:func:`analyse_run_checkpoints`: every checkpoint that a ``kd train`` run kept, analysed layer by layer
(``kd analyze``) and scored (CTC greedy WER) on the same dev set; the per-layer curves across training as
figures; and whether the label-free MI bound tracks the phone probe (over checkpoints and layers) and the
WER (over checkpoints): :func:`kd.analyze.checkpoints.tracking_table`.

:func:`layerwise_results` and :func:`layerwise_results_markdown`: the recipe's results file, the ESPnet
teacher's layer-wise report and its tracking table along training, with the model and data named
independently of the machine that ran them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["analyse_run_checkpoints", "least_similar_layers", "layerwise_results", "layerwise_results_markdown", "tracking_markdown"]

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
    """The tracking table as markdown: per checkpoint (in training order), WER and the bound; each rank
    correlation, over the points where the bound is not vacuous."""
    lines = ["| checkpoint | dev WER % (CTC greedy) | bound, last layer | bound, best layer |", "|---|---|---|---|"]
    number = lambda v: "undefined" if v is None else f"{v:.4f}" + (" (vacuous)" if v <= 0 else "")  # noqa: E731
    for label in table["checkpoints"]:  # the table's own order (a JSON round trip may sort the mapping)
        row = table["per_checkpoint"][label]
        lines.append(f"| {label} | {row['wer']:.1f} | {number(row['bound_last_layer'])} | "
                     f"{number(row['bound_best_layer'])} |")
    lines += ["", f"Spearman's rho (95% bootstrap interval over the points) of `{table['bound']}`, over the points "
                  "where the bound is above 0 (at or below 0 it is vacuous: it shows no information). The bound "
                  "tracks the probe when rho's interval lies above 0, the WER when it lies below 0.", "",
              "| against | points | vacuous points left out | rho | 95% interval | tracks |", "|---|---|---|---|---|---|"]
    names = {"bound_vs_probe_over_checkpoints_and_layers": f"`{table['probe']}`, every checkpoint and layer",
             "last_layer_bound_vs_wer": "WER, the last layer's bound per checkpoint",
             "best_layer_bound_vs_wer": "WER, the best layer's bound per checkpoint"}
    verdicts = {"yes": "yes", "no": "no (the interval holds 0)", "opposite": "no: the opposite direction"}
    for key, name in names.items():
        r = table[key]
        vacuous = r.get("vacuous", 0)
        if r["rho"] is None:
            lines.append(f"| {name} | {r['n']} | {vacuous} | | | not a test: {r['note']} |")
        else:
            lines.append(f"| {name} | {r['n']} | {vacuous} | {r['rho']:+.3f} | [{r['ci95'][0]:+.3f}, "
                         f"{r['ci95'][1]:+.3f}] | {verdicts[r['tracks']]} |")
    return "\n".join(lines) + "\n"


def _short(path: str) -> str:
    """A data dir or model dir as its last two folders (``us/dev``), not this machine's path."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def least_similar_layers(linear_cka) -> dict[str, Any]:
    """How unlike a model's layers are, from a report's linear CKA matrix (row and column 0, the embedding
    output, left out): the number of layers, the lowest CKA between two layers and that pair (numbered from
    1), and the lowest CKA between neighbours (4 decimals)."""
    import numpy as np

    cka = np.asarray(linear_cka, dtype=float)[1:, 1:]
    i, j = np.unravel_index(np.argmin(cka), cka.shape)
    return {"layers": int(cka.shape[0]), "lowest_cka": round(float(cka[i, j]), 4),
            "lowest_cka_layers": [int(i) + 1, int(j) + 1],
            "adjacent_cka_min": round(float(min(cka[k, k + 1] for k in range(len(cka) - 1))), 4)}


def layerwise_results(*, preset: str, teacher_report: str | os.PathLike, tracking: Mapping[str, Any] | None,
                      provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's results file: the ESPnet teacher's layer-wise report (``report.json`` of
    ``kd analyze``), how unlike its layers are (the lowest linear CKA between two of its layers, the
    embedding output left out, and between neighbours), and its tracking table along training
    (:func:`analyse_run_checkpoints`; None when that stage has not run). Paths are shortened to their
    last two folders; the tracking table's figure paths are left out."""
    import dataclasses

    from analysis.report import AnalysisReport

    report = AnalysisReport.load(teacher_report)
    extras = dict(report.extras)
    if extras.get("model_training_data"):
        extras["model_training_data"] = [_short(d) for d in extras["model_training_data"]]
    report = dataclasses.replace(report, model=_short(report.model), data=_short(report.data), extras=extras)
    return {"preset": preset,
            "asr_teacher": {**least_similar_layers(report.similarity["linear_cka"]), "report": report.to_dict()},
            "asr_dynamics": None if tracking is None else {k: v for k, v in tracking.items() if k != "figures"},
            "provenance": dict(provenance)}


def layerwise_results_markdown(results: Mapping[str, Any]) -> str:
    """The results file as markdown: the teacher's report (its findings and per-layer table with
    intervals), then the tracking table along training when there is one."""
    from analysis.report import AnalysisReport

    t, prov = results["asr_teacher"], results["provenance"]
    report = AnalysisReport.from_dict(t["report"])
    body = report.to_markdown().splitlines()
    if body and body[0].startswith("# "):  # the report's own title: the heading of this section instead
        body = body[1:]
    lines = [f"Preset `{results['preset']}`; {prov.get('date')}, commit {prov.get('commit')}, {prov.get('cpu')}.", "",
             f"**The ESPnet teacher** (`{report.model}`, {t['layers']} encoder layers): lowest linear CKA between two "
             f"of its layers {t['lowest_cka']:.3f} (layers {t['lowest_cka_layers']}), between neighbours "
             f"{t['adjacent_cka_min']:.3f}.", *body]
    if results.get("asr_dynamics"):
        lines += ["", "**The teacher along its training** (every kept checkpoint, analysed and scored on the same "
                      "dev set)", "", tracking_markdown(results["asr_dynamics"])]
    return "\n".join(lines).rstrip("\n") + "\n"
