"""Cross-model layer similarity: checkpoints of one training run, or a teacher and its student.

``compare_models(models, reference, data_dir)`` runs every model and the reference over the
same utterances and accumulates one :class:`analysis.streaming.LayerMoments` per model over the
concatenation of its layers and the reference's layers (one streaming pass, float64, memory
independent of the number of frames). From it come the linear CKA between every layer of the
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

    Args:
        models: model dirs (Hugging Face checkpoints, kd model or run dirs; see ``kd analyze``).
        reference: the model every other one is compared with (e.g. the final checkpoint).
        data_dir: utterances to run (at most ``max_utterances``, drawn with ``seed``).
    """
    import numpy as np
    from tqdm.auto import tqdm

    from analysis.capture import iter_activations
    from analysis.streaming import LayerMoments, pairwise_linear_cka
    from kd.analyze import load_layerwise_model
    from kd.data import load_data_dir
    from kd.data.batching import AudioDataset, bucket_batches, collate

    if not models:
        raise ValueError("models: expected at least one model to compare, found none")
    data = load_data_dir(data_dir)
    if max_utterances is not None and len(data.utterances) > max_utterances:
        order = np.random.default_rng(seed).permutation(len(data.utterances))[:max_utterances]
        data = type(data)(data.root, [data.utterances[i] for i in sorted(order)], data.skipped)
    dataset = AudioDataset(data)
    batches = bucket_batches(dataset.durations(), max_seconds=batch_seconds, shuffle=False)

    def activations(model) -> dict[str, list[torch.Tensor]]:
        def batch_iter():
            for b in batches:
                batch = collate([dataset[i] for i in b])
                yield batch.utts, batch.speech, batch.speech_lengths

        out = {}
        for utt in tqdm(iter_activations(model, batch_iter(), device=device), total=len(dataset),
                        desc="activations", disable=not progress):
            hidden = [h.to(torch.float32) for h in utt.hidden]
            if not all(torch.isfinite(h).all() for h in hidden):
                raise ValueError(f"utterance {utt.utt!r}: the model produced NaN or inf activations")
            out[utt.utt] = hidden
        return out

    ref_model = load_layerwise_model(reference, device=device)
    ref_acts = activations(ref_model)
    result = ModelComparison(reference=str(reference), data=str(data_dir), num_utterances=len(ref_acts))
    for path in models:
        model = load_layerwise_model(path, device=device)
        acts = activations(model)
        moments, frames = None, 0
        for utt, hidden in acts.items():
            ref = ref_acts[utt]
            ia, ib = pair_frames(hidden[0].shape[0], model.frame_rate, ref[0].shape[0], ref_model.frame_rate)
            layers = [h[ia.to(h.device)] for h in hidden] + [h[ib.to(h.device)] for h in ref]
            if moments is None:
                moments = LayerMoments([h.shape[-1] for h in layers], device=layers[0].device)
            moments.update(layers)
            frames += len(ia)
        if moments is None:
            raise ValueError(f"{data_dir}: no utterance to compare")
        la, lb = len(hidden), len(ref)
        block = pairwise_linear_cka(moments, rows=list(range(la)), cols=list(range(la, la + lb)))
        result.models.append(str(path))
        result.cka.append(block.tolist())
        result.frames.append(frames)
        del model
    return result


def save_comparison(comparison: ModelComparison, out_dir: str | os.PathLike, *, labels: Sequence[str] | None = None,
                    title: str = "") -> list[Path]:
    """``comparison.json`` and a PNG of the same-layer CKA curves (one line per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kd.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", comparison.to_dict())
    labels = list(labels) if labels is not None else [Path(m).name for m in comparison.models]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(labels):
        curve = comparison.same_layer(i)
        ax.plot(range(len(curve)), curve, marker="o", label=label)
    ax.set_xlabel("layer (0 = input of the first Transformer layer)")
    ax.set_ylabel("linear CKA with the same layer of the reference")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"against {Path(comparison.reference).name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "same_layer_cka.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [out / "comparison.json", path]
