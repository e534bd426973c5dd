"""The config parser: frozen dataclasses read from plain mappings (YAML, JSON) by pydantic.

The machinery of the toolkit's one config system (its rules are written in :mod:`kd.core.config`, which
re-exports these names): :func:`parse_config` reads a plain mapping into a frozen stdlib dataclass with a
pydantic ``TypeAdapter`` in strict JSON mode, :func:`to_plain` writes one back, and :data:`CONFIG` is the
pydantic configuration every config class carries (``@with_config(CONFIG)``, pydantic's ``with_config``).
Errors are ValueErrors whose message starts with the dotted path of the field; an unknown key is named
with the closest known one.

It lives in this package because ``analysis`` never imports ``kd``: the analysis configs
(``ProbeConfig``, ``KMeansConfig``, ``MIBoundConfig``, ``FeatureCCAConfig``) are read by the same parser
as the training configs, and ``kd`` may import ``analysis``, not the other way round.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import enum
import functools
import json
import math
import os
import re
import types
import typing
from typing import Any, Mapping, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

__all__ = ["CONFIG", "parse_config", "to_plain", "with_config"]

# the pydantic configuration of every config dataclass: unknown keys are errors, values are not coerced
# (strict: parse_config reads a mapping as JSON, where strict mode takes enum values and lists for tuples);
# floats are finite
CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """A config (a dataclass, or any value inside one) as plain YAML- and JSON-ready values: dataclasses
    as mappings of their fields, enums as their values, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def parse_config(cls: type[T], data: Any, where: str | None = None) -> T:
    """The frozen dataclass ``cls`` read from ``data`` (a mapping of its fields, as YAML or JSON gives it).

    ``where`` names the config in error messages (default: the class's name); the path of the field in
    error goes after it, joined with ``.`` (``TrainConfig.optim.lr``) where ``where`` is a name or a dotted
    path and with ``: `` otherwise (``preset 'smoke': corpus.seed``). The checks of ``cls``'s own
    ``__post_init__``, which name a field after the class (``LayerDistillConfig.cos_weight``), are named
    after ``where`` too (``layer_distill.cos_weight``). Raises ValueError.
    """
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, found {_found(data)}")
    plain = _fill_sections(cls, _json_ready(data, where, ()))
    try:
        return _adapter(cls).validate_json(json.dumps(plain, allow_nan=True))
    except ValidationError as e:
        raise ValueError(_message(cls, e, where)) from None


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    if "__pydantic_config__" not in vars(cls):
        raise TypeError(f"{cls.__name__}: a config class needs @with_config(CONFIG) (analysis.config.CONFIG, "
                        "also kd.core.config.CONFIG)")
    return TypeAdapter(cls)


# ---------------------------------------------------------------- input


def _json_ready(value: Any, where: str, loc: tuple) -> Any:
    """``value`` as JSON data: enums as values, dataclasses as mappings, tuples as lists; anything else
    that JSON cannot hold (a mapping key that is no string, an object) is an error naming its path."""
    if isinstance(value, enum.Enum) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return to_plain(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{_join(where, loc)}: expected text keys, found {key!r} ({type(key).__name__})")
            out[key] = _json_ready(item, where, (*loc, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_json_ready(item, where, (*loc, i)) for i, item in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise ValueError(f"{_join(where, loc)}: expected text, a number, true or false, null, a list or a mapping, "
                     f"found {_found(value)}")


def _section_type(tp: Any) -> type | None:
    """The dataclass that a field of type ``tp`` (``X`` or ``X | None``) holds, or None."""
    tp = _without_none(tp)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _fill_sections(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (changed in place) with every section given in part completed from the field's default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section = _section_type(hints.get(f.name))
        value = data.get(f.name)
        if section is None or not isinstance(value, dict):
            continue
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            value = {**to_plain(default), **value}
        data[f.name] = _fill_sections(section, value)
    return data


# ---------------------------------------------------------------- errors


def _without_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _type_at(cls: type, loc: tuple) -> Any:
    """The declared type of the field at pydantic's error location ``loc`` (None where unknown)."""
    tp: Any = cls
    for part in loc:
        tp = _without_none(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(part, str):
            tp = typing.get_type_hints(tp).get(part)
        elif origin is tuple and isinstance(part, int) and args:
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (args[part] if part < len(args) else None)
        elif origin in (list, set, frozenset) and isinstance(part, int) and args:
            tp = args[0]
        elif origin in (dict, collections.abc.Mapping) and isinstance(part, str) and args:
            tp = args[1]
        else:
            return None
        if tp is None:
            return None
    return tp


def _describe(tp: Any) -> str:
    """What a value of type ``tp`` is, for 'expected ...'."""
    if tp is None:
        return "a valid value"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + str([m.value for m in tp])
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + str(list(typing.get_args(tp)))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "a mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list (each item {_describe(args[0])})"
        return f"a list of {len(args)} values"
    if origin in (list, set, frozenset):
        return f"a list (each item {_describe(args[0])})" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if tp is Any:
        return "a value"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, str(tp))


def _found(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


_DOTTED = re.compile(r"[\w.\[\]]+")  # a name or a dotted path: the field's path goes on with '.'


def _join(where: str, loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if not path:
        return where
    return f"{where}.{path}" if _DOTTED.fullmatch(where) else f"{where}: {path}"


def _field_names(tp: Any) -> list[str]:
    tp = _without_none(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return sorted(f.name for f in dataclasses.fields(tp))
    return []


def _closest(key: str, known: list[str]) -> str | None:
    """The known field most like ``key`` (similarity, then the common prefix), if alike enough."""
    def likeness(candidate: str) -> tuple[float, int]:
        return (difflib.SequenceMatcher(None, key, candidate).ratio(),
                len(os.path.commonprefix([key, candidate])))

    best = max(known, key=likeness, default=None)
    return best if best is not None and likeness(best)[0] >= 0.6 else None


def _unknown(cls: type, where: str, parent: tuple, keys: list[str]) -> str:
    known = _field_names(_type_at(cls, parent))
    if len(keys) == 1:
        close = _closest(keys[0], known)
        what = f"unknown field {keys[0]!r}" + (f" (did you mean {close!r}?)" if close else "")
    else:
        what = f"unknown fields {sorted(keys)}"
    return f"{_join(where, parent)}: {what}; expected one of {known}"


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_KEY = "[key]"  # the last part of pydantic's location of an error in a mapping's key (after the key itself)
_MISSING = ("missing", "missing_argument", "missing_keyword_only_argument", "missing_positional_only_argument")


def _message(cls: type, error: ValidationError, where: str) -> str:
    """One line for the first problem of ``error`` (unknown fields first, as a reader fixes them first)."""
    errors = error.errors(include_url=False)
    unknown = [e for e in errors if e["type"] in _UNKNOWN]
    if unknown:
        parent = tuple(unknown[0]["loc"][:-1])
        keys = [str(e["loc"][-1]) for e in unknown if tuple(e["loc"][:-1]) == parent]
        return _unknown(cls, where, parent, keys)
    first = errors[0]
    loc, kind, value = tuple(first["loc"]), first["type"], first.get("input")
    tp = _type_at(cls, loc)
    path = _join(where, loc)
    if kind in _MISSING:
        return f"{path}: required field missing (expected {_describe(tp)})"
    if loc[-1:] == (_KEY,):  # a mapping's key (JSON keys are text: an integer key is read from its digits)
        key_types = typing.get_args(_without_none(_type_at(cls, loc[:-2])))
        key_type = key_types[0] if key_types else None
        return f"{_join(where, loc[:-2])}: expected each key to be {_describe(key_type)}, found {value!r}"
    if kind in ("value_error", "assertion_error"):
        inner = str(first.get("ctx", {}).get("error", first["msg"]))
        own = f"{cls.__name__}."
        if not loc and where != cls.__name__ and inner.startswith(own) and ": " in inner:
            # a check of cls itself names its field after the class (LayerDistillConfig.cos_weight: ...);
            # a config read under another name (a recipe's section) has it named by its path from there
            field_path, _, rest = inner[len(own):].partition(": ")
            return f"{_join(where, (field_path,))}: {rest}"
        return inner if not loc and inner.startswith(where) else f"{path}: {inner}"
    if kind in ("enum", "literal_error") or typing.get_origin(tp) is typing.Literal or (
            isinstance(_without_none(tp), type) and issubclass(_without_none(tp), enum.Enum)):
        return f"{path}: expected {_describe(tp)}, found {value!r}"
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return f"{path}: expected a finite number, found {value!r}"
    if tp is None:  # a location inside a type this module does not walk: pydantic's own words
        return f"{path}: {first['msg']}, found {_found(value)}"
    return f"{path}: expected {_describe(tp)}, found {_found(value)}"
