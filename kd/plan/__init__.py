"""Compression plans: which teacher layers a student keeps, shares and reuses attention from.

The plan stage, between analysis and compression: this module holds :class:`CompressionPlan`;
:mod:`kd.plan.planners` makes plans from a budget (and layer similarities), :mod:`kd.plan.from_report`
from a ``kd analyze`` report (``kd plan``). Plain Python: importing the package loads no torch.

A :class:`CompressionPlan` is a small, versioned, validated value object that travels between
stages as JSON (``kd plan`` writes it, ``kd compress`` and layer-to-layer distillation read it).

Index conventions (all counted from 0):

- ``keep_layers`` are *teacher* Transformer-layer indices. They must be strictly increasing: a
  student runs its layers in the teacher's order (a Transformer is a chain of residual updates,
  and reordering it does not approximate the teacher), and WavLM's relative-position table
  lives in the first layer only, which must stay first.
- ``share_groups`` and ``attention_reuse`` are *student* layer indices (positions in
  ``keep_layers``). The first member of a group is its leader. A share group makes all members
  use the leader's parameters (ALBERT-style). An attention-reuse group makes every follower take
  the leader's attention probabilities, so the leader must come before all of its followers.
  A layer is in at most one share group and at most one reuse group; a group of one (a leader
  with no followers) is allowed and changes nothing.
- ``layer_map`` maps teacher layers to student layers for layer-to-layer distillation. Several
  teacher layers may map to one student layer (one prediction head each). ``None`` means the
  default: kept teacher layer ``keep_layers[s]`` -> student layer ``s``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Iterable, Mapping

from kd.core.config import CONFIG, parse_config, with_config

PLAN_VERSION = 1


def _as_index(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{field}: expected an integer layer index, found {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{field}: expected a layer index >= 0, found {value}")
    return int(value)


def _is_list(value: Any) -> bool:
    """A list, tuple, array or other iterable of indices (not a string or a mapping)."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))


def _as_groups(groups: Any, field: str) -> tuple[tuple[int, ...], ...]:
    if not _is_list(groups):
        raise TypeError(f"{field}: expected a list of groups (lists of student layer indices), found {groups!r}")
    out = []
    for g, group in enumerate(groups):
        if not _is_list(group):
            raise TypeError(f"{field}[{g}]: expected a list of student layer indices, found {group!r}")
        group = tuple(_as_index(x, f"{field}[{g}]") for x in group)
        if not group:
            raise ValueError(f"{field}[{g}]: expected at least one layer (the leader), found an empty group")
        out.append(group)
    return tuple(out)


