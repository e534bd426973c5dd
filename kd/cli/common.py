"""What several command groups of ``kd`` share: the device option, ``--set KEY=VALUE`` settings."""

from __future__ import annotations

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


def key_values(items: list[str], option: str) -> dict:
    """``["d_model=256", "encoder_layers=12"]`` -> a dict, each value read as YAML (numbers, booleans)."""
    from kd.core.io import load_yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option}: expected KEY=VALUE, found {item!r}")
        out[key] = load_yaml(value)
    return out
