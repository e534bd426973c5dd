"""What several command groups of ``kd`` share: the device option, the refusal of the flat ``--set KEY=VALUE``
settings that commands took before they read ``KEY.PATH=VALUE`` (:func:`kd.core.config.with_overrides`)."""

from __future__ import annotations

from typing import Iterable, Sequence

DEVICE_HELP = "torch device (default: cuda when available, else cpu)"


def device(name: str | None) -> str:
    """``--device`` as given, or CUDA when available, else the CPU. Resolved when a command runs,
    not as the parser's default, so that ``kd --help`` imports no torch and probes no driver."""
    if name is not None:
        return name
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def refuse_flat_keys(items: Sequence[str], fields: Iterable[str], section: str, what: str,
                     option: str = "--set") -> None:
    """A ValueError for the first ``KEY=VALUE`` of ``items`` whose key is one of ``fields``: a setting that a
    command took flat before it read ``KEY.PATH=VALUE`` and that now lives in ``section``; the message names
    the dotted key (``--set: 'max_steps' is an optimiser setting: set optim.max_steps``)."""
    fields = set(fields)
    for item in items:
        key = item.partition("=")[0]
        if key in fields:
            raise ValueError(f"{option}: {key!r} is {what}: set {section}.{key}")
