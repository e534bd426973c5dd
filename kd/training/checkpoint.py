"""Atomic training checkpoints, their retention, and averaging of the best ones.

Layout of ``<run>/checkpoints/``::

    step-00000120/              one finished checkpoint (optimizer step 120)
        model.safetensors       the unwrapped model's state dict (float32 unless trained otherwise)
        optimizer.pt            optimizer (and fp16 grad-scaler) state, plain tensors and numbers
        rng-0.pt, rng-1.pt ...  per-process RNG states (python, numpy, torch, cuda, noise generator)
        checkpoint.json         the marker, written last: step, epoch, position, dev loss
        [model/]                what the trainer adds (finish_checkpoint's ``files``), e.g. a Hugging Face
                                folder of the wav2vec 2.0 stages at their analysis steps
    .tmp-step-00000140/         a checkpoint being written (or left by a crash): never read

A checkpoint is written into ``.tmp-step-N``, every file is flushed to disk, the marker is
written last, and the folder is renamed to ``step-N``: a folder named ``step-N`` without a
valid marker, or any ``.tmp-*`` folder, is not a checkpoint. Older checkpoints are pruned only
after the new one is renamed. Everything is read back with safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from kd.models.weights import load_weights, save_weights
from kd.training.config import Criterion

__all__ = [
    "CHECKPOINTS_DIR",
    "MARKER",
    "CheckpointInfo",
    "average_checkpoints",
    "begin_checkpoint",
    "best_checkpoints",
    "capture_rng",
    "finish_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_optimizer_state",
    "load_rng",
    "load_weights",
    "prune_checkpoints",
    "remove_partial_checkpoints",
    "restore_rng",
    "save_rng",
    "save_weights",
]

CHECKPOINTS_DIR = "checkpoints"
MARKER = "checkpoint.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A finished checkpoint, as its marker describes it."""

    path: Path
    step: int  # optimizer steps done
    epoch: int  # epoch to continue in (0-based)
    batch: int  # micro-batches of that epoch already consumed by each process
    dev_loss: float | None  # student loss on the dev set at this step (None without a dev set)
    world_size: int  # processes that wrote it
    dev_acc: float | None = None  # teacher-forced token accuracy on the dev set (None: not recorded)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- RNG states


