"""Cross-model layer similarity: checkpoints of one training run, or a teacher and its student.

``compare_models(models, reference, data_dir)`` runs every model and the reference over the
same utterances, side by side, and accumulates one :class:`analysis.streaming.LayerMoments` per
model over the concatenation of its layers and the reference's layers (one streaming pass,
float64, memory independent of the number of frames). From it come the linear CKA between every layer of the
model and every layer of the reference, and the same-layer CKA curve (layer l against reference
layer l) that learning-dynamics plots show.

Frames are paired in time. Models with the same frame rate give the same frame count up to
edge effects of their convolutions; the shorter count is kept. When the rates differ (a
student with another subsampling), each frame of the coarser model is paired with the frame
of the finer model whose centre is nearest in time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["ModelComparison", "compare_models", "pair_frames", "save_comparison"]


def pair_frames(n_a: int, rate_a: float, n_b: int, rate_b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into A's and B's frames that pair them in time (the coarser model sets the count).

    Frame i of a model at rate r covers [i / r, (i + 1) / r) seconds; its centre is (i + 0.5) / r.
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"pair_frames: expected at least one frame in each model, found {n_a} and {n_b}")
    if abs(rate_a - rate_b) <= 1e-9 * max(rate_a, rate_b):
        n = min(n_a, n_b)
        return torch.arange(n), torch.arange(n)
    if rate_a < rate_b:  # A is coarser: every A frame gets its nearest B frame
        idx_a = torch.arange(min(n_a, int(n_b * rate_a / rate_b) + 1))
        idx_b = ((idx_a + 0.5) * (rate_b / rate_a) - 0.5).round().long().clamp(0, n_b - 1)
        return idx_a, idx_b
    idx_b, idx_a = pair_frames(n_b, rate_b, n_a, rate_a)
    return idx_a, idx_b


@dataclass
class ModelComparison:
    """Linear CKA of each model's layers against the reference's layers."""

    reference: str
    data: str
    num_utterances: int
    models: list[str] = field(default_factory=list)
    cka: list[list[list[float]]] = field(default_factory=list)  # per model: [layers of model][layers of reference]
    frames: list[int] = field(default_factory=list)  # paired frames per model

    def same_layer(self, index: int) -> list[float]:
        """CKA of layer l of model ``index`` with reference layer l, for the layers both have."""
        matrix = self.cka[index]
        return [matrix[l][l] for l in range(min(len(matrix), len(matrix[0])))]

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "reference": self.reference, "data": self.data,
                "num_utterances": self.num_utterances, "models": self.models, "frames": self.frames,
                "linear_cka": self.cka, "same_layer_cka": [self.same_layer(i) for i in range(len(self.models))]}


def compare_models(models: Sequence[str | os.PathLike], reference: str | os.PathLike, data_dir: str | os.PathLike,
                   *, max_utterances: int | None = 100, batch_seconds: float = 60.0, device: str = "cpu",
                   seed: int = 0, progress: bool = False) -> ModelComparison:
    """Linear CKA between the layers of each of ``models`` and those of ``reference``.

    All models and the reference run side by side over the same batches (each forward pass once;
    activations are folded into the moments utterance by utterance, never stored).

    Args:
        models: model dirs (Hugging Face checkpoints, kd model or run dirs; see ``kd analyze``).
        reference: the model every other one is compared with (e.g. the final checkpoint).
        data_dir: utterances to run (at most ``max_utterances``, drawn with ``seed``).
    """
    from tqdm.auto import tqdm

    from analysis.capture import iter_activations
    from analysis.streaming import LayerMoments, pairwise_linear_cka
    from kd.analyze.layerwise import load_layerwise_model, sample_utterances
    from kd.data import load_data_dir
    from kd.data.batching import AudioDataset, bucket_batches, collate

    if not models:
        raise ValueError("models: expected at least one model to compare, found none")
    data = sample_utterances(load_data_dir(data_dir), max_utterances, seed)
    dataset = AudioDataset(data)
    batches = bucket_batches(dataset.durations(), max_seconds=batch_seconds, shuffle=False)

    def batch_iter():
        for b in batches:
            batch = collate([dataset[i] for i in b])
            yield batch.utts, batch.speech, batch.speech_lengths

    def finite(utt) -> list[torch.Tensor]:
        hidden = [h.to(torch.float32) for h in utt.hidden]
        if not all(torch.isfinite(h).all() for h in hidden):
            raise ValueError(f"utterance {utt.utt!r}: the model produced NaN or inf activations")
        return hidden

    ref_model = load_layerwise_model(reference, device=device)
    loaded = [load_layerwise_model(path, device=device) for path in models]
    moments: list[LayerMoments | None] = [None] * len(loaded)
    frames = [0] * len(loaded)
    streams = [iter_activations(m, batch_iter(), device=device) for m in [ref_model, *loaded]]
    count = 0
    # every stream yields the same utterances in the same order (same batches, same lengths)
    for utts in tqdm(zip(*streams), total=len(dataset), desc="activations", disable=not progress):
        ref = finite(utts[0])
        for k, (model, utt) in enumerate(zip(loaded, utts[1:])):
            assert utt.utt == utts[0].utt, (utt.utt, utts[0].utt)
            hidden = finite(utt)
            ia, ib = pair_frames(hidden[0].shape[0], model.frame_rate, ref[0].shape[0], ref_model.frame_rate)
            layers = [h[ia.to(h.device)] for h in hidden] + [h[ib.to(h.device)] for h in ref]
            if moments[k] is None:
                moments[k] = LayerMoments([h.shape[-1] for h in layers], device=layers[0].device)
            moments[k].update(layers)
            frames[k] += len(ia)
        count += 1
    if count == 0:
        raise ValueError(f"{data_dir}: no utterance to compare")
    result = ModelComparison(reference=str(reference), data=str(data_dir), num_utterances=count)
    lb = ref_model.num_layers
    for path, model, m, n in zip(models, loaded, moments, frames):
        la = model.num_layers
        block = pairwise_linear_cka(m, rows=list(range(la)), cols=list(range(la, la + lb)))
        result.models.append(str(path))
        result.cka.append(block.tolist())
        result.frames.append(n)
    return result


def save_comparison(comparison: ModelComparison, out_dir: str | os.PathLike, *, labels: Sequence[str] | None = None,
                    title: str = "") -> list[Path]:
    """``comparison.json`` and a PNG of the same-layer CKA curves (one line per model)."""
    from kd.analyze.figures import plot_layer_curves
    from kd.core.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", comparison.to_dict())
    labels = list(labels) if labels is not None else [Path(m).name for m in comparison.models]
    curves = {label: comparison.same_layer(i) for i, label in enumerate(labels)}
    path = plot_layer_curves(curves, out / "same_layer_cka.png", ylim=(0, 1.02),
                             ylabel="linear CKA with the same layer of the reference",
                             title=title or f"against {Path(comparison.reference).name}")
    return [out / "comparison.json", path]
