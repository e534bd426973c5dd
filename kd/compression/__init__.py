"""Build a student from a teacher and a :class:`~kd.plan.CompressionPlan`.

``compress(teacher, plan)`` returns a new model (the teacher is left untouched) that

1. keeps the planned teacher layers, in order (pruning; real layers removed, not masked),
2. makes the layers of each share group use their leader's parameters (ALBERT-style sharing:
   ``model.parameters()`` and saved files hold each shared tensor once),
3. makes the followers of each attention-reuse group take their leader's attention
   probabilities and compute only value and output projections.

Model families are handled by adapters chosen by ``isinstance`` on the model. The registry names
each supported class by module and class name so that this package imports neither transformers
nor ESPnet: a class is resolved only if its module is already imported, which it must be when a
model of that class exists.

Saving and loading students is :mod:`kd.compression.io`; ``kd compress`` (a plan applied to a model
folder on disk) is :mod:`kd.compression.apply`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from kd.compression.reuse import tie_parameters
from kd.plan import CompressionPlan

__all__ = ["apply_structure", "compress", "count_parameters", "load_student", "save_student", "supported_types"]


@dataclass(frozen=True)
class _Entry:
    module: str  # where the model class is defined
    name: str  # the class
    adapters: str  # module with an ADAPTERS dict
    key: str  # key in that dict


_TF = "transformers.models"
_REGISTRY = (
    *(_Entry(f"{_TF}.wav2vec2.modeling_wav2vec2", c, "kd.compression.hf", "wav2vec2")
      for c in ("Wav2Vec2Model", "Wav2Vec2ForCTC", "Wav2Vec2ForPreTraining")),
    *(_Entry(f"{_TF}.hubert.modeling_hubert", c, "kd.compression.hf", "hubert") for c in ("HubertModel", "HubertForCTC")),
    *(_Entry(f"{_TF}.wavlm.modeling_wavlm", c, "kd.compression.hf", "wavlm") for c in ("WavLMModel", "WavLMForCTC")),
    _Entry("espnet2.asr.encoder.transformer_encoder", "TransformerEncoder", "kd.compression.espnet_encoder", "encoder"),
    _Entry("espnet2.asr.espnet_model", "ESPnetASRModel", "kd.compression.espnet_encoder", "espnet_model"),
    _Entry("kd.models.asr", "AsrModel", "kd.compression.espnet_encoder", "asr_model"),
)


def supported_types() -> list[str]:
    """Qualified names of the model classes ``compress`` accepts."""
    return [f"{e.module}.{e.name}" for e in _REGISTRY]


def _resolve(entry: _Entry) -> type | None:
    module = sys.modules.get(entry.module)
    return None if module is None else getattr(module, entry.name, None)


def _entry_for(model: Any) -> _Entry:
    for entry in _REGISTRY:
        cls = _resolve(entry)
        if cls is not None and isinstance(model, cls):
            return entry
    raise TypeError(f"cannot compress a {type(model).__module__}.{type(model).__name__}; supported model "
                    f"types: {', '.join(e.name for e in _REGISTRY)}")


def _adapter_for(model: Any):
    entry = _entry_for(model)
    return importlib.import_module(entry.adapters).ADAPTERS[entry.key]


def compress(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """A new student built from ``model`` (a teacher of a supported type) by ``plan``.

    Raises ``TypeError`` for an unsupported model and ``ValueError`` for a plan that does not
    fit the model (for example teacher layers beyond the model's depth).
    """
    if not isinstance(plan, CompressionPlan):
        raise TypeError(f"plan: expected a CompressionPlan, found {type(plan).__name__}")
    adapter = _adapter_for(model)
    plan.validate(len(adapter.layers(model)))
    student = adapter.copy_pruned(model, plan.keep_layers)
    _share_and_reuse(adapter, student, plan)
    return student


def apply_structure(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """Apply the sharing and attention reuse of ``plan`` in place, without pruning.

    For a model freshly built with the student's depth (``plan.num_student_layers`` layers), e.g.
    before loading a saved student's weights. Returns ``model``.
    """
    adapter = _adapter_for(model)
    depth = len(adapter.layers(model))
    if depth != plan.num_student_layers:
        raise ValueError(f"apply_structure: the plan describes a student with {plan.num_student_layers} layers, "
                         f"the model has {depth}")
    _share_and_reuse(adapter, model, plan)
    return model


def _share_and_reuse(adapter, model: nn.Module, plan: CompressionPlan) -> None:
    layers = adapter.layers(model)
    for group in plan.share_groups:
        for follower in group[1:]:
            tie_parameters(layers[group[0]], layers[follower], leader_index=group[0], follower_index=follower)
    groups: Sequence[Sequence[int]] = [g for g in plan.attention_reuse if len(g) > 1]
    if groups:
        adapter.install_reuse(model, groups)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def __getattr__(name: str) -> Any:  # save/load live in kd.compression.io (imports safetensors)
    if name in ("save_student", "load_student"):
        return getattr(importlib.import_module("kd.compression.io"), name)
    raise AttributeError(f"module 'kd.compression' has no attribute {name!r}")
