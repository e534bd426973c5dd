"""The toolkit's one training loop on `accelerate`: every trainer (ASR training and distillation,
wav2vec 2.0 pre-training, CTC fine-tuning, layer-to-layer distillation) runs its steps here.

A trainer supplies the model and optimizer (both from ``accelerator.prepare``), the data as length
buckets of utterance indices, and ``compute(batch) -> (loss, parts)``: the scalar loss of one
micro-batch and the tensors or numbers to log. :class:`TrainingLoop` does the rest, the same way
for every trainer:

- data order: each epoch shuffles the buckets with the seed and the epoch, and process r of P takes
  buckets r, r + P, ... (:func:`kd.training.data.epoch_batches`);
- an optimizer step accumulates ``optim.grad_accum`` micro-batches (the last step of an epoch may have
  fewer), each loss divided by the group's size; gradients are synchronised between processes on the
  last micro-batch of a group only (``accelerator.no_sync`` on the others). The groups are formed
  explicitly rather than with ``accelerator.accumulate``, whose step counter would carry a short last
  group of an epoch over into the next epoch's first step;
- clipping (``optim.clip_norm``), the learning rate of step t from ``lr_at(t, total_steps)`` (a pure
  function of the step, so nothing of a scheduler needs saving), times each parameter group's
  ``lr_scale`` (default 1);
- one CSV row (:class:`kd.training.logs.CsvLog`) every ``log_every`` steps: ``step``, ``epoch``, ``lr``,
  the per-step means of the parts (averaged over processes), ``grad_norm``, what ``before_update``
  returned for the last step, ``audio_s_per_s`` and ``steps_per_s``. The parts are summed on the
  device and read once per row, so a step does not wait for the accelerator to log;
- checkpoints in the format of :mod:`kd.training.checkpoint` (atomic ``step-N`` folders, flushed to
  disk, pruned to the kept ones) every ``checkpoint.every_steps`` steps, at epoch ends
  (``checkpoint.at_epoch_end``), at ``save_steps`` and after the last step; each holds the weights, the
  optimizer (and grad scaler) state, every process's RNG states and the data position, so a run
  resumed from any of them continues exactly as the uninterrupted run would have (bit for bit with
  deterministic algorithms on a CPU);
- ``optim.time_limit_s``: every process stops after the same step once that much time has passed, and a
  checkpoint is written; resuming with a higher limit (or none) continues the run.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import torch

from kd.training.checkpoint import (WEIGHTS, begin_checkpoint, capture_rng, finish_checkpoint, latest_checkpoint,
                                    load_optimizer_state, load_rng, load_weights, prune_checkpoints, restore_rng,
                                    save_rng)
from kd.training.config import CheckpointConfig, OptimConfig
from kd.training.logs import CsvLog

__all__ = ["LoopResult", "Position", "TrainingLoop", "build_optimizer", "numerics", "set_learning_rate", "total_steps"]


@contextlib.contextmanager
def numerics(*, deterministic: bool, tf32: bool) -> Iterator[None]:
    """Within the block: deterministic algorithms when ``deterministic`` (needed for a resumed run to end
    with exactly the weights of an uninterrupted one: on a CPU, the backward of some indexing operations
    otherwise adds in the order its threads finish) and TF32 matmuls on CUDA as ``tf32`` says; both
    settings are restored afterwards."""
    if deterministic:  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.use_deterministic_algorithms(deterministic or was_deterministic)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cuda.matmul.allow_tf32 = was_tf32


def build_optimizer(parameters: Iterable, optim: OptimConfig, device: torch.device | str = "cpu") -> torch.optim.Adam:
    """Adam, or AdamW with ``optim.decoupled_weight_decay``, over the parameters that need a gradient.

    ``parameters``: tensors, or parameter groups (dicts with ``params``) as torch takes them; a
    group's ``lr_scale`` (default 1) multiplies the scheduled learning rate of every step
    (:func:`set_learning_rate`). Groups left without trainable parameters are dropped. The fused
    kernel (``optim.fused``) is used on CUDA only.
    """
    items = list(parameters)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
    else:
        groups = [{"params": [p for p in items if p.requires_grad]}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("parameters: expected at least one parameter that needs a gradient, found none")
    return torch.optim.Adam(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                            weight_decay=optim.weight_decay, decoupled_weight_decay=optim.decoupled_weight_decay,
                            fused=optim.fused and torch.device(device).type == "cuda")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def total_steps(optim: OptimConfig, steps_per_epoch: int) -> int:
    """The run's last step: ``optim.max_steps`` or ``optim.max_epochs`` epochs, whichever comes first."""
    epochs = optim.max_epochs or sys.maxsize // max(steps_per_epoch, 1)
    return min(optim.max_steps or sys.maxsize, epochs * steps_per_epoch)


