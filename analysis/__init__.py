"""Layer-wise analyses of speech Transformers.

Everything here works on per-layer activations given as ``[frames, dims]`` tensors
(padding removed) or streams of them; this package never imports ``kd``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first access, so that
# ``import analysis`` stays cheap)
_LAZY = {
    "linear_cka": "analysis.similarity",
    "rbf_cka": "analysis.similarity",
    "minibatch_cka": "analysis.similarity",
    "cca": "analysis.similarity",
    "svcca": "analysis.similarity",
    "pwcca": "analysis.similarity",
    "attention_jsd": "analysis.attention",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
