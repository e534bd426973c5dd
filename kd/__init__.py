"""speech-kd: analyse, compress and distil speech Transformers.

Importing this package is cheap: heavy dependencies (transformers, ESPnet,
accelerate) are imported only when the names that need them are first used.
"""

from __future__ import annotations

from kd.core.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "CompressionPlan": "kd.plan",
    "first_k": "kd.plan.planners",
    "every_k": "kd.plan.planners",
    "linspace": "kd.plan.planners",
    "plan_from_similarity": "kd.plan.planners",
    "stand_in_dissimilarity": "kd.plan.planners",
    "compress": "kd.compression",
    "asr_student": "kd.compression.asr",
    "apply_structure": "kd.compression",
    "count_parameters": "kd.compression",
    "save_student": "kd.compression",
    "load_student": "kd.compression",
    "AsrConfig": "kd.models.asr",
    "build_asr_model": "kd.models.asr",
    "KDLossConfig": "kd.training.losses",
    "kd_loss": "kd.training.losses",
    "load_data_dir": "kd.data",
    "normalize_text": "kd.data",
    "build_corpus": "kd.corpus.synth",
    "DecodeConfig": "kd.evaluation.decode",
    "decode": "kd.evaluation.decode",
    "evaluate": "kd.evaluation.evaluate",
    "save_model_dir": "kd.models.model_dir",
    "load_model_dir": "kd.models.model_dir",
    "export_espnet": "kd.models.export_espnet",
    "train_from_yaml": "kd.training.loop",  # train() and distill() are in kd.training.loop too
    "distill_from_yaml": "kd.training.loop",
    "TrainResult": "kd.training.loop",
    "TrainConfig": "kd.training.config",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY) + ["__version__"]
