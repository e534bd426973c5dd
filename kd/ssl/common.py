"""Pieces shared by the self-supervised stages and layer distillation.

- speech datasets pooled from several data dirs;
- a stage's training run on the toolkit's one training stack: :func:`stage_accelerator`,
  :func:`prepare_stage_dir` (resume or start afresh), :func:`run_stage` (the loop of
  :mod:`kd.training.engine`: checkpoints in the format of :mod:`kd.training.checkpoint` under
  ``<stage>/checkpoints/``, exact resume, the CSV log of :class:`kd.training.logs.CsvLog`);
- Hugging Face folders written atomically (:func:`save_pretrained_atomic`): a folder is written under
  ``.tmp-<name>`` and renamed when complete, so a killed save never looks like a finished one;
- :func:`list_stage_checkpoints`: the model folders a stage kept along training.

Batches (length buckets, a new order every epoch: :func:`kd.training.data.epoch_batches`) hold raw
16 kHz waveforms in [-1, 1] with zero padding; each stage passes them with an attention mask
(:func:`kd.data.batching.attention_mask`), normalised first where the model's folder asks for it
(:mod:`kd.models.hf_processor`; the toolkit's own pre-training uses raw waveforms). Models are
loaded with :func:`kd.compression.io.load_speech_model`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import torch

from kd.core.io import atomic_write_text, clear_done, config_digest, file_lock, is_done
from kd.training.checkpoint import CHECKPOINTS_DIR, list_checkpoints, remove_partial_checkpoints

__all__ = ["MODEL_SUBDIR", "StageResult", "list_stage_checkpoints", "load_pooled", "model_digest",
           "pool_data_dirs", "prepare_stage_dir", "run_stage", "save_pretrained_atomic", "stage_accelerator",
           "stage_done", "write_folder_atomic"]

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
MODEL_SUBDIR = "model"  # the Hugging Face folder inside a kept checkpoint (checkpoints/step-N/model/)
IDENTITY_FILE = "identity.json"  # in checkpoints/: what the checkpoints were trained for
STAGE_LOCK = ".lock"  # held by the process that trains into the stage folder (kd.core.io.file_lock)
SAMPLE_RATE = 16000
_LEGACY_CKPT = re.compile(r"^ckpt-(\d+)$")  # Hugging Face folders of versions before the one training stack


@dataclass(frozen=True)
class StageResult:
    """What a stage produced. ``skipped``: it had finished before and was not run again."""

    out_dir: Path
    model_dir: Path  # the final model (a Hugging Face or compressed-student folder)
    steps: int  # optimizer updates done
    seconds: float  # training time of this call (0 when skipped)
    skipped: bool = False
    stopped_early: bool = False  # the time limit ended the stage before optim.max_steps
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None  # step of the checkpoint this call continued from


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


def model_digest(model: torch.nn.Module) -> list:
    """Class name, parameter count and parameter sum (6 decimals) of a model: a stage key's record of the
    weights a stage starts from, so that other initial weights redo the stage."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) for p in model.parameters())
    return [type(model).__name__, sum(p.numel() for p in model.parameters()), round(total, 6)]


def folder_fingerprint(path: str | os.PathLike) -> list:
    """Names, sizes and modification times of a folder's files: changes when its model is rewritten."""
    path = Path(path)
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(path.rglob("*")) if p.is_file()]


# ---- model folders -------------------------------------------------------------------------
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
    """The model folders a stage kept along training, by step: ``(step, folder)``.

    Finished checkpoints ``checkpoints/step-N/`` that hold a Hugging Face folder (``model/``, written at
    the pre-training's ``checkpoint_steps``), and the ``ckpt-N/`` folders that versions before the one
    training stack kept in the stage folder itself; unfinished ones (``.tmp-*``) never count.
    """
    out_dir = Path(out_dir)
    found = {c.step: c.path / MODEL_SUBDIR for c in list_checkpoints(out_dir / CHECKPOINTS_DIR)
             if (c.path / MODEL_SUBDIR / "config.json").is_file()}
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            m = _LEGACY_CKPT.match(p.name)
            if m and p.is_dir() and (p / "config.json").is_file():
                found.setdefault(int(m.group(1)), p)
    return sorted(found.items())


def _legacy_checkpoints(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if _LEGACY_CKPT.match(p.name)) if out_dir.is_dir() else []


