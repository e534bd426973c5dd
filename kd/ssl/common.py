"""Pieces shared by the self-supervised stages and layer distillation.

- speech datasets pooled from several data dirs;
- :func:`train_loop`: the one training loop on ``accelerate`` (prepare, accumulate, backward,
  clip, step, learning rate as a pure function of the step, CSV log, time limit);
- Hugging Face folders written atomically (:func:`save_pretrained_atomic`) and listed safely
  (:func:`list_stage_checkpoints`): a folder is written under ``.tmp-<name>`` and renamed when complete,
  so a killed save never looks like a finished one.

Batches (:func:`kd.data.batching.speech_loader`: length-bucketed, reshuffled every epoch) hold raw
16 kHz waveforms in [-1, 1] with zero padding; each stage passes them with an attention mask
(:func:`kd.data.batching.attention_mask`), normalised first where the model's folder asks for it
(:mod:`kd.models.hf_processor`; the toolkit's own pre-training uses raw waveforms). Models are
loaded with :func:`kd.compression.io.load_speech_model`.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from kd.ssl.config import OptimSettings

__all__ = ["CsvLog", "StageResult", "list_stage_checkpoints", "load_pooled", "pool_data_dirs", "save_pretrained_atomic",
           "train_loop", "write_folder_atomic"]

TMP_PREFIX = ".tmp-"
_CKPT = re.compile(r"^ckpt-(\d+)$")


@dataclass(frozen=True)
class StageResult:
    """What a stage produced. ``skipped``: it had finished before and was not run again."""

    out_dir: Path
    model_dir: Path  # the final model (a Hugging Face or compressed-student folder)
    steps: int  # optimizer updates done
    seconds: float  # training time of this call (0 when skipped)
    skipped: bool = False
    stopped_early: bool = False  # the time limit ended the stage before optim.steps
    metrics: dict[str, Any] = field(default_factory=dict)


# ---- data -----------------------------------------------------------------------------------
def pool_data_dirs(data_dirs: Sequence[str | os.PathLike], *, argument: str = "data_dirs"):
    """One :class:`kd.data.DataDir` with the utterances of several data dirs (ids unique across them)."""
    from kd.data import DataDir, load_data_dir

    if isinstance(data_dirs, (str, os.PathLike)) or not data_dirs:
        raise ValueError(f"{argument}: expected a non-empty list of data dirs, found {data_dirs!r}")
    seen: dict[str, Path] = {}
    utterances = []
    for path in data_dirs:
        d = load_data_dir(path)
        for u in d.utterances:
            if u.utt in seen:
                raise ValueError(f"{argument}: utterance id {u.utt!r} appears in {seen[u.utt]} and in {d.root}")
            seen[u.utt] = d.root
            utterances.append(u)
    return DataDir(Path(data_dirs[0]), utterances)


def load_pooled(data_dirs: Sequence[str | os.PathLike], *, tokenizer=None, argument: str = "data_dirs"):
    """``AudioDataset`` over the utterances of several data dirs."""
    from kd.data.batching import AudioDataset

    return AudioDataset(pool_data_dirs(data_dirs, argument=argument), tokenizer=tokenizer)


def folder_fingerprint(path: str | os.PathLike) -> list:
    """Names, sizes and modification times of a folder's files: changes when its model is rewritten."""
    path = Path(path)
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(path.rglob("*")) if p.is_file()]


