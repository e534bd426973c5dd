"""speech-kd: analyse, compress and distil speech Transformers.

Importing this package is cheap: heavy dependencies (transformers, ESPnet,
accelerate) are imported only when the names that need them are first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "CompressionPlan": "kd.plan",
    "compress": "kd.compress",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kd' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY) + ["__version__"]
