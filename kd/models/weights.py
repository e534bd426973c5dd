"""State dicts as safetensors files: tied (shared) tensors stored once and loaded back tied.

The weights format of model dirs (:mod:`kd.models.model_dir`), training checkpoints
(:mod:`kd.training.checkpoint`) and a training run's final weights. Read without pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

__all__ = ["ALIASES_KEY", "load_weights", "save_weights", "weights_bytes"]


ALIASES_KEY = "aliases"  # safetensors metadata: JSON {name: name of the stored tensor it equals}


def _unique_tensors(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to store and the aliases of tied ones (shared weights are stored once).

    Two names are aliases when they are the same view of the same storage (a layer that shares
    another layer's parameters); safetensors refuses to store shared memory twice.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in state.items():
        value = value.detach().cpu()
        view = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                tuple(value.stride()), value.dtype)
        if value.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        tensors[name] = value.contiguous().clone()
    return tensors, aliases


def weights_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A state dict as safetensors bytes, tied tensors stored once (see :func:`load_weights`)."""
    from safetensors.torch import save

    tensors, aliases = _unique_tensors(state)
    meta = dict(metadata or {})
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    return save(tensors, metadata=meta or None)


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict to ``path`` with safetensors (CPU copies; tied tensors stored once)."""
    Path(path).write_bytes(weights_bytes(state))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict (no pickle); tied names come back as the same tensor."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected a safetensors weights file at {path}, found no such file")
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if ALIASES_KEY in metadata:
        try:
            aliases = json.loads(metadata[ALIASES_KEY])
            for name, target in aliases.items():
                state[name] = state[target]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}: malformed {ALIASES_KEY!r} metadata; expected JSON {{name: stored name}} "
                             f"naming stored tensors, found {metadata[ALIASES_KEY][:200]!r}") from None
    return state
