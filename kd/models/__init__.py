"""Models and their folders: the hybrid CTC/attention ASR model and its uncertainty head, the ASR
model dir format (:mod:`kd.models.model_dir`) and its export to ESPnet (:mod:`kd.models.export_espnet`),
state dicts as safetensors files (:mod:`kd.models.weights`) and the processor files of Hugging Face
folders (:mod:`kd.models.hf_processor`).

Names are imported on first use so that importing `kd.models` stays cheap.
"""

from __future__ import annotations

from kd.core.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