@dataclass
class Position:
    """Where a run stands: optimizer steps done, the epoch to continue in, and the micro-batches of that
    epoch each process has consumed."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class LoopResult:
    """What :meth:`TrainingLoop.run` did."""

    steps: int  # optimizer steps done in total
    epoch: int  # epoch to continue in
    batch: int  # micro-batches of that epoch consumed
    batches_per_epoch: int  # micro-batches of one epoch per process
    resumed_from: int | None  # step of the checkpoint this invocation started from
    seconds: float  # wall time of this invocation's loop (evaluation and checkpoints included)
    logged_steps: int  # steps of this invocation in the logged windows
    audio_seconds: float  # training audio of those steps (all processes)
    final_loss: float | None  # mean loss of the last logged window
    stopped_early: bool  # optim.time_limit_s ended the run before its last step

    @property
    def epochs(self) -> float:
        """Passes over the training data (fractional)."""
        return round(self.epoch + self.batch / self.batches_per_epoch, 4)


@dataclass
class TrainingLoop:
    """One training run's steps; see the module docstring. Build it, then call :meth:`run`."""

    accelerator: Any
    model: torch.nn.Module  # from accelerator.prepare
    optimizer: torch.optim.Optimizer  # from accelerator.prepare
    optim: OptimConfig
    dataset: Any  # an AudioDataset (or a Subset of one): kd.training.data.make_loader batches it
    buckets: Sequence[Sequence[int]]  # length buckets of dataset indices, one micro-batch each
    seed: int  # data order and (per process) the global RNGs of training
    compute: Callable[[Any], tuple[torch.Tensor, Mapping[str, Any]]]  # micro-batch -> (loss, parts to log)
    lr_at: Callable[[int, int], float]  # (step >= 1, total steps) -> learning rate
    checkpoint_root: Path
    checkpoint: CheckpointConfig
    log: CsvLog
    log_every: int = 1
    num_workers: int = 0  # DataLoader processes reading audio
    noise: torch.Generator | None = None  # a generator of the trainer's own, saved and restored with the RNGs
    # seconds of audio in a batch, from host values (the ASR trainer also checks the batch here, before
    # compute moves it to the device)
    audio_seconds: Callable[[Any], float] | None = None
    before_update: Callable[[int], Mapping[str, float]] | None = None  # step -> numbers to log for it
    evaluate: Callable[[Position], Any] | None = None  # before each checkpoint: DevScores (loss, acc) or None
    save_steps: Collection[int] = ()  # steps that get a checkpoint which is never pruned
    checkpoint_files: Callable[[Path, int], None] | None = None  # (unfinished checkpoint folder, step), main process
    other_logs: Sequence[CsvLog] = ()  # logs truncated to the checkpoint's step on resume, as ``log`` is
    tensorboard: Any = None  # a SummaryWriter for the training rows, or None
    collate: Callable[[list], Any] | None = None  # items -> batch (default: padded kd.data.batching.Batch objects)
    desc: str = "train"
    progress: bool = True
    _position: Position = field(default_factory=Position, init=False)

    @property
    def position(self) -> Position:
        return self._position

    # ------------------------------------------------------------ pieces

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        from kd.training.data import epoch_batches

        a = self.accelerator
        return epoch_batches(self.buckets, seed=self.seed, epoch=epoch, rank=a.process_index,
                             world_size=a.num_processes)

    def _loader(self, batches: Sequence[Sequence[int]]) -> Iterable:
        from kd.data.batching import collate
        from kd.training.data import make_loader

        return make_loader(self.dataset, batches, self.num_workers, pin_memory=self.accelerator.device.type == "cuda",
                           collate_fn=self.collate or collate)

    def _restore(self, resume: bool) -> int | None:
        """Load the newest finished checkpoint (weights, optimizer, RNGs, position); its step, or None."""
        a = self.accelerator
        checkpoint = latest_checkpoint(self.checkpoint_root) if resume else None
        if checkpoint is None:
            return None
        if checkpoint.world_size != a.num_processes:
            raise ValueError(f"{checkpoint.path}: written by {checkpoint.world_size} processes, this run has "
                             f"{a.num_processes}; the data order differs, so the resume would not be exact")
        a.unwrap_model(self.model).load_state_dict(load_weights(checkpoint.path / WEIGHTS))
        state = load_optimizer_state(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        if a.scaler is not None and "scaler" in state:
            a.scaler.load_state_dict(state["scaler"])
        restore_rng(load_rng(checkpoint, a.process_index), self.noise)
        self._position = Position(checkpoint.step, checkpoint.epoch, checkpoint.batch)
        for log in (self.log, *self.other_logs):
            log.truncate_after(checkpoint.step)
        return checkpoint.step

    def save(self, dev=None) -> None:
        """Write a checkpoint of the current position (every process takes part)."""
        a, p, root = self.accelerator, self._position, self.checkpoint_root
        if a.is_main_process:
            begin_checkpoint(root, p.step)
        a.wait_for_everyone()
        tmp = root / f".tmp-step-{p.step:08d}"
        save_rng(tmp, a.process_index, capture_rng(self.noise))
        a.wait_for_everyone()
        if a.is_main_process:
            state = {"optimizer": self.optimizer.state_dict()}
            if a.scaler is not None:
                state["scaler"] = a.scaler.state_dict()
            files = None
            if self.checkpoint_files is not None:
                step = p.step
                files = lambda folder: self.checkpoint_files(folder, step)  # noqa: E731
            finish_checkpoint(tmp, model_state=a.unwrap_model(self.model).state_dict(), optimizer_state=state,
                              step=p.step, epoch=p.epoch, batch=p.batch,
                              dev_loss=None if dev is None else dev.loss, dev_acc=None if dev is None else dev.acc,
                              world_size=a.num_processes, files=files)
            k = self.checkpoint
            prune_checkpoints(root, keep_last=k.keep_last, keep_best=k.average_best, by=k.best_by,
                              keep_steps=self.save_steps)
        a.wait_for_everyone()

    def _evaluate_and_save(self) -> None:
        dev = self.evaluate(self._position) if self.evaluate is not None else None
        self.save(dev)

    # ------------------------------------------------------------ the loop

    def run(self, *, resume: bool = True) -> LoopResult:
        """Train from the newest finished checkpoint under ``checkpoint_root`` (with ``resume``) or from
        the start, to the last step; the caller writes the final model."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        from kd.training.steps import accumulate, reduce_window

        a, o = self.accelerator, self.optim
        device = a.device
        per_epoch = len(self._epoch_batches(0))
        if per_epoch == 0:
            raise ValueError("the training data gives no micro-batches (no utterances)")
        last = total_steps(o, math.ceil(per_epoch / o.grad_accum))
        set_seed(self.seed, device_specific=True)  # dropout and other draws differ between processes
        resumed_from = self._restore(resume)
        p = self._position
        bar = tqdm(total=last, initial=p.step, desc=self.desc, disable=not (a.is_main_process and self.progress),
                   dynamic_ncols=True, leave=False)
        self.model.train()
        window: dict[str, torch.Tensor] = {}
        extras: dict[str, float] = {}
        window_audio, window_steps, window_start = 0.0, 0, time.perf_counter()
        run_start, run_audio, run_steps, final_loss = time.perf_counter(), 0.0, 0, None
        last_saved = p.step if resumed_from is not None else -1
        stopped_early = False
        save_steps = set(self.save_steps)
        lr = 0.0
        while p.step < last and not stopped_early:
            mine = self._epoch_batches(p.epoch)[p.batch:]
            groups = [len(mine[i: i + o.grad_accum]) for i in range(0, len(mine), o.grad_accum)]
            batches = iter(self._loader(mine))
            for group in groups:
                if self.before_update is not None:
                    extras = dict(self.before_update(p.step + 1))
                for i in range(group):
                    batch = next(batches)
                    if self.audio_seconds is not None:
                        window_audio += self.audio_seconds(batch)
                    sync = a.no_sync(self.model) if i < group - 1 else contextlib.nullcontext()
                    with sync:
                        loss, parts = self.compute(batch)
                        a.backward(loss / group)
                    accumulate(window, parts, 1.0 / group, device)
                grad_norm = a.clip_grad_norm_(self.model.parameters(), o.clip_norm) if o.clip_norm else None
                lr = self.lr_at(p.step + 1, last)
                set_learning_rate(self.optimizer, lr)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                p.step, p.batch, window_steps = p.step + 1, p.batch + group, window_steps + 1
                if grad_norm is not None:
                    accumulate(window, {"grad_norm": grad_norm}, 1.0, device)
                bar.update(1)

                if p.step % self.log_every == 0 or p.step == last:
                    row, audio = reduce_window(window, window_steps, window_audio, a)
                    elapsed = time.perf_counter() - window_start
                    row = {"step": p.step, "epoch": round(p.epoch + p.batch / per_epoch, 4), "lr": lr, **row,
                           **extras, "audio_s_per_s": audio / elapsed, "steps_per_s": window_steps / elapsed}
                    self.log.write(row)
                    if self.tensorboard is not None:
                        for k, v in row.items():
                            if k not in ("step", "epoch"):
                                self.tensorboard.add_scalar(f"train/{k}", v, p.step)
                    if "loss" in row:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                        final_loss = row["loss"]
                    run_audio, run_steps = run_audio + audio, run_steps + window_steps
                    window, window_audio, window_steps, window_start = {}, 0.0, 0, time.perf_counter()
                if p.batch == per_epoch:
                    p.epoch, p.batch = p.epoch + 1, 0
                if ((self.checkpoint.every_steps and p.step % self.checkpoint.every_steps == 0)
                        or p.step in save_steps):
                    self._evaluate_and_save()
                    last_saved = p.step
                if p.step >= last:
                    break
                if o.time_limit_s is not None and self._over_time(run_start, o.time_limit_s):
                    stopped_early = True
                    break
            else:  # the epoch ran to its end
                if self.checkpoint.at_epoch_end and last_saved != p.step:
                    self._evaluate_and_save()
                    last_saved = p.step
        if last_saved != p.step:
            self._evaluate_and_save()
        bar.close()
        return LoopResult(steps=p.step, epoch=p.epoch, batch=p.batch, batches_per_epoch=per_epoch,
                          resumed_from=resumed_from, seconds=time.perf_counter() - run_start, logged_steps=run_steps,
                          audio_seconds=run_audio, final_loss=final_loss, stopped_early=stopped_early)

    def _over_time(self, start: float, limit: float) -> bool:
        """Whether any process has trained ``limit`` seconds: every process must stop at the same step
        (they meet in the gradient all-reduces)."""
        over = torch.tensor(float(time.perf_counter() - start > limit), device=self.accelerator.device)
        return bool(self.accelerator.reduce(over, reduction="sum").item() > 0)
