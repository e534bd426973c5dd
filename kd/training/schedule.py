"""Learning-rate schedules as pure functions of the optimizer step.

The learning rate of step t depends on t alone, so a resumed run restores its schedule from
the step count in the checkpoint; there is no scheduler state to save.
"""

from __future__ import annotations

import math

from kd.training.config import OptimConfig, Schedule

__all__ = ["learning_rate", "warmup_cosine"]


def learning_rate(config: OptimConfig, step: int, *, d_model: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (1 for the first update).

    Args:
        config: the optimisation section (lr, schedule, warmup_steps, min_lr_ratio).
        step: t >= 1.
        d_model: the model width (used by the Noam schedule only).
        total_steps: the last step of the run (used by the cosine schedule only).
    """
    if step < 1:
        raise ValueError(f"step: expected >= 1, found {step}")
    t, w, lr = float(step), float(config.warmup_steps), config.lr
    if config.schedule is Schedule.NOAM:
        return lr * d_model**-0.5 * min(t**-0.5, t * w**-1.5)
    if config.schedule is Schedule.WARMUP_INVERSE_SQRT:
        return lr * min(t / w, math.sqrt(w / t))
    if config.schedule is Schedule.CONSTANT:
        return lr * (min(1.0, t / w) if w > 0 else 1.0)
    return warmup_cosine(step, lr=lr, warmup_steps=config.warmup_steps, total_steps=total_steps,
                         min_lr_ratio=config.min_lr_ratio)


def warmup_cosine(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then a cosine from ``lr`` to ``min_lr_ratio * lr``
    at ``total_steps``, flat afterwards: the schedule of ASR training (``Schedule.WARMUP_COSINE``) and of the
    wav2vec 2.0 stages (their ``optim``, also an :class:`~kd.training.config.OptimConfig`: :func:`kd.ssl.config.ssl_optim`)."""
    if step < 1:
        raise ValueError(f"step: expected >= 1, found {step}")
    t, w = float(step), float(warmup_steps)
    if t <= w:
        return lr * t / w
    progress = min(1.0, (t - w) / max(1.0, total_steps - w))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
