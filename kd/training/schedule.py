"""Learning-rate schedules as pure functions of the optimizer step.

The learning rate of step t depends on t alone, so a resumed run restores its schedule from
the step count in the checkpoint; there is no scheduler state to save.
"""

from __future__ import annotations

import math

from kd.training.config import OptimConfig, Schedule

__all__ = ["learning_rate"]


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
    warm = min(1.0, t / w) if w > 0 else 1.0
    if config.schedule is Schedule.CONSTANT or t <= w:
        return lr * warm
    # cosine from lr at t = w to min_lr_ratio * lr at t = total_steps, flat afterwards
    progress = min(1.0, (t - w) / max(1.0, total_steps - w))
    floor = config.min_lr_ratio
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
