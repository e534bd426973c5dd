"""The one config system: frozen dataclasses read from plain mappings (YAML, JSON) by pydantic.

Every configuration of the toolkit (``TrainConfig``, the wav2vec 2.0 stages' configs, ``AsrConfig``,
``DecodeConfig``, the recipes' presets, ...) is a frozen stdlib dataclass whose fields carry their
types and defaults, each default written once, in the dataclass. :func:`parse_config` reads a plain
mapping into such a dataclass with a pydantic ``TypeAdapter``; :func:`to_plain` writes one back;
:func:`with_overrides` sets the command line's ``--set KEY.PATH=VALUE`` over a mapping before it is read.

The parser (``parse_config``, ``to_plain``, ``CONFIG``, ``with_config``) lives in :mod:`analysis.config`
and is re-exported here: the analysis package's configs (``ProbeConfig``, ``KMeansConfig``,
``MIBoundConfig``, ``FeatureCCAConfig``) follow the same rules, and ``analysis`` never imports ``kd``.

The rules every config follows:

- a config class is decorated with ``@with_config(CONFIG)`` (pydantic's ``with_config``); dataclasses
  nested in it inherit that configuration;
- unknown keys are errors (``extra='forbid'``), as are values of the wrong type: the mapping is read
  as the JSON data it is (pydantic's strict JSON mode), so an integer field refuses ``'4'`` and
  ``2.5``, a float field takes an integer, a boolean field takes only true or false, an enum field
  takes its value (``schedule: noam``) and a tuple field a list;
- a section given in part (``optim: {lr: 1e-4}``) takes its other fields from the field's default,
  which for most sections is the section class's own defaults and for some (the wav2vec 2.0
  stages' ``optim``) a default of its own;
- the checks of values that types cannot express (ranges, relations between fields) stay in the
  dataclass's ``__post_init__``, raising ValueError with the field's name;
- every error is a ValueError whose message starts with the dotted path of the field
  (``TrainConfig.optim.lr: expected a number, found 'fast' (str)``); an unknown key is named with
  the closest known one (``unknown field 'lr_max' (did you mean 'lr'?)``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from analysis.config import CONFIG, parse_config, to_plain, with_config

__all__ = ["CONFIG", "parse_config", "to_plain", "with_config", "with_overrides"]


def with_overrides(data: Mapping[str, Any], items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """``data`` (nested mappings, e.g. a YAML config) with each ``KEY.PATH=VALUE`` of ``items`` set: the
    dotted path names the nested key (``optim.lr=0.001``, ``model.overrides.encoder_layers=3``), the value
    is read as YAML (numbers, booleans, lists). Missing mappings on the path are created; a path through a
    value that is not a mapping is a ValueError naming ``option`` and the path. ``data`` is not changed.
    Every command that takes a config offers these as ``--set``; the result then goes through
    :func:`parse_config` like the file itself."""
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
