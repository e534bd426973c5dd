"""kd.training.engine: the one training loop, on a toy model (accumulation, data order, schedule,
logging, time limit, exact resume) and its optimiser construction."""

from __future__ import annotations

import pytest
import torch

from kd.core.io import read_csv_log
from kd.training.config import CheckpointConfig, OptimConfig, Schedule
from kd.training.data import epoch_batches
from kd.training.schedule import learning_rate

BUCKETS = [[i] for i in range(6)]  # 6 micro-batches an epoch, one number each
SEED = 3


def _loop(tmp_path, optim: OptimConfig, **fields):
    from kd.training.engine import TrainingLoop, build_optimizer
    from kd.training.logs import CsvLog
    from kd.training.setup import new_accelerator

    accelerator = new_accelerator(mixed_precision="no")
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = build_optimizer(model.parameters(), optim)
    model, optimizer = accelerator.prepare(model, optimizer)

    def compute(x):
        loss = model(x).pow(2).mean()
        return loss, {"loss": loss.detach(), "x": x.mean()}

    loop = TrainingLoop(
        accelerator=accelerator, model=model, optimizer=optimizer, optim=optim, dataset=[float(v) for v in range(1, 7)],
        buckets=BUCKETS, seed=SEED, compute=compute,
        lr_at=lambda step, total: learning_rate(optim, step, d_model=1, total_steps=total),
        checkpoint_root=tmp_path / "checkpoints", checkpoint=fields.pop("checkpoint", CheckpointConfig(every_steps=0)),
        log=CsvLog(tmp_path / "log.csv"), collate=lambda items: torch.tensor(items)[:, None], progress=False, **fields)
    return loop.run(), read_csv_log(tmp_path / "log.csv"), accelerator.unwrap_model(model).weight.detach().clone()


def test_loop_accumulates_logs_and_follows_the_schedule(tmp_path):
    optim = OptimConfig(lr=0.1, schedule=Schedule.WARMUP_COSINE, warmup_steps=2, max_steps=4, grad_accum=2,
                        clip_norm=None)
    result, rows, _ = _loop(tmp_path, optim, before_update=lambda step: {"twice": 2.0 * step})
    assert result.steps == 4 and not result.stopped_early and result.resumed_from is None
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([learning_rate(optim, s, d_model=1, total_steps=4)
                                                     for s in (1, 2, 3, 4)])
    assert [r["twice"] for r in rows] == [2.0, 4.0, 6.0, 8.0]  # before_update's numbers, per step
    # two micro-batches per update, in each epoch's order, epochs wrap around: the logged x is their mean
    order = [1 + b[0] for e in (0, 1) for b in epoch_batches(BUCKETS, seed=SEED, epoch=e, rank=0, world_size=1)]
    assert [r["x"] for r in rows] == pytest.approx([(order[i] + order[i + 1]) / 2 for i in (0, 2, 4, 6)])
    assert [r["epoch"] for r in rows] == pytest.approx([1 / 3, 2 / 3, 1.0, 1 + 1 / 3], abs=1e-4)
    assert list(rows[0])[:4] == ["step", "epoch", "lr", "loss"] and list(rows[0])[-2:] == ["audio_s_per_s",
                                                                                           "steps_per_s"]


def test_loop_stops_at_the_time_limit_and_a_resume_continues(tmp_path):
    optim = OptimConfig(lr=0.01, warmup_steps=1, max_steps=5, time_limit_s=1e-9)
    result, rows, _ = _loop(tmp_path, optim)
    assert result.stopped_early and result.steps == 1 and len(rows) == 1
    from kd.training.checkpoint import list_checkpoints

    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [1]  # a final checkpoint
    result, rows, _ = _loop(tmp_path, OptimConfig(lr=0.01, warmup_steps=1, max_steps=5))  # no limit: on to the end
    assert result.resumed_from == 1 and result.steps == 5 and not result.stopped_early
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


def test_a_resumed_run_ends_with_the_uninterrupted_weights(tmp_path):
    """Stopped after 4 of 9 steps (mid-epoch, a short last group) and resumed: the weights, the Adam
    state and the data position carry over, so the end is exactly that of one run of 9 steps."""
    optim = OptimConfig(lr=0.05, warmup_steps=2, max_steps=9, grad_accum=4)  # groups of 4, 2 per epoch
    full, full_rows, full_weight = _loop(tmp_path / "full", optim)
    first, _, _ = _loop(tmp_path / "parts", OptimConfig(lr=0.05, warmup_steps=2, max_steps=4, grad_accum=4))
    assert first.steps == 4 and first.epoch == 2 and first.batch == 0
    second, rows, weight = _loop(tmp_path / "parts", optim)
    assert second.resumed_from == 4 and second.steps == full.steps == 9
    assert torch.equal(weight, full_weight)
    assert [r["loss"] for r in rows] == [r["loss"] for r in full_rows]


def test_optimizer_is_adam_or_adamw_with_group_scales():
    from kd.training.engine import build_optimizer, set_learning_rate

    a, b, frozen = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    frozen.requires_grad_(False)
    optimizer = build_optimizer([{"params": [a, frozen]}, {"params": [b], "lr_scale": 0.1}],
                                OptimConfig(weight_decay=0.5, decoupled_weight_decay=True))
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]  # parameters without a gradient left out
    set_learning_rate(optimizer, 2.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.0, 0.2])
    # AdamW's decay shrinks the weights directly; Adam's adds an L2 term to the gradient, which Adam's scaling
    # then cancels: with a zero gradient the first update is lr * wd * w and lr * sign(w) respectively
    for decoupled, expected in ((True, 1.0 - 0.1 * 0.5), (False, 1.0 - 0.1)):
        w = torch.nn.Parameter(torch.ones(1))
        opt = build_optimizer([w], OptimConfig(lr=0.1, weight_decay=0.5, decoupled_weight_decay=decoupled))
        w.grad = torch.zeros(1)
        opt.step()
        assert w.item() == pytest.approx(expected, rel=1e-5), decoupled
    with pytest.raises(ValueError, match="at least one parameter that needs a gradient"):
        build_optimizer([frozen], OptimConfig())
