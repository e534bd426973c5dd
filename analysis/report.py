"""The analysis report: versioned JSON, PNG figures and a markdown summary.

Numbers that are undefined (for example a normalised bound where the entropy is 0) are
stored as ``null`` and listed in ``undefined`` with the reason, so a report never carries a
silent NaN.
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
    "mi_phone_bits": ("mi", "labelled bound I(Z; phone), bits"),
    "mi_cluster_bits": ("mi", "label-free bound I(Z_a; C_b), bits"),
    "mi_cluster_normalized": ("mi_norm", "label-free bound / H(C_b)"),
}

# MI lower-bound curves -> the curve in bits that decides whether a layer's bound is vacuous
# (at or below 0 bits: the probe did no better than the marginal, so the bound says nothing)
MI_BOUND_BITS = {"mi_phone_bits": "mi_phone_bits", "mi_cluster_bits": "mi_cluster_bits",
                 "mi_cluster_normalized": "mi_cluster_bits"}


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
            f"Data: `{self.data}`: {self.num_utterances} utterances, {self.num_frames} frames at "
            f"{self.frame_rate:g} frames/s; {self.num_layers} hidden-state layers (0 = input to the "
            "first Transformer layer).",
            "",
        ]
        cka = self.similarity.get("linear_cka")
        if cka:
            adjacent = [(cka[i][i + 1], i) for i in range(len(cka) - 1) if cka[i][i + 1] is not None]
            if adjacent:
                hi, lo = max(adjacent), min(adjacent)
                lines += [f"- Most similar adjacent layers (linear CKA): {hi[1]}-{hi[1] + 1} ({hi[0]:.3f}); "
                          f"least similar: {lo[1]}-{lo[1] + 1} ({lo[0]:.3f})."]
        for key, label in (("probe_phone_accuracy", "phone probe"), ("probe_speaker_accuracy", "speaker probe"),
                           ("cca_phone", "CCA with phones"), ("mi_cluster_bits", "label-free MI bound")):
            values = self.per_layer.get(key)
            vacuous = self.vacuous_layers(key)
            if values and vacuous:
                lines.append(self._vacuous_note(label, vacuous))
                values = [None if i in vacuous else v for i, v in enumerate(values)]
            if values and any(v is not None for v in values):
                # the earliest layer among equal values, as kd.summary.peak_layers picks it
                value, index = max((v, -i) for i, v in enumerate(values) if v is not None)
                best = (value, -index)
                last = values[-1]
                last_text = ("vacuous" if self.num_layers - 1 in vacuous else "n/a") if last is None else f"{last:.3f}"
                lines.append(f"- Best layer for {label}: {best[1]} ({best[0]:.3f}); last layer: {last_text}."
                             + self._probe_note(key, best[1]))
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
                    "n/a" if v is None else f"vacuous ({v:.3f})" if empty else f"{v:.3f}"
                    for v, empty in zip(row, vacuous)) + " |")
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

    def probe_intervals(self, key: str) -> dict[str, Any] | None:
        """The bootstrap intervals stored for a per-layer probe curve (``probe_phone_accuracy`` ->
        ``extras["probe_phone_intervals"]``), or None."""
        if not key.startswith("probe_") or not key.endswith("_accuracy"):
            return None
        return self.extras.get(key[: -len("_accuracy")] + "_intervals")

    def _probe_note(self, key: str, best: int) -> str:
        """For a probe: the best layer's interval and whether it beats the last layer beyond the
        choice of held-out utterances (paired bootstrap interval of the difference)."""
        iv = self.probe_intervals(key)
        if not iv or best == self.num_layers - 1 or iv["accuracy_low"][best] is None:
            return ""
        pct = f"{iv['level'] * 100:g}%"
        lo, hi = iv["vs_last_low"][best], iv["vs_last_high"][best]
        verdict = "an intermediate layer beats the last" if lo > 0 else "not resolved: the interval holds 0"
        return (f" Layer {best}: {pct} interval {iv['accuracy_low'][best]:.3f}-{iv['accuracy_high'][best]:.3f}; "
                f"layer {best} - last: {iv['vs_last'][best] * 100:+.1f} points, paired {pct} interval "
                f"[{lo * 100:+.1f}, {hi * 100:+.1f}] over {iv['heldout_utterances']} held-out utterances "
                f"({verdict}).")

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
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            vacuous_drawn = False
            for key in keys:
                ys = [np.nan if v is None else v for v in self.plotted_values(key)]
                iv = self.probe_intervals(key)
                label = PER_LAYER_LABELS[key][1]
                vacuous = self.vacuous_layers(key)
                if vacuous:  # marked on the zero line, not drawn as values
                    ax.plot(vacuous, [0.0] * len(vacuous), linestyle="none", marker="x", color="grey",
                            label=None if vacuous_drawn else "vacuous bound (<= 0 bits): no value shown")
                    vacuous_drawn = True
                    if len(vacuous) == len(ys):
                        label += " (vacuous at every layer)"
                if iv:
                    label += f"; shaded: {iv['level'] * 100:g}% interval, {iv['heldout_utterances']} held-out utts"
                line, = ax.plot(range(len(ys)), ys, marker="o", label=label)
                if iv:  # bootstrap interval over held-out utterances
                    low = [np.nan if v is None else v for v in iv["accuracy_low"]]
                    high = [np.nan if v is None else v for v in iv["accuracy_high"]]
                    ax.fill_between(range(len(low)), low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_xlabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"per_layer_{group}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        return written
