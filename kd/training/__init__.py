"""Training and distillation of the hybrid CTC/attention ASR models (``kd train``, ``kd distill``).

:mod:`kd.training.engine` is the toolkit's one training loop, which every trainer runs on (this
package's ASR runs and the wav2vec 2.0 stages of :mod:`kd.ssl`); :mod:`kd.training.loop` runs ASR
training and distillation on it (``train``, ``distill``; ``python -m kd.training.loop``); around them:
the config, the KD losses (:mod:`kd.training.losses`), data order, steps, checkpoints, schedules,
frozen teachers and logs.

Names are imported on first use so that importing `kd.training` stays cheap.
"""

from __future__ import annotations

from kd.core.lazy import lazy_exports

# public name -> module that defines it
_LAZY = {
    "CheckpointInfo": "kd.training.checkpoint",
    "KDConfig": "kd.training.config",
    "OptimConfig": "kd.training.config",
    "TeacherCache": "kd.training.teachers",
    "TeacherSpec": "kd.training.config",
    "TrainConfig": "kd.training.config",
    "TrainingLoop": "kd.training.engine",
    "average_checkpoints": "kd.training.checkpoint",
    "latest_checkpoint": "kd.training.checkpoint",
    "learning_rate": "kd.training.schedule",
    "list_checkpoints": "kd.training.checkpoint",
    "load_run_model": "kd.training.teachers",
    "load_run_tokenizer": "kd.training.data",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