# ---- logging --------------------------------------------------------------------------------
class CsvLog:
    """Rows appended to a CSV file; the first row fixes the columns."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled, self.columns = Path(path), enabled, None

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = self.columns is None
        if new:
            self.columns = list(row)
        with open(self.path, "a" if not new else "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.columns)
            writer.writerow([f"{row.get(c):.6g}" if isinstance(row.get(c), float) else row.get(c, "")
                             for c in self.columns])


# ---- checkpoints ----------------------------------------------------------------------------
def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder_atomic(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write(tmp_dir)`` fill a temporary folder beside ``target``, then rename it to ``target``.

    An existing ``target`` is replaced (moved aside first, removed after the rename).
    """
    target = Path(target)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    _fsync_tree(tmp)
    old = target.parent / f"{TMP_PREFIX}old-{target.name}"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def save_pretrained_atomic(model, target: str | os.PathLike,
                           extra: Callable[[Path], None] | None = None) -> Path:
    """``model.save_pretrained`` into ``target`` atomically; ``extra(folder)`` may add files (tokens...)."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        if extra is not None:
            extra(folder)

    return write_folder_atomic(target, write)


def list_stage_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Finished ``ckpt-<step>`` folders of a stage, by step (temporary ``.tmp-*`` folders never count)."""
    out_dir = Path(out_dir)
    found = []
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            m = _CKPT.match(p.name)
            if m and p.is_dir() and (p / "config.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def clean_stage_dir(out_dir: Path, names: Sequence[str]) -> None:
    """Remove what an earlier, unfinished attempt left: temporary folders, checkpoints and ``names``."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) or _CKPT.match(p.name) or p.name in names:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


# ---- optimisation ---------------------------------------------------------------------------
def make_accelerator(optim: OptimSettings, *, find_unused_parameters: bool = False):
    """An ``Accelerator`` for ``optim`` (seeds python, numpy and torch with ``optim.seed``).

    ``find_unused_parameters``: for models that skip parameters in some steps (layerdrop) under DDP.
    """
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from kd.training.setup import new_accelerator

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    kwargs = dict(mixed_precision=optim.mixed_precision, gradient_accumulation_steps=optim.grad_accum,
                  kwargs_handlers=handlers)
    accelerator = new_accelerator(**kwargs)  # an earlier stage may have chosen another mixed precision
    set_seed(optim.seed)  # python, numpy (masks and negatives), torch
    return accelerator


def _group_lr(group: dict, lr: float) -> float:
    """The learning rate of one parameter group: the scheduled ``lr`` times its ``lr_scale`` (default 1)."""
    return lr * group.get("lr_scale", 1.0)


def make_optimizer(parameters, optim: OptimSettings) -> torch.optim.Optimizer:
    """AdamW over ``parameters``: tensors, or parameter groups (dicts with ``params``) as torch takes
    them. A group's ``lr_scale`` (default 1) multiplies the scheduled learning rate in
    :func:`train_loop`. Parameters that need no gradient are left out."""
    items = list(parameters)
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
    else:
        groups = [{"params": [p for p in items if p.requires_grad]}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = _group_lr(g, optim.learning_rate(1))
    return torch.optim.AdamW(groups, lr=optim.learning_rate(1), betas=optim.betas, eps=optim.eps,
                             weight_decay=optim.weight_decay)


# ---- the loop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopResult:
    steps: int
    seconds: float
    stopped_early: bool


def train_loop(accelerator, model: torch.nn.Module, optimizer, loader, optim: OptimSettings,
               compute: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], *, log: CsvLog,
               before_update: Callable[[int], dict[str, float]] | None = None,
               after_update: Callable[[int], None] | None = None, desc: str = "train",
               progress: bool = True) -> LoopResult:
    """Run ``optim.steps`` optimizer updates (or until ``optim.time_limit_s``).

    ``model``, ``optimizer`` and ``loader`` must come from ``accelerator.prepare``.
    ``compute(batch)`` returns the micro-batch loss (a scalar to minimise) and numbers to log;
    ``before_update(step)`` runs before the first micro-batch of update ``step`` (1-based) and
    returns extra numbers to log (e.g. a temperature); ``after_update(step)`` runs after it
    (e.g. to save a checkpoint). One CSV row per update: ``step``, ``lr``, ``grad_norm``, the
    micro-batch means of ``compute``'s numbers, ``seconds`` since the start.
    """
    from tqdm.auto import tqdm

    if len(loader) == 0:
        raise ValueError("the training data gives no batches (no utterances)")
    params = [p for p in model.parameters() if p.requires_grad]
    step, micro, stopped_early = 0, 0, False
    sums: dict[str, float] = {}
    extra: dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(total=optim.steps, desc=desc, disable=not (progress and accelerator.is_main_process),
               leave=False)
    model.train()
    while step < optim.steps:
        for batch in loader:
            if micro == 0:
                lr = optim.learning_rate(step + 1)
                for group in optimizer.param_groups:
                    group["lr"] = _group_lr(group, lr)
                extra = before_update(step + 1) if before_update is not None else {}
            with accelerator.accumulate(model):
                loss, numbers = compute(batch)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and optim.clip_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(params, optim.clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            for k, v in numbers.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if not accelerator.sync_gradients:
                continue
            step += 1
            elapsed = time.perf_counter() - start
            row: dict[str, Any] = {"step": step, "lr": lr,
                                   "grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}
            row.update({k: v / micro for k, v in sums.items()})
            row.update(extra)
            row["seconds"] = elapsed
            log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
            sums, micro = {}, 0
            if after_update is not None:
                after_update(step)
            if step >= optim.steps:
                break
            if optim.time_limit_s is not None:
                # every process must stop at the same update (they meet in gradient all-reduces)
                over = torch.tensor(float(elapsed > optim.time_limit_s), device=accelerator.device)
                if accelerator.reduce(over, reduction="sum").item() > 0:
                    stopped_early = True
                    break
        if stopped_early:
            break
    bar.close()
    return LoopResult(step, time.perf_counter() - start, stopped_early)
