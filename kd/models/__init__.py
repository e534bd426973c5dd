"""Models and their folders: the hybrid CTC/attention ASR model and its uncertainty head, the ASR
model dir format (:mod:`kd.models.model_dir`) and its export to ESPnet (:mod:`kd.models.export_espnet`),
state dicts as safetensors files (:mod:`kd.models.weights`) and the processor files of Hugging Face
folders (:mod:`kd.models.hf_processor`).

Names are imported on first use so that importing `kd.models` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "AleatoricMode": "kd.models.uncertainty",
    "AsrConfig": "kd.models.asr",
    "AsrModel": "kd.models.asr",
    "AsrOutput": "kd.models.asr",
    "FeatureNorm": "kd.models.asr",
    "InputLayer": "kd.models.asr",
    "UncertaintyHead": "kd.models.uncertainty",
    "aleatoric_nll": "kd.models.uncertainty",
    "build_asr_model": "kd.models.asr",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kd.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