def clean_stage_dir(out_dir: Path, names: Sequence[str]) -> None:
    """Remove what an earlier attempt left: temporary folders, checkpoints (today's and the ``ckpt-N``
    folders of earlier versions) and ``names``."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) or _LEGACY_CKPT.match(p.name) or p.name in (*names, CHECKPOINTS_DIR):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


# ---- the stage's training run ---------------------------------------------------------------
def stage_done(out_dir: str | os.PathLike, key: Mapping[str, Any], legacy_key: Mapping[str, Any] | None) -> bool:
    """Whether the stage in ``out_dir`` finished for ``key``, or for ``legacy_key``: the same stage as a
    version before the one training stack recorded it (:func:`kd.ssl.config.legacy_stage_config`)."""
    return is_done(out_dir, key) or (legacy_key is not None and is_done(out_dir, legacy_key))


def resume_identity(key: Mapping[str, Any]) -> dict[str, Any]:
    """A stage key without the config fields a resumed run may change (when to stop, when to save, how
    many loader processes: :data:`kd.training.setup.RESUMABLE_FIELDS`, as for ``kd train``)."""
    from kd.training.setup import RESUMABLE_FIELDS, flatten_config

    config = {k: v for k, v in flatten_config(key.get("config", {})).items()
              if not any(k.startswith(f) for f in RESUMABLE_FIELDS)}
    return {**key, "config": config}


def stage_accelerator(config: Any, *, find_unused_parameters: bool = False):
    """An ``Accelerator`` for a stage config (its ``optim.mixed_precision``), with python, numpy and torch
    seeded with ``config.seed`` (the same initial weights on every process).

    ``find_unused_parameters``: for models that skip parameters in some steps (layerdrop) under DDP.
    """
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from kd.training.setup import new_accelerator

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    # an earlier stage in this process may have chosen another mixed precision
    accelerator = new_accelerator(mixed_precision=config.optim.mixed_precision.value, kwargs_handlers=handlers)
    set_seed(config.seed)
    return accelerator


@contextlib.contextmanager
def stage_lock(out_dir: Path, accelerator, config: Any) -> Iterator[None]:
    """One training process per stage folder: a second one (a re-run started while the first still
    trains) fails at once instead of interleaving checkpoints; the main process holds the lock for its
    ranks. Within it, the numerics of ``config`` (``deterministic``, ``optim.tf32``:
    :func:`kd.training.engine.numerics`)."""
    from kd.training.engine import numerics

    lock = contextlib.nullcontext()
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = file_lock(out_dir / STAGE_LOCK, wait=False, what=f"training stage {out_dir}")
    with lock, numerics(deterministic=config.deterministic, tf32=config.optim.tf32):
        yield


def prepare_stage_dir(out_dir: Path, key: Mapping[str, Any], outputs: Sequence[str], accelerator) -> int | None:
    """Make ``out_dir`` ready for the stage ``key``: keep the checkpoints of an earlier, unfinished run of
    the same stage (up to :func:`resume_identity`) so the loop resumes from the newest, else remove what an
    earlier attempt left (``outputs``, checkpoints, temporary folders) for a fresh start. Returns the step
    the run will resume from, or None. Every process calls it; the main one does the work.

    Stage folders of versions before the one training stack hold ``ckpt-N`` Hugging Face folders without
    optimizer state or data position: an unfinished such stage cannot resume and starts afresh (as it
    always did), with a warning.
    """
    root = out_dir / CHECKPOINTS_DIR
    identity = config_digest(resume_identity(key))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        clear_done(out_dir)
        remove_partial_checkpoints(root)
        recorded = None
        if (root / IDENTITY_FILE).is_file():
            recorded = json.loads((root / IDENTITY_FILE).read_text(encoding="utf-8")).get("identity")
        if not (list_checkpoints(root) and recorded == identity):
            legacy = _legacy_checkpoints(out_dir)
            if legacy:
                logger.warning("%s: %s were kept by a version without resumable checkpoints (no optimizer state "
                               "or data position); the stage starts from the beginning", out_dir,
                               ", ".join(p.name for p in legacy))
            clean_stage_dir(out_dir, outputs)
            root.mkdir(parents=True)
            atomic_write_text(root / IDENTITY_FILE, json.dumps({"identity": identity}) + "\n")
    accelerator.wait_for_everyone()
    newest = list_checkpoints(root)
    return newest[-1].step if newest else None


def run_stage(accelerator, model, optimizer, config: Any, dataset, durations: Sequence[float],
              compute: Callable[[Any], tuple[torch.Tensor, Mapping[str, Any]]], out_dir: Path, *, log_file: str,
              d_model: int, before_update: Callable[[int], Mapping[str, float]] | None = None,
              save_steps: Collection[int] = (), checkpoint_files: Callable[[Path, int], None] | None = None,
              desc: str = "train", progress: bool = True):
    """Train a stage's ``model`` (and ``optimizer``, both from ``accelerator.prepare``) with the toolkit's
    one loop (:class:`kd.training.engine.TrainingLoop`), from the newest checkpoint that
    :func:`prepare_stage_dir` kept. One CSV row per step in ``out_dir/log_file``; ``config``: the stage
    config (``optim``, ``data``, ``checkpoint``, ``seed``). Returns the loop's
    :class:`~kd.training.engine.LoopResult`."""
    from kd.data.batching import bucket_batches
    from kd.training.engine import TrainingLoop
    from kd.training.logs import CsvLog
    from kd.training.schedule import learning_rate

    buckets = bucket_batches(durations, max_seconds=config.data.max_seconds,
                             max_utterances=config.data.max_utterances, shuffle=False)
    loop = TrainingLoop(
        accelerator=accelerator, model=model, optimizer=optimizer, optim=config.optim, dataset=dataset,
        buckets=buckets, seed=config.seed, compute=compute,
        lr_at=lambda step, total: learning_rate(config.optim, step, d_model=d_model, total_steps=total),
        checkpoint_root=out_dir / CHECKPOINTS_DIR, checkpoint=config.checkpoint,
        log=CsvLog(out_dir / log_file, accelerator.is_main_process), log_every=1,
        num_workers=config.data.num_workers, audio_seconds=lambda batch: float(batch.speech_lengths.sum()) / SAMPLE_RATE,
        before_update=before_update, save_steps=save_steps, checkpoint_files=checkpoint_files, desc=desc,
        progress=progress)
    return loop.run(resume=True)