def capture_rng(noise: torch.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (loadable with ``weights_only=True``)."""
    version, state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python_version": version,
        "python_state": torch.tensor(state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if noise is not None:
        out["noise"] = noise.get_state()
    return out


def restore_rng(states: Mapping[str, Any], noise: torch.Generator | None = None) -> None:
    random.setstate((states["python_version"], tuple(states["python_state"].tolist()), states["python_gauss"]))
    np.random.set_state(("MT19937", states["numpy_keys"].numpy().astype(np.uint32), states["numpy_pos"],
                         states["numpy_has_gauss"], states["numpy_cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if noise is not None and "noise" in states:
        noise.set_state(states["noise"])


def save_rng(tmp_dir: str | os.PathLike, rank: int, states: Mapping[str, Any]) -> None:
    path = Path(tmp_dir) / f"rng-{rank}.pt"
    torch.save(dict(states), path)
    _fsync_file(path)


def load_rng(checkpoint: CheckpointInfo, rank: int) -> dict[str, Any]:
    path = checkpoint.path / f"rng-{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint.path}: expected RNG states for process {rank} ({path.name}); the checkpoint was "
            f"written by {checkpoint.world_size} processes"
        )
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------- writing


def _tmp_dir(root: Path, step: int) -> Path:
    return root / f".tmp-step-{step:08d}"


def begin_checkpoint(root: str | os.PathLike, step: int) -> Path:
    """Create an empty ``.tmp-step-N`` under ``root`` (main process only; stale leftovers removed)."""
    tmp = _tmp_dir(Path(root), step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finish_checkpoint(tmp_dir: str | os.PathLike, *, model_state: Mapping[str, torch.Tensor],
                      optimizer_state: Mapping[str, Any], step: int, epoch: int, batch: int,
                      dev_loss: float | None, world_size: int, dev_acc: float | None = None,
                      extra: Mapping[str, Any] | None = None,
                      files: Callable[[Path], None] | None = None) -> CheckpointInfo:
    """Write weights, optimizer state and marker into ``tmp_dir``, then rename it to ``step-N``.

    Call on the main process after every process has written its RNG file into ``tmp_dir``.
    ``files(tmp_dir)`` may add files or folders first; they are flushed to disk with the rest, so a
    finished checkpoint holds them whole.
    """
    tmp = Path(tmp_dir)
    save_weights(model_state, tmp / WEIGHTS)
    torch.save(dict(optimizer_state), tmp / OPTIMIZER)
    for name in (WEIGHTS, OPTIMIZER):
        _fsync_file(tmp / name)
    if files is not None:
        files(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file() and path.name not in (WEIGHTS, OPTIMIZER):
                _fsync_file(path)
            elif path.is_dir():
                _fsync_dir(path)
    marker = {"format": FORMAT_VERSION, "step": step, "epoch": epoch, "batch": batch, "dev_loss": dev_loss,
              "dev_acc": dev_acc, "world_size": world_size, **(extra or {})}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    final = tmp.parent / f"step-{step:08d}"
    if final.exists():  # a step-N folder without a valid marker (checked by the caller)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return CheckpointInfo(final, step, epoch, batch, dev_loss, world_size, dev_acc)


# ---------------------------------------------------------------- reading and retention


def _read_marker(path: Path) -> CheckpointInfo | None:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        info = CheckpointInfo(path, int(marker["step"]), int(marker["epoch"]), int(marker["batch"]),
                              None if marker["dev_loss"] is None else float(marker["dev_loss"]),
                              int(marker["world_size"]),
                              None if marker.get("dev_acc") is None else float(marker["dev_acc"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if marker.get("format") != FORMAT_VERSION or not (path / WEIGHTS).is_file() or not (path / OPTIMIZER).is_file():
        return None
    return info


def list_checkpoints(root: str | os.PathLike) -> list[CheckpointInfo]:
    """Finished checkpoints under ``root``, oldest first (unfinished folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            info = _read_marker(path)
            if info is not None and info.step == int(match.group(1)):
                found.append(info)
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: str | os.PathLike) -> CheckpointInfo | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_partial_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp-*`` folders and ``step-N`` folders without a valid marker; return them."""
    root = Path(root)
    if not root.is_dir():
        return []
    finished = {c.path for c in list_checkpoints(root)}
    removed = []
    for path in root.iterdir():
        unfinished = path.name.startswith(".tmp-step-") or (_NAME.match(path.name) and path not in finished)
        if path.is_dir() and unfinished:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def best_checkpoints(checkpoints: Sequence[CheckpointInfo], n: int, by: str | Criterion = "loss") -> list[CheckpointInfo]:
    """The n best checkpoints (ties: the later step): ``by="loss"`` (or ``Criterion.LOSS``) the
    lowest dev loss, ``by="acc"`` the highest dev token accuracy. Checkpoints without that score
    are not ranked; when none has it, the n latest."""
    if isinstance(by, Criterion):
        by = by.value
    if by not in ("loss", "acc"):
        raise ValueError(f"best_checkpoints: by must be 'loss' or 'acc', found {by!r}")
    if by == "loss":
        scored = [(c.dev_loss, -c.step, c) for c in checkpoints if c.dev_loss is not None]
    else:
        scored = [(-c.dev_acc, -c.step, c) for c in checkpoints if c.dev_acc is not None]
    if not scored:
        return sorted(checkpoints, key=lambda c: c.step)[-n:]
    return [c for *_, c in sorted(scored, key=lambda t: t[:2])[:n]]


def prune_checkpoints(root: str | os.PathLike, *, keep_last: int, keep_best: int,
                      by: str | Criterion = "loss", keep_steps: Collection[int] = ()) -> list[Path]:
    """Delete every finished checkpoint that is neither among the last ``keep_last``, nor the best
    ``keep_best``, nor at one of ``keep_steps`` (checkpoints kept for the learning dynamics, e.g. the
    wav2vec 2.0 pre-training's ``checkpoint_steps``)."""
    found = list_checkpoints(root)
    keep = {c.path for c in found[-keep_last:]} | {c.path for c in best_checkpoints(found, keep_best, by)}
    keep |= {c.path for c in found if c.step in set(keep_steps)}
    removed = []
    for c in found:
        if c.path not in keep:
            # rename first (atomic), so a kill during the deletion leaves a hidden temp folder that
            # resume removes, never a visible step-N folder with part of its files
            doomed = c.path.with_name(f".tmp-{c.path.name}.delete")  # ".tmp-step-*": remove_partial_checkpoints
            os.replace(c.path, doomed)
            shutil.rmtree(doomed)
            removed.append(c.path)
    return removed


def load_optimizer_state(checkpoint: CheckpointInfo) -> dict[str, Any]:
    return torch.load(checkpoint.path / OPTIMIZER, weights_only=True)


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating-point tensors of several weight files.

    Sums are accumulated in float64 and cast back to each tensor's dtype. Other tensors
    (integer counters) are taken from the last file. All files must hold the same names and shapes.
    """
    if not paths:
        raise ValueError("paths: expected at least one weights file, found none")
    first = load_weights(paths[0])
    sums = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in first.items()}
    for path in paths[1:]:
        state = load_weights(path)
        if state.keys() != sums.keys():
            diff = sorted(state.keys() ^ sums.keys())
            raise ValueError(f"{path}: expected the tensors of {paths[0]}, found differences in {diff[:5]}")
        for k, v in state.items():
            if v.shape != sums[k].shape:
                raise ValueError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(sums[k].shape)}")
            sums[k] = sums[k] + v.to(torch.float64) if v.is_floating_point() else v
    out = {k: (v / len(paths)).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in sums.items()}
    canonical: dict[int, str] = {}  # tied names of the first file stay one tensor in the average
    for k, v in first.items():
        out[k] = out[canonical.setdefault(id(v), k)]
    return out
