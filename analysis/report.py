"""The analysis report: versioned JSON, PNG figures and a markdown summary.

Numbers that are undefined (for example a normalised bound where the entropy is 0) are
stored as ``null`` and listed in ``undefined`` with the reason, so a report never carries a
silent NaN.

Every per-layer curve can carry a bootstrap interval over utterances (``intervals``, from
``analysis.stats.CurveIntervals``), drawn as a band in the figures. The markdown names one layer
"best" only under ``BEST_LAYER_RULE``; where the rule does not single one out, it names the layers
tied at the top.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_VERSION = 1

# per-layer curves: key -> (figure group, label)
PER_LAYER_LABELS = {
    "cca_fbank": ("cca", "CCA with FBANK (frames)"),
    "cca_phone": ("cca", "CCA with phones (frames)"),
    "cca_word": ("cca", "CCA with words (frames)"),
    "cca_phone_segment": ("cca", "CCA with phones (segments)"),
    "cca_word_segment": ("cca", "CCA with words (segments)"),
    "probe_phone_accuracy": ("probes", "phone probe accuracy (frames)"),
    "probe_speaker_accuracy": ("probes", "speaker probe accuracy (utterances)"),
    "probe_phone_accuracy_linear": ("probe_depths", "phone probe accuracy, linear"),
    "probe_phone_accuracy_mlp1": ("probe_depths", "phone probe accuracy, 1 hidden layer"),
    "probe_phone_accuracy_mlp2": ("probe_depths", "phone probe accuracy, 2 hidden layers"),
    "mi_phone_bits": ("mi", "labelled bound I(Z; phone), bits"),
    "mi_cluster_bits": ("mi", "label-free bound I(Z_a; C_b), bits"),
    "mi_cluster_normalized": ("mi_norm", "label-free bound / H(C_b)"),
}

BEST_LAYER_RULE = (
    "A layer is called best only where the paired bootstrap interval of its value minus each other layer's value "
    "(the same resampled utterances for both layers) lies above 0 for every other layer; otherwise the layers whose "
    "paired difference to the highest one holds 0 are named as tied with it. A curve without intervals names its "
    "highest layer, not a best one.")

# per-layer curve -> how the markdown summary names it
SUMMARY_LABELS = {
    "cca_fbank": "CCA with FBANK",
    "cca_phone": "CCA with phones",
    "cca_word": "CCA with words",
    "cca_phone_segment": "CCA with phone segments",
    "cca_word_segment": "CCA with word segments",
    "probe_phone_accuracy": "phone probe",
    "probe_speaker_accuracy": "speaker probe",
    "probe_phone_accuracy_linear": "phone probe (linear)",
    "probe_phone_accuracy_mlp1": "phone probe (1 hidden layer)",
    "probe_phone_accuracy_mlp2": "phone probe (2 hidden layers)",
    "mi_phone_bits": "labelled MI bound (phones)",
    "mi_cluster_bits": "label-free MI bound",
    "mi_cluster_normalized": "label-free MI bound / H",
}

# MI lower-bound curves -> the curve in bits that decides whether a layer's bound is vacuous
# (at or below 0 bits: the probe did no better than the marginal, so the bound says nothing)
MI_BOUND_BITS = {"mi_phone_bits": "mi_phone_bits", "mi_cluster_bits": "mi_cluster_bits",
                 "mi_cluster_normalized": "mi_cluster_bits"}


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _clean(value: Any, path: str, undefined: dict[str, str]) -> Any:
    """Replace NaN/inf by None (recording where), recursively."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        undefined.setdefault(path, "not a finite number")
        return None
    if isinstance(value, dict):
        return {k: _clean(v, f"{path}.{k}", undefined) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", undefined) for i, v in enumerate(value)]
    return value


@dataclass
class AnalysisReport:
    model: str
    data: str
    num_utterances: int
    num_frames: int
    frame_rate: float
    num_layers: int  # hidden-state layers: 0 = input to the first Transformer layer
    similarity: dict[str, list[list[float]]] = field(default_factory=dict)  # name -> [L, L]
    attention: dict[str, Any] = field(default_factory=dict)  # Transformer layers 1..L-1
    per_layer: dict[str, list[float]] = field(default_factory=dict)  # name -> [L]
    # per_layer name -> bootstrap intervals over utterances (analysis.stats.CurveIntervals.to_dict())
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # analysis -> reason
    undefined: dict[str, str] = field(default_factory=dict)  # JSON path -> reason
    config: dict[str, Any] = field(default_factory=dict)
    version: int = REPORT_VERSION

    def to_dict(self) -> dict:
        undefined = dict(self.undefined)
        data = _clean(asdict(self), "report", undefined)
        data["undefined"] = undefined
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AnalysisReport":
        if not isinstance(data, dict):
            raise ValueError(f"Expected an analysis report object, found {type(data).__name__}")
        version = data.get("version")
        if version != REPORT_VERSION:
            raise ValueError(f"Expected analysis report version {REPORT_VERSION}, found {version!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown analysis report fields: {unknown}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnalysisReport":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON analysis report ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # ---- human-readable output -------------------------------------------------------
    def to_markdown(self) -> str:
        lines = [
            f"# Layer-wise analysis of `{self.model}`",
            "",
            f"Analysed data dir: `{self.data}`: {self.num_utterances} utterances, {self.num_frames} frames at "
            f"{self.frame_rate:g} frames/s; {self.num_layers} hidden-state layers (0 = input to the "
            "first Transformer layer).",
            "",
        ]
        if self.extras.get("data_in_model_training"):
            lines += [f"**Warning**: `{self.data}` is among the model's training data "
                      f"({', '.join(f'`{d}`' for d in self.extras['model_training_data'])}); the analyses describe "
                      "data the model was fitted on, not held-out data.", ""]
        if self.intervals:
            lines += [f"Intervals: percentile bootstrap over utterances, drawn as bands in the figures. {BEST_LAYER_RULE}",
                      ""]
        cka = self.similarity.get("linear_cka")
        if cka:
            adjacent = [(cka[i][i + 1], i) for i in range(len(cka) - 1) if cka[i][i + 1] is not None]
            if adjacent:
                hi, lo = max(adjacent), min(adjacent)
                lines += [f"- Most similar adjacent layers (linear CKA): {hi[1]}-{hi[1] + 1} ({hi[0]:.3f}); "
                          f"least similar: {lo[1]}-{lo[1] + 1} ({lo[0]:.3f})."]
        for key in PER_LAYER_LABELS:
            values = self.per_layer.get(key)
            label = SUMMARY_LABELS[key]
            vacuous = self.vacuous_layers(key)
            if values and vacuous and key != "mi_cluster_normalized":  # noted once, with the bound in bits
                lines.append(self._vacuous_note(label, vacuous))
            if values:
                values = [None if i in vacuous else v for i, v in enumerate(values)]
            if values and any(v is not None for v in values):
                lines.append(self._top_layers_line(key, label, values, vacuous))
        jsd = self.attention.get("jsd_head_averaged")
        if jsd:
            pairs = [(jsd[i][i + 1], i) for i in range(len(jsd) - 1) if jsd[i][i + 1] is not None]
            if pairs:
                lo = min(pairs)
                lines.append(f"- Most redundant adjacent attention (lowest JSD, Transformer layers numbered from 1): "
                             f"{lo[1] + 1}-{lo[1] + 2} ({lo[0]:.3f} bits).")
        keys = [k for k in PER_LAYER_LABELS if k in self.per_layer]
        if keys:
            lines += ["", "| layer | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for layer in range(self.num_layers):
                row = [self.per_layer[k][layer] if layer < len(self.per_layer[k]) else None for k in keys]
                vacuous = [layer in self.vacuous_layers(k) for k in keys]
                lines.append(f"| {layer} | " + " | ".join(
                    "n/a" if v is None else f"vacuous ({v:.3f})" if empty else f"{v:.3f}" + self._band_text(k, layer)
                    for k, v, empty in zip(keys, row, vacuous)) + " |")
            if any(k in self.intervals for k in keys):
                lines.append("\nIn brackets: the bootstrap interval of the layer's value.")
        timing = self.extras.get("timing")
        if timing:
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in timing["seconds"].items())
            lines += ["", f"Time: {timing['total_seconds']:.1f} s for {timing['audio_seconds']:.1f} s of audio "
                      f"({timing['audio_seconds_per_second']:.2f} s of audio per second, {timing['device']}): {phases}."]
        if self.skipped:
            lines += ["", "Skipped analyses:"] + [f"- {k}: {v}" for k, v in sorted(self.skipped.items())]
        if self.undefined:
            lines += ["", "Undefined values (stored as null):"] + [f"- {k}: {v}" for k, v in sorted(self.undefined.items())]
        return "\n".join(lines) + "\n"

    def vacuous_layers(self, key: str) -> list[int]:
        """Layers whose MI lower bound behind curve ``key`` is at or below 0 bits (or undefined);
        [] for curves that are not MI bounds or not in the report."""
        bits = self.per_layer.get(MI_BOUND_BITS.get(key, ""))
        if not bits:
            return []
        return [layer for layer, v in enumerate(bits) if v is None or not v > 0.0]

    def _vacuous_note(self, label: str, vacuous: list[int]) -> str:
        if len(vacuous) == self.num_layers:
            where = "every layer"
        else:
            where = ("layers " if len(vacuous) > 1 else "layer ") + ", ".join(map(str, vacuous))
        return (f"- {label[0].upper() + label[1:]}: vacuous at {where} (bound at or below 0 bits: the probe did no better than "
                "the held-out marginal, so no information is shown there; not a finding).")

    def plotted_values(self, key: str) -> list[float | None]:
        """The per-layer curve ``key`` as figures draw it: vacuous MI bounds are left out (None)."""
        vacuous = set(self.vacuous_layers(key))
        return [None if layer in vacuous else v for layer, v in enumerate(self.per_layer[key])]

    def curve_intervals(self, key: str) -> dict[str, Any] | None:
        """The bootstrap intervals of the per-layer curve ``key`` (``CurveIntervals.to_dict()``), or None."""
        return self.intervals.get(key)

    def tied_layers(self, key: str) -> list[int] | None:
        """The layers of curve ``key`` that ``BEST_LAYER_RULE`` does not separate from its highest one
        (``[best]`` alone: that layer is the best), or None without intervals."""
        iv = self.curve_intervals(key)
        if iv is None or iv.get("best") is None:
            return None
        from analysis.stats import CurveIntervals

        return CurveIntervals.from_dict(iv).tied_with_best()

    def _band_text(self, key: str, layer: int) -> str:
        iv = self.curve_intervals(key)
        if iv is None or layer >= len(iv["low"]) or iv["low"][layer] is None or iv["high"][layer] is None:
            return ""
        return f" [{iv['low'][layer]:.3f}, {iv['high'][layer]:.3f}]"

    @staticmethod
    def _difference(key: str, value: float) -> str:
        """A difference between two layers of curve ``key``: accuracies in points (x 100), others as they are."""
        return f"{value * 100:+.1f}" if key.startswith("probe_") else f"{value:+.3f}"

    def _top_layers_line(self, key: str, label: str, values: list[float | None], vacuous: list[int]) -> str:
        """The summary line of one curve: its best layer under ``BEST_LAYER_RULE``, the layers tied at
        the top, or (without intervals) its highest layer."""
        last = values[-1]
        last_text = ("vacuous" if self.num_layers - 1 in vacuous else "n/a") if last is None else f"{last:.3f}"
        iv = self.curve_intervals(key)
        tied = self.tied_layers(key)
        if tied is None or iv["best"] in vacuous or values[iv["best"]] is None:
            # the earliest layer among equal values, as kd.analyze.summary.peak_layers picks it
            value, index = max((v, -i) for i, v in enumerate(values) if v is not None)
            return (f"- Highest layer for {label}: {-index} ({value:.3f}; no bootstrap interval, so no layer is called "
                    f"best); last layer: {last_text}.")
        best = iv["best"]
        pct = f"{iv['level'] * 100:g}%"
        own = f"{pct} interval {_number(iv['low'][best])}-{_number(iv['high'][best])}"
        utts = f"{iv['utterances']} held-out utterances"
        if best != self.num_layers - 1 and last is not None and None not in (iv["vs_last_low"][best],
                                                                             iv["vs_last_high"][best]):
            lo, hi = iv["vs_last_low"][best], iv["vs_last_high"][best]
            unit = " points" if key.startswith("probe_") else ""
            last_text += (f" (layer {best} - last: {self._difference(key, iv['vs_last'][best])}{unit}, paired {pct} "
                          f"interval [{self._difference(key, lo)}, {self._difference(key, hi)}]{unit})")
        if tied == [best]:
            return (f"- Best layer for {label}: {best} ({values[best]:.3f}, {own}): the paired {pct} interval of layer "
                    f"{best} minus each other layer lies above 0 ({utts}); last layer: {last_text}.")
        others = [layer for layer in tied if layer != best]
        return (f"- Top layers for {label}, tied: {', '.join(map(str, tied))} (highest: layer {best}, "
                f"{values[best]:.3f}, {own}; the paired {pct} interval of layer {best} minus "
                f"{'layer' if len(others) == 1 else 'layers'} {', '.join(map(str, others))} holds 0, {utts}); "
                f"no single best layer; last layer: {last_text}.")

    def save_figures(self, out_dir: str | os.PathLike) -> list[Path]:
        """Heatmaps of the layer x layer matrices and curves of the per-layer scores."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.ticker import MaxNLocator

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        mats = dict(self.similarity)
        if self.attention.get("jsd_head_averaged"):
            mats["attention_jsd"] = self.attention["jsd_head_averaged"]
        for name, mat in mats.items():
            arr = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
            fig, ax = plt.subplots(figsize=(4.8, 4.0))
            offset = 1 if name == "attention_jsd" else 0
            im = ax.imshow(arr, origin="lower", cmap="magma" if name == "attention_jsd" else "viridis",
                           vmin=0.0, vmax=1.0, extent=(offset - 0.5, offset + len(arr) - 0.5,) * 2)
            ax.set_xlabel("layer")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if len(arr) <= 13:  # small enough to print the values
                for i in range(len(arr)):
                    for j in range(len(arr)):
                        if np.isfinite(arr[i, j]):
                            ax.text(j + offset, i + offset, f"{arr[i, j]:.2f}", ha="center", va="center",
                                    fontsize=6, color="white" if arr[i, j] < 0.6 else "black")
            ax.set_title(name.replace("_", " ") + (" (bits)" if name == "attention_jsd" else ""))
            fig.colorbar(im, ax=ax)
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        groups: dict[str, list[str]] = {}
        for key in self.per_layer:
            if key in PER_LAYER_LABELS:
                groups.setdefault(PER_LAYER_LABELS[key][0], []).append(key)
        for group, keys in groups.items():
            fig = self.per_layer_figure(keys)
            path = out / f"per_layer_{group}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        return written

    def per_layer_figure(self, keys: list[str]):
        """A matplotlib figure of the per-layer curves ``keys`` over layer index, each with its bootstrap
        interval as a band (``fill_between``) where the report holds one; vacuous MI bounds are marked
        on the zero line and left out of lines and bands. The caller closes the figure."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        vacuous_drawn = False
        for key in keys:
            ys = [np.nan if v is None else v for v in self.plotted_values(key)]
            iv = self.curve_intervals(key)
            label = PER_LAYER_LABELS[key][1]
            vacuous = self.vacuous_layers(key)
            if vacuous:  # marked on the zero line, not drawn as values
                ax.plot(vacuous, [0.0] * len(vacuous), linestyle="none", marker="x", color="grey",
                        label=None if vacuous_drawn else "vacuous bound (<= 0 bits): no value shown")
                vacuous_drawn = True
                if len(vacuous) == len(ys):
                    label += " (vacuous at every layer)"
            if iv:
                label += f"; band: {iv['level'] * 100:g}% interval, {iv['utterances']} utts"
            line, = ax.plot(range(len(ys)), ys, marker="o", label=label)
            if iv:  # bootstrap interval over utterances, where the curve is drawn
                low = [np.nan if v is None or i in vacuous else v for i, v in enumerate(iv["low"])]
                high = [np.nan if v is None or i in vacuous else v for i, v in enumerate(iv["high"])]
                ax.fill_between(range(len(low)), low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig
