"""Short readings of analysis reports: where each layer-wise property peaks."""

from __future__ import annotations

import os
from typing import Mapping

__all__ = ["PEAK_KEYS", "peak_layers", "peak_layers_markdown"]

PEAK_KEYS = {  # report per_layer key -> column title
    "cca_fbank": "CCA FBANK",
    "cca_phone": "CCA phones",
    "cca_word": "CCA words",
    "probe_phone_accuracy": "phone probe",
    "probe_speaker_accuracy": "speaker probe",
    "mi_phone_bits": "MI phones (bits)",
    "mi_cluster_normalized": "label-free MI / H",
}


def peak_layers(per_layer: Mapping[str, list]) -> dict[str, dict]:
    """For each known curve: the peak layer, its value, the last layer's value, and whether an
    intermediate layer beats the last one (by more than 0.005)."""
    out = {}
    for key in PEAK_KEYS:
        values = per_layer.get(key)
        if not values or all(v is None for v in values):
            continue
        defined = [(i, v) for i, v in enumerate(values) if v is not None]
        peak, best = max(defined, key=lambda t: (t[1], -t[0]))
        last = values[-1]
        out[key] = {"layer": peak, "value": best, "last": last,
                    "intermediate_beats_last": last is not None and peak < len(values) - 1 and best > last + 0.005}
    return out


def peak_layers_markdown(reports: Mapping[str, str | os.PathLike]) -> str:
    """A markdown table, one row per report: ``peak layer (value; last layer's value)`` per property."""
    from analysis.report import AnalysisReport

    loaded = {label: AnalysisReport.load(path) for label, path in reports.items()}
    keys = [k for k in PEAK_KEYS if any(r.per_layer.get(k) for r in loaded.values())]
    lines = ["| model | layers | " + " | ".join(PEAK_KEYS[k] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for label, report in loaded.items():
        # vacuous MI bounds (<= 0 bits) are no values: they neither peak nor count as the last layer's
        peaks = peak_layers({k: report.plotted_values(k) for k in report.per_layer})
        cells = []
        for k in keys:
            p = peaks.get(k)
            if p is None:
                cells.append("vacuous" if report.per_layer.get(k) and report.vacuous_layers(k) else "")
            else:
                last = "" if p["last"] is None else f"; last {p['last']:.3f}"
                iv = report.curve_intervals(k)
                lo, hi = (iv["vs_last_low"][p["layer"]], iv["vs_last_high"][p["layer"]]) if iv else (None, None)
                if p["layer"] < report.num_layers - 1 and None not in (lo, hi):  # paired interval of peak - last
                    if k.startswith("probe_"):
                        last += f"; peak - last [{lo * 100:+.1f}, {hi * 100:+.1f}] points{' *' if lo > 0 else ''}"
                    else:
                        last += f"; peak - last [{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 else ''}"
                cells.append(f"{p['layer']} ({p['value']:.3f}{last})")
        lines.append(f"| {label} | {report.num_layers - 1} | " + " | ".join(cells) + " |")
    note = ("\nEach cell: the layer where the property peaks (0 = input of the first Transformer layer), its "
            "value, and the last layer's value; where the report holds them, the paired bootstrap interval "
            "over held-out utterances of the peak layer's value minus the last layer's (accuracies in points; "
            "* where it excludes 0: the intermediate layer is better beyond the choice of held-out utterances).\n")
    return "\n".join(lines) + "\n" + note