@dataclass(frozen=True)
@with_config(CONFIG)
class CompressionPlan:
    """Layers to keep, share and reuse attention from; see the module docstring for indices.

    Lists given to the constructor are stored as tuples; validation runs on construction. A plan's JSON
    is read by :meth:`from_dict` (:func:`kd.core.config.parse_config`).
    """

    keep_layers: tuple[int, ...]  # teacher layer indices, strictly increasing
    share_groups: tuple[tuple[int, ...], ...] = ()  # student indices, leader first
    attention_reuse: tuple[tuple[int, ...], ...] = ()  # student indices, leader first and earliest
    layer_map: Mapping[int, int] | None = None  # teacher layer -> student layer; None = default
    num_teacher_layers: int | None = None  # depth of the teacher, when known; enables range checks
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or self.version != PLAN_VERSION:
            raise ValueError(f"version: this code reads plan version {PLAN_VERSION}, found {self.version!r}")
        if not _is_list(self.keep_layers):
            raise TypeError(f"keep_layers: expected a list of teacher layer indices, found {self.keep_layers!r}")
        keep = tuple(_as_index(x, "keep_layers") for x in self.keep_layers)
        if not keep:
            raise ValueError("keep_layers: expected at least one teacher layer, found an empty list (empty plan)")
        for a, b in zip(keep, keep[1:]):
            if b <= a:
                what = "a duplicate" if a == b else "out of order"
                raise ValueError(f"keep_layers: expected strictly increasing teacher layer indices, "
                                 f"found {list(keep)} ({b} after {a} is {what})")
        object.__setattr__(self, "keep_layers", keep)
        n_teacher = self.num_teacher_layers
        if n_teacher is not None:
            if isinstance(n_teacher, bool) or not isinstance(n_teacher, Integral) or n_teacher < 1:
                raise ValueError(f"num_teacher_layers: expected a positive integer or None, found {n_teacher!r}")
            object.__setattr__(self, "num_teacher_layers", int(n_teacher))
        n_student = len(keep)
        for field in ("share_groups", "attention_reuse"):
            groups = _as_groups(getattr(self, field), field)
            seen: dict[int, int] = {}
            for g, group in enumerate(groups):
                for s in group:
                    if s >= n_student:
                        raise ValueError(f"{field}[{g}]: student layer {s} is out of range; the plan keeps "
                                         f"{n_student} layers (valid student indices 0..{n_student - 1})")
                    if s in seen:
                        where = "twice in this group" if seen[s] == g else f"also in {field}[{seen[s]}]"
                        raise ValueError(f"{field}[{g}]: student layer {s} appears {where}; "
                                         f"a layer belongs to at most one group")
                    seen[s] = g
                if field == "attention_reuse":
                    early = [s for s in group[1:] if s < group[0]]
                    if early:
                        raise ValueError(f"attention_reuse[{g}]: follower(s) {early} come before their leader "
                                         f"{group[0]}; a follower needs the leader's attention, so "
                                         f"the leader must run first")
            object.__setattr__(self, field, groups)
        if self.layer_map is not None:
            if not isinstance(self.layer_map, Mapping):
                raise TypeError(f"layer_map: expected a mapping teacher layer -> student layer or None, "
                                f"found {self.layer_map!r}")
            mapping = {}
            for t, s in self.layer_map.items():
                t, s = _as_index(t, "layer_map (teacher layer)"), _as_index(s, f"layer_map[{t}]")
                if s >= n_student:
                    raise ValueError(f"layer_map[{t}]: student layer {s} is out of range; the plan keeps "
                                     f"{n_student} layers (valid student indices 0..{n_student - 1})")
                mapping[t] = s
            object.__setattr__(self, "layer_map", dict(sorted(mapping.items())))
        if n_teacher is not None:
            self.validate(n_teacher)

    # ---- derived views -------------------------------------------------------------------
    @property
    def num_student_layers(self) -> int:
        return len(self.keep_layers)

    def teacher_to_student(self) -> dict[int, int]:
        """The layer map with the default filled in: teacher layer -> student layer."""
        if self.layer_map is not None:
            return dict(self.layer_map)
        return {t: s for s, t in enumerate(self.keep_layers)}

    def share_leaders(self) -> dict[int, int]:
        """Student follower -> the student layer whose parameters it uses (leaders excluded)."""
        return {s: g[0] for g in self.share_groups for s in g[1:]}

    def reuse_leaders(self) -> dict[int, int]:
        """Student follower -> the student layer whose attention probabilities it takes."""
        return {s: g[0] for g in self.attention_reuse for s in g[1:]}

    @property
    def has_sharing(self) -> bool:
        return any(len(g) > 1 for g in self.share_groups)

    @property
    def has_attention_reuse(self) -> bool:
        return any(len(g) > 1 for g in self.attention_reuse)

    def validate(self, num_teacher_layers: int) -> None:
        """Check the plan against a teacher with ``num_teacher_layers`` Transformer layers."""
        if isinstance(num_teacher_layers, bool) or not isinstance(num_teacher_layers, Integral):
            raise TypeError(f"num_teacher_layers: expected an integer, found {num_teacher_layers!r}")
        if self.num_teacher_layers is not None and self.num_teacher_layers != num_teacher_layers:
            raise ValueError(f"the plan was made for a teacher with {self.num_teacher_layers} layers, "
                             f"but this model has {num_teacher_layers}")
        bad = [t for t in self.keep_layers if t >= num_teacher_layers]
        if bad:
            raise ValueError(f"keep_layers: teacher layer(s) {bad} out of range; the model has "
                             f"{num_teacher_layers} layers (valid indices 0..{num_teacher_layers - 1})")
        bad = [t for t in (self.layer_map or {}) if t >= num_teacher_layers]
        if bad:
            raise ValueError(f"layer_map: teacher layer(s) {bad} out of range; the model has "
                             f"{num_teacher_layers} layers (valid indices 0..{num_teacher_layers - 1})")

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "keep_layers": list(self.keep_layers),
            "share_groups": [list(g) for g in self.share_groups],
            "attention_reuse": [list(g) for g in self.attention_reuse],
            # JSON object keys are strings; from_dict turns them back into ints
            "layer_map": None if self.layer_map is None else {str(t): s for t, s in self.layer_map.items()},
            "num_teacher_layers": self.num_teacher_layers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> "CompressionPlan":
        """A plan as :meth:`to_dict` writes it, read by :func:`kd.core.config.parse_config`: ``version`` and
        ``keep_layers`` are required, the keys of ``layer_map`` (text in JSON) are read as teacher layer
        integers. Errors are ValueErrors that start with ``where`` (default ``CompressionPlan``) and the field."""
        where = where or cls.__name__
        if isinstance(data, Mapping) and "version" not in data:  # the dataclass's default is this code's version
            raise ValueError(f"{where}: missing plan field 'version' (expected {PLAN_VERSION})")
        return parse_config(cls, data, where)

    def to_json(self) -> str:
        """One field per line, each value on one line (plans are read by people)."""
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict().items()]
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "<string>") -> "CompressionPlan":
        """Parse a plan; errors name ``source`` (a file name) and the offending field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
        # a bare file name (plan.json) would read as a dotted config name in errors (plan.json.keep_layers)
        return cls.from_dict(data, f"./{source}" if re.fullmatch(r"[\w.]+", source) else source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompressionPlan":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {path} does not exist")
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    def __hash__(self) -> int:  # layer_map is a dict, so the generated hash would fail
        return hash(self.to_json())
