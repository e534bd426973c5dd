"""Shared parsing of config dataclasses from plain dicts (YAML/JSON)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Sequence


def fields_from_dict(cls: type, data: Mapping[str, Any], enums: Mapping[str, type[enum.Enum]]) -> dict[str, Any]:
    """Check ``data`` against the fields of dataclass ``cls`` and turn enum values into members.

    Raises ValueError naming the class and the field for unknown fields and bad enum values.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping of fields, found {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}; expected a subset of {sorted(known)}")
    values = dict(data)
    for name, kind in enums.items():
        if name in values and not isinstance(values[name], kind):
            allowed = [m.value for m in kind]
            if values[name] not in allowed:
                raise ValueError(f"{cls.__name__}.{name}: expected one of {allowed}, found {values[name]!r}")
            values[name] = kind(values[name])
    return values


def with_overrides(data: Mapping[str, Any], items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """``data`` (nested mappings, e.g. a YAML config) with each ``KEY.PATH=VALUE`` of ``items`` set: the
    dotted path names the nested key (``optim.lr=0.001``, ``model.overrides.encoder_layers=3``), the value
    is read as YAML (numbers, booleans, lists). Missing mappings on the path are created; a path through a
    value that is not a mapping is a ValueError naming ``option`` and the path. ``data`` is not changed."""
    import copy

    from kd.core.io import load_yaml

    out = copy.deepcopy(dict(data))
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"{option}: expected KEY.PATH=VALUE, found {item!r}")
        node: dict[str, Any] = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, Mapping):
                raise ValueError(f"{option} {item!r}: {'.'.join(parts[:depth + 1])} is {child!r}, not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = load_yaml(value) if value else None
    return out
