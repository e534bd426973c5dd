"""Shared parsing of config dataclasses from plain dicts (YAML/JSON)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping


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
