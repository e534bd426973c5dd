"""Lazy exports of a package (PEP 562): a name listed in the package's table is imported from its module on
first use, so that ``import kd`` (and ``kd --help``) does not import torch or the modules behind the names."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` of ``package``: ``name`` comes from the module ``table[name]``; a name
    not in the table is an AttributeError, as for any module."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
