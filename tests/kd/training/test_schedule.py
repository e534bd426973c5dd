"""kd.training.schedule: one warmup-cosine schedule for ASR training and the wav2vec 2.0 stages."""

from __future__ import annotations

import math

import pytest

from kd.ssl.config import ssl_optim
from kd.training.config import OptimConfig, Schedule
from kd.training.schedule import learning_rate, warmup_cosine


def test_warmup_cosine_reference_values():
    kw = {"lr": 2.0, "warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}
    assert warmup_cosine(1, **kw) == pytest.approx(0.2) and warmup_cosine(10, **kw) == pytest.approx(2.0)
    assert warmup_cosine(60, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # half way down the cosine
    assert warmup_cosine(85, **kw) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi))))
    assert warmup_cosine(110, **kw) == pytest.approx(0.2) == warmup_cosine(500, **kw)  # flat after the end
    assert warmup_cosine(1, lr=1.0, warmup_steps=0, total_steps=1, min_lr_ratio=0.5) == 0.5  # no warmup
    with pytest.raises(ValueError, match="step: expected >= 1, found 0"):
        warmup_cosine(0, **kw)


def test_asr_and_ssl_configs_follow_the_same_schedule_exactly():
    asr = OptimConfig(lr=0.004, schedule=Schedule.WARMUP_COSINE, warmup_steps=30, min_lr_ratio=0.05)
    ssl = ssl_optim(lr=0.004, warmup_steps=30, min_lr_ratio=0.05, max_steps=400)  # the wav2vec 2.0 stages' defaults
    for step in (1, 7, 30, 31, 100, 215, 399, 400, 401):
        expected = warmup_cosine(step, lr=0.004, warmup_steps=30, total_steps=400, min_lr_ratio=0.05)
        assert learning_rate(asr, step, d_model=96, total_steps=400) == expected
        assert learning_rate(ssl, step, d_model=64, total_steps=400) == expected
