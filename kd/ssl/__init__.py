"""The wav2vec 2.0 family: a self-supervised teacher (pre-training on unlabelled audio, then CTC
fine-tuning) and the layer-to-layer distillation of its compressed students (``kd distill-layers``,
:mod:`kd.ssl.layer_distill`), trained on the toolkit's one training stack (:mod:`kd.training.engine`,
with the checkpoints of :mod:`kd.training.checkpoint` and the ``OptimConfig`` of
:mod:`kd.training.config`; the stage plumbing is in :mod:`kd.ssl.common`). The same layer-to-layer
distillation, its loss, heads and config, is a stage for the students of the toolkit's ESPnet hybrid
CTC/attention models too (:mod:`kd.ssl.asr_layer_distill`).

``pretrain(config, data_dirs, out_dir)`` and ``finetune_ctc(pretrained_dir, data_dirs, out_dir,
config)`` are stages that hand over Hugging Face folders and skip themselves when finished.
Importing this package is cheap; transformers and accelerate load when a stage runs.
The pre-training stage is ``kd.ssl.pretrain.pretrain`` (the module shares the function's name,
so the package does not re-export it).
"""

from __future__ import annotations

from kd.core.lazy import lazy_exports

_LAZY = {
    "SSLConfig": "kd.ssl.config",
    "CTCConfig": "kd.ssl.config",
    "BatchConfig": "kd.ssl.config",
    "sample_masks": "kd.ssl.pretrain",
    "finetune_ctc": "kd.ssl.finetune",
    "evaluate_ctc": "kd.ssl.finetune",
    "greedy_ctc_decode": "kd.ssl.finetune",
    "StageResult": "kd.ssl.common",
    "list_stage_checkpoints": "kd.ssl.common",
    "load_speech_model": "kd.compression.io",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
