"""Training and distillation of hybrid CTC/attention ASR models, in one loop on `accelerate`.

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
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kd.core.io import atomic_write_bytes, atomic_write_text, file_lock, is_done, mark_done, write_json
from kd.training.checkpoint import (CHECKPOINTS_DIR, WEIGHTS, average_checkpoints, begin_checkpoint, best_checkpoints,
                                    capture_rng, finish_checkpoint, latest_checkpoint, list_checkpoints,
                                    load_optimizer_state, load_rng, load_weights, prune_checkpoints, restore_rng,
                                    save_rng)
from kd.training.config import TrainConfig
from kd.training.logs import CsvLog, open_tensorboard
from kd.training.setup import (RESUMABLE_FIELDS, LenientTokenizer, freeze_parameters, load_data_dir, load_train_data,
                               model_config_for, pool, prepare_run_dir, setup_teachers)
from kd.training.steps import DevScores, accumulate, evaluate, forward_backward, reduce_window

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
    if config.deterministic:  # cuBLAS needs a fixed workspace for deterministic matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic or deterministic)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = config.optim.tf32
    # one writer per run dir: a second process (a re-run started while an earlier one still
    # trains, two recipe workers given the same run) fails at once instead of interleaving
    # checkpoints; the main process holds the lock for its ranks
    lock = (file_lock(out / RUN_LOCK, wait=False, what=f"training run {out}") if accelerator.is_main_process
            else contextlib.nullcontext())
    try:
        with lock:
            return _run(config, out, resume, accelerator)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cuda.matmul.allow_tf32 = tf32


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
    from tqdm.auto import tqdm

    from kd.data.batching import AudioDataset, bucket_batches
    from kd.models.asr import build_asr_model
    from kd.training.data import build_tokenizer, epoch_batches, load_run_tokenizer, make_loader
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
    o = config.optim
    trained = [p for p in model.parameters() if p.requires_grad]  # model.freeze leaves the rest out
    optimizer = torch.optim.Adam(trained, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay, fused=o.fused and device.type == "cuda")
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    teachers, cache = setup_teachers(config, tokenizer, train_set, buckets, accelerator, out)

    # ---- position: fresh start or the newest finished checkpoint
    per_epoch = len(epoch_batches(buckets, seed=config.seed, epoch=0, rank=rank, world_size=world))
    steps_per_epoch = math.ceil(per_epoch / o.grad_accum)
    total_steps = min(o.max_steps or sys.maxsize, (o.max_epochs or sys.maxsize // steps_per_epoch) * steps_per_epoch)
    set_seed(config.seed, device_specific=True)  # dropout differs between processes
    noise = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + rank)
    step, epoch, position, resumed_from = 0, 0, 0, None
    train_log, dev_log = CsvLog(out / "log.csv", is_main), CsvLog(out / "dev.csv", is_main)
    checkpoint = latest_checkpoint(ckpt_root) if resume else None
    if checkpoint is not None:
        if checkpoint.world_size != world:
            raise ValueError(f"{checkpoint.path}: written by {checkpoint.world_size} processes, this run has "
                             f"{world}; the data order differs, so the resume would not be exact")
        raw_model.load_state_dict(load_weights(checkpoint.path / WEIGHTS))
        state = load_optimizer_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        if accelerator.scaler is not None and "scaler" in state:
            accelerator.scaler.load_state_dict(state["scaler"])
        restore_rng(load_rng(checkpoint, rank), noise)
        step, epoch, position, resumed_from = checkpoint.step, checkpoint.epoch, checkpoint.batch, checkpoint.step
        train_log.truncate_after(step)
        dev_log.truncate_after(step)
    tb = open_tensorboard(out / "tb", config.logging.tensorboard and is_main)

    def save(dev: DevScores | None) -> None:
        if is_main:
            begin_checkpoint(ckpt_root, step)
        accelerator.wait_for_everyone()
        save_rng(ckpt_root / f".tmp-step-{step:08d}", rank, capture_rng(noise))
        accelerator.wait_for_everyone()
        if is_main:
            state = {"optimizer": optimizer.state_dict()}
            if accelerator.scaler is not None:
                state["scaler"] = accelerator.scaler.state_dict()
            finish_checkpoint(ckpt_root / f".tmp-step-{step:08d}", model_state=raw_model.state_dict(),
                              optimizer_state=state, step=step, epoch=epoch, batch=position,
                              dev_loss=None if dev is None else dev.loss, dev_acc=None if dev is None else dev.acc,
                              world_size=world)
            prune_checkpoints(ckpt_root, keep_last=config.checkpoint.keep_last,
                              keep_best=config.checkpoint.average_best, by=config.checkpoint.best_by)
        accelerator.wait_for_everyone()

    def evaluate_and_save() -> None:
        dev = evaluate(raw_model, dev_set, dev_buckets, accelerator) if dev_set is not None else None
        if dev is not None:
            dev_log.write({"step": step, "epoch": round(epoch + position / per_epoch, 4), "dev_loss": dev.loss,
                           "dev_acc": dev.acc})
            if tb is not None:
                tb.add_scalar("dev/loss", dev.loss, step)
                tb.add_scalar("dev/acc", dev.acc, step)
        save(dev)

    # ---- train
    bar = tqdm(total=total_steps, initial=step, desc="train" if config.kd is None else "distill",
               disable=not (is_main and config.logging.progress), dynamic_ncols=True)
    model.train()
    window: dict[str, torch.Tensor] = {}
    window_audio, window_steps, window_start = 0.0, 0, time.perf_counter()
    run_start, run_audio, run_steps, final_loss = time.perf_counter(), 0.0, 0, None
    last_saved = step if checkpoint is not None else -1
    while step < total_steps:
        mine = epoch_batches(buckets, seed=config.seed, epoch=epoch, rank=rank, world_size=world)[position:]
        groups = [len(mine[i: i + o.grad_accum]) for i in range(0, len(mine), o.grad_accum)]
        batches = iter(make_loader(train_set, mine, config.data.num_workers, pin_memory=device.type == "cuda"))
        for group in groups:
            for i in range(group):
                batch = next(batches)
                # checks and lengths on the host, before the move: reading them on the device would wait for it
                raw_model.check_batch(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
                window_audio += float(batch.speech_lengths.sum()) / model_config.sample_rate
                sync = accelerator.no_sync(model) if i < group - 1 else contextlib.nullcontext()
                with sync:
                    forward_backward(model, batch, teachers, cache, config, noise, device, batch.token_lengths.tolist(),
                                     sample_rate=model_config.sample_rate, window=window, group=group,
                                     backward=accelerator.backward, autocast=accelerator.autocast())
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.clip_norm) if o.clip_norm else None
            lr = learning_rate(o, step + 1, d_model=model_config.d_model, total_steps=total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, position, window_steps = step + 1, position + group, window_steps + 1
            if grad_norm is not None:
                accumulate(window, {"grad_norm": grad_norm}, 1.0, device)
            bar.update(1)

            if step % config.logging.every_steps == 0 or step == total_steps:
                row, audio = reduce_window(window, window_steps, window_audio, accelerator)
                elapsed = time.perf_counter() - window_start
                row = {"step": step, "epoch": round(epoch + position / per_epoch, 4), "lr": lr, **row,
                       "audio_s_per_s": audio / elapsed, "steps_per_s": window_steps / elapsed}
                train_log.write(row)
                if tb is not None:
                    for k, v in row.items():
                        if k not in ("step", "epoch"):
                            tb.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                final_loss, run_audio, run_steps = row["loss"], run_audio + audio, run_steps + window_steps
                window, window_audio, window_steps, window_start = {}, 0.0, 0, time.perf_counter()
            if position == per_epoch:
                epoch, position = epoch + 1, 0
            if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                evaluate_and_save()
                last_saved = step
            if step >= total_steps:
                break
        else:  # the epoch ran to its end
            if config.checkpoint.at_epoch_end and last_saved != step:
                evaluate_and_save()
                last_saved = step
    if last_saved != step:
        evaluate_and_save()
    bar.close()
    wall = time.perf_counter() - run_start

    # ---- final weights: the last step and the average of the best checkpoints
    found = list_checkpoints(ckpt_root)
    best = sorted(best_checkpoints(found, config.checkpoint.average_best, config.checkpoint.best_by),
                  key=lambda c: c.step)
    dev_losses = [c.dev_loss for c in found if c.dev_loss is not None]
    dev_accs = [c.dev_acc for c in found if c.dev_acc is not None]
    result = TrainResult(
        out_dir=str(out), steps=step, epochs=round(epoch + position / per_epoch, 4), final_loss=final_loss,
        best_dev_loss=min(dev_losses) if dev_losses else None,
        best_dev_acc=max(dev_accs) if dev_accs else None, averaged_steps=tuple(c.step for c in best),
        resumed_from=resumed_from, wall_seconds=wall, steps_per_second=run_steps / wall if wall > 0 else 0.0,
        audio_seconds_per_second=run_audio / wall if wall > 0 else 0.0, frozen_parameters=frozen,
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
