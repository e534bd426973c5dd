"""Training and distillation of hybrid CTC/attention ASR models, on the toolkit's one training loop
(:class:`kd.training.engine.TrainingLoop`, on `accelerate`; the wav2vec 2.0 stages of :mod:`kd.ssl` run on
it too).

``train(config, out_dir)`` trains a model from a :class:`~kd.training.config.TrainConfig`; with
a ``kd`` section the same loop distils it from frozen teachers with
L = alpha * L_NLL + (1 - alpha) * L_KD (:func:`kd.training.losses.kd_loss`, Kim et al. 2021), where
L_NLL is the student's own hybrid loss. The loop runs unchanged on one CPU, one GPU or many
processes: ``accelerate launch --multi_gpu --num_processes N -m kd.training.loop CONFIG OUT_DIR`` (on a
machine without CUDA this is DDP on CPU with gloo; note that ``accelerate launch --cpu
--num_processes N`` starts ONE process unless run under mpirun).

Run dir (``out_dir``)::

    config.yaml             the TrainConfig (a resumed run must match it, see RESUMABLE_FIELDS)
    model_config.yaml       the AsrConfig of the trained model
    tokens.txt [bpe.model]  the token inventory (ESPnet layout)
    checkpoints/step-N/     atomic checkpoints (see kd.training.checkpoint)
    log.csv, dev.csv        training rows every logging.every_steps; a dev row per checkpoint
    tb/                     TensorBoard scalars (when tensorboard is installed)
    teacher_cache/          cached teacher outputs (kd.teacher_outputs = cached)
    model.safetensors       weights after the last step
    model_avg.safetensors   mean of the checkpoint.average_best best checkpoints (checkpoint.best_by:
                            the lowest dev loss, or the highest dev token accuracy)
    model/                  model_avg as a model dir (kd.models.model_dir) for kd eval / analyze / export
    result.json, .done.json the TrainResult and the completion marker (a re-run is skipped)
    .lock                   held by the training process: a second one on the same dir fails at once

Conventions:
- Micro-batches are length buckets of at most ``data.max_seconds`` padded seconds; an optimizer
  step accumulates ``optim.grad_accum`` of them (the last step of an epoch may have fewer), each
  loss divided by the group's size; gradients are synchronised between processes on the last
  micro-batch of a group only (``accelerator.no_sync`` on the others). The groups are formed
  explicitly rather than with ``accelerator.accumulate``, whose step counter would carry a short
  last group of an epoch over into the next epoch's first step.
- Data order: see kd.training.data (length buckets; process r of P takes buckets r, r+P, ...).
- The learning rate is a function of the step alone (kd.training.schedule).
- Speed on GPUs: ``optim.mixed_precision`` (bf16/fp16 autocast), TF32 matmuls (``optim.tf32``),
  the fused Adam kernel (``optim.fused``), and few host-device synchronisations: batches are
  checked on the host and copied from pinned memory without waiting, the losses are computed
  without per-utterance host reads (kd.models.hybrid_losses; ESPnet's own functions wait about
  twice per utterance), and loss parts are summed on the device and read once per logging window.
  ``kd bench train`` counts the waits per micro-batch (kd.training.syncs). ``kd bench train``
  measures the loop against an ESPnet-default-style fp32 loop on the same model and batches.
- Dev loss: the student's own loss (AsrOutput.loss), averaged over utterances, in eval mode,
  with aleatoric noise from a fixed generator, so it is comparable between checkpoints.
- Exact resume: a checkpoint holds the weights, the optimizer (and grad-scaler) state, every
  process's RNG states (python, numpy, torch, cuda and the generator of the uncertainty-head
  noise, which also draws the teachers' sampled soft labels) and the data position (epoch, micro-batches consumed). With ``deterministic: true`` on
  a CPU, a run resumed from any checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kd.core.io import atomic_write_bytes, atomic_write_text, file_lock, is_done, mark_done, write_json
from kd.training.checkpoint import CHECKPOINTS_DIR, WEIGHTS, average_checkpoints, best_checkpoints, list_checkpoints
from kd.training.config import TrainConfig
from kd.training.engine import TrainingLoop, build_optimizer, numerics
from kd.training.logs import CsvLog, open_tensorboard
from kd.training.setup import (RESUMABLE_FIELDS, LenientTokenizer, freeze_parameters, load_data_dir, load_train_data,
                               model_config_for, pool, prepare_run_dir, setup_teachers)
from kd.training.steps import DevScores, evaluate, micro_batch_step

__all__ = ["RESUMABLE_FIELDS", "TrainResult", "distill", "distill_from_yaml", "main", "train", "train_from_yaml"]

RESULT_FILE = "result.json"
RUN_LOCK = ".lock"  # held by the process that trains into the run dir (kd.core.io.file_lock)


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished run (also written to ``result.json``)."""

    out_dir: str
    steps: int  # optimizer steps in total
    epochs: float  # passes over the training data (fractional)
    final_loss: float | None  # mean training loss of the last logging window
    best_dev_loss: float | None  # lowest dev loss of the kept checkpoints
    best_dev_acc: float | None  # highest dev token accuracy of the kept checkpoints
    averaged_steps: tuple[int, ...]  # checkpoints averaged into model_avg.safetensors
    resumed_from: int | None  # step of the checkpoint this invocation started from
    wall_seconds: float  # of this invocation's loop (evaluation and checkpoints included)
    steps_per_second: float  # of this invocation
    audio_seconds_per_second: float  # seconds of training audio (all processes) per wall second
    skipped: bool = False  # True when the run was already finished and nothing was done
    frozen_parameters: int = 0  # values that model.freeze kept as they were
    # optim.time_limit_s ended the run before its last step: its weights are written, but the run is not
    # marked finished, so that running it again continues it
    stopped_early: bool = False

    @property
    def model_path(self) -> Path:
        return Path(self.out_dir) / "model.safetensors"

    @property
    def avg_model_path(self) -> Path:
        return Path(self.out_dir) / "model_avg.safetensors"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["averaged_steps"] = list(self.averaged_steps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainResult":
        # best_dev_acc: absent from the results of runs written before it was recorded
        return cls(**{"best_dev_acc": None, **data, "averaged_steps": tuple(data["averaged_steps"])})


# ---------------------------------------------------------------- public entry points


def train(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = True) -> TrainResult:
    """Train (or, with ``config.kd``, distil) a model into ``out_dir``.

    With ``resume`` (the default) a run dir holding finished checkpoints continues from the
    newest one, and a finished run (completion marker for this config) returns its stored
    result without work. ``resume=False`` refuses a run dir that already holds checkpoints.
    """
    from kd.training.setup import new_accelerator

    out = Path(out_dir)
    if resume and is_done(out, config.identity()) and (out / RESULT_FILE).is_file():
        stored = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
        return TrainResult.from_dict({**stored, "skipped": True})
    # `accelerate launch --multi_gpu` (or torchrun) on a machine without CUDA: DDP on CPU with gloo;
    # accelerate would otherwise run N independent single-process copies of the run
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = new_accelerator(mixed_precision=config.optim.mixed_precision.value,
                                  cpu=launched > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != launched:
        raise RuntimeError(f"WORLD_SIZE={launched} processes were launched but accelerate set up "
                           f"{accelerator.num_processes}; set ACCELERATE_USE_CPU=1 for DDP on CPU")
    # one writer per run dir: a second process (a re-run started while an earlier one still
    # trains, two recipe workers given the same run) fails at once instead of interleaving
    # checkpoints; the main process holds the lock for its ranks
    lock = (file_lock(out / RUN_LOCK, wait=False, what=f"training run {out}") if accelerator.is_main_process
            else contextlib.nullcontext())
    with lock, numerics(deterministic=config.deterministic, tf32=config.optim.tf32):
        return _run(config, out, resume, accelerator)


def distill(config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = True) -> TrainResult:
    """:func:`train` for a config with a ``kd`` section (raises without one)."""
    if config.kd is None:
        raise ValueError("TrainConfig.kd: expected a kd section (teachers and loss) for distillation, found none")
    return train(config, out_dir, resume=resume)


def train_from_yaml(path: str | os.PathLike, out_dir: str | os.PathLike, *, resume: bool = True,
                    overrides: Sequence[str] = ()) -> TrainResult:
    """``kd train``: the YAML config with ``overrides`` (``KEY.PATH=VALUE``) set over it."""
    return train(TrainConfig.from_yaml(path, overrides), out_dir, resume=resume)


def distill_from_yaml(path: str | os.PathLike, out_dir: str | os.PathLike, *, resume: bool = True,
                      overrides: Sequence[str] = ()) -> TrainResult:
    """``kd distill``: the YAML config with ``overrides`` (``KEY.PATH=VALUE``) set over it."""
    return distill(TrainConfig.from_yaml(path, overrides), out_dir, resume=resume)


# ---------------------------------------------------------------- the loop


def _run(config: TrainConfig, out: Path, resume: bool, accelerator) -> TrainResult:
    from accelerate.utils import set_seed

    from kd.data.batching import AudioDataset, bucket_batches
    from kd.models.asr import build_asr_model
    from kd.training.data import build_tokenizer, epoch_batches, load_run_tokenizer
    from kd.training.schedule import learning_rate

    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    ckpt_root = out / CHECKPOINTS_DIR

    # ---- run dir, token inventory, data
    if is_main:
        prepare_run_dir(out, config, resume)
    train_dirs = load_train_data(config)
    if is_main:
        build_tokenizer(config.tokens, train_dirs, out)
    accelerator.wait_for_everyone()
    tokenizer = load_run_tokenizer(out)
    train_set = AudioDataset(pool(train_dirs), tokenizer)
    buckets = bucket_batches(train_set.durations(), max_seconds=config.data.max_seconds,
                             max_utterances=config.data.max_utterances, shuffle=False)
    dev_set = dev_buckets = None
    if config.data.dev is not None:
        dev_set = AudioDataset(load_data_dir(config.data.dev, config), LenientTokenizer(tokenizer))
        dev_buckets = bucket_batches(dev_set.durations(), max_seconds=config.data.max_seconds,
                                     max_utterances=config.data.max_utterances, shuffle=False)[rank::world]

    # ---- model, optimizer, teachers
    set_seed(config.seed)  # identical initial weights on every process
    model_config, init_state = model_config_for(config, tokenizer)
    model = build_asr_model(model_config, list(tokenizer.tokens))
    if init_state is not None:
        model.load_state_dict(init_state)
    frozen = freeze_parameters(model, config.model.freeze)
    if is_main:
        atomic_write_text(out / "model_config.yaml", model_config.to_yaml())
    optimizer = build_optimizer(model.parameters(), config.optim, device)  # model.freeze leaves frozen ones out
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    teachers, cache = setup_teachers(config, tokenizer, train_set, buckets, accelerator, out)

    # ---- the loop (kd.training.engine): from the newest finished checkpoint, or from the start
    noise = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + rank)
    dev_log = CsvLog(out / "dev.csv", is_main)
    tb = open_tensorboard(out / "tb", config.logging.tensorboard and is_main)

    def audio_seconds(batch) -> float:
        # checks and lengths on the host, before the move: reading them on the device would wait for it
        raw_model.check_batch(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
        return float(batch.speech_lengths.sum()) / model_config.sample_rate

    def compute(batch):
        return micro_batch_step(model, batch, teachers, cache, config, noise, device, batch.token_lengths.tolist(),
                                sample_rate=model_config.sample_rate, autocast=accelerator.autocast())

    per_epoch = len(epoch_batches(buckets, seed=config.seed, epoch=0, rank=rank, world_size=world))

    def dev_scores(position) -> DevScores | None:
        if dev_set is None:
            return None
        dev = evaluate(raw_model, dev_set, dev_buckets, accelerator)
        dev_log.write({"step": position.step, "epoch": round(position.epoch + position.batch / per_epoch, 4),
                       "dev_loss": dev.loss, "dev_acc": dev.acc})
        if tb is not None:
            tb.add_scalar("dev/loss", dev.loss, position.step)
            tb.add_scalar("dev/acc", dev.acc, position.step)
        return dev

    loop = TrainingLoop(
        accelerator=accelerator, model=model, optimizer=optimizer, optim=config.optim, dataset=train_set,
        buckets=buckets, seed=config.seed, compute=compute,
        lr_at=lambda step, total: learning_rate(config.optim, step, d_model=model_config.d_model, total_steps=total),
        checkpoint_root=ckpt_root, checkpoint=config.checkpoint, log=CsvLog(out / "log.csv", is_main),
        log_every=config.logging.every_steps, num_workers=config.data.num_workers, noise=noise,
        audio_seconds=audio_seconds, evaluate=dev_scores, other_logs=(dev_log,), tensorboard=tb,
        desc="train" if config.kd is None else "distill", progress=config.logging.progress)
    ran = loop.run(resume=resume)
    step, wall = ran.steps, ran.seconds

    # ---- final weights: the last step and the average of the best checkpoints
    found = list_checkpoints(ckpt_root)
    best = sorted(best_checkpoints(found, config.checkpoint.average_best, config.checkpoint.best_by),
                  key=lambda c: c.step)
    dev_losses = [c.dev_loss for c in found if c.dev_loss is not None]
    dev_accs = [c.dev_acc for c in found if c.dev_acc is not None]
    result = TrainResult(
        out_dir=str(out), steps=step, epochs=ran.epochs, final_loss=ran.final_loss,
        best_dev_loss=min(dev_losses) if dev_losses else None,
        best_dev_acc=max(dev_accs) if dev_accs else None, averaged_steps=tuple(c.step for c in best),
        resumed_from=ran.resumed_from, wall_seconds=wall,
        steps_per_second=ran.logged_steps / wall if wall > 0 else 0.0,
        audio_seconds_per_second=ran.audio_seconds / wall if wall > 0 else 0.0, frozen_parameters=frozen,
        stopped_early=ran.stopped_early,
    )
    if is_main:
        from kd.models.weights import weights_bytes

        averaged = average_checkpoints([c.path / WEIGHTS for c in best])
        atomic_write_bytes(out / "model_avg.safetensors", weights_bytes(averaged))
        atomic_write_bytes(out / "model.safetensors", weights_bytes(raw_model.state_dict()))
        # the averaged model as a model dir that kd eval / kd analyze / kd export read
        from kd.models.model_dir import save_model_dir

        final = build_asr_model(model_config, list(tokenizer.tokens))
        final.load_state_dict(averaged)
        save_model_dir(final, tokenizer, out / "model")
        write_json(out / RESULT_FILE, result.to_dict())
        if not result.stopped_early:
            mark_done(out, config.identity(), steps=step)
        if tb is not None:
            tb.close()
    accelerator.wait_for_everyone()
    return result


# ---------------------------------------------------------------- command line (accelerate launch -m kd.training.loop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd.training.loop", description="Train or distil an ASR model.")
    parser.add_argument("config", help="TrainConfig YAML (a kd section makes it a distillation run)")
    parser.add_argument("out_dir", help="run dir")
    parser.add_argument("--no-resume", action="store_true", help="refuse a run dir that holds checkpoints")
    args = parser.parse_args(argv)
    result = train_from_yaml(args.config, args.out_dir, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
