"""Numbered recipe stages with completion markers: a re-run skips what finished and redoes the rest.

A recipe is a list of :class:`Stage` objects, each a function with the configuration it depends
on. :func:`run_stages` runs the stages numbered ``start..stop`` in order. A stage's marker
(``WORK_DIR/stages/NN-name/.done.json``, written last and atomically, see :mod:`kd.core.io`) records a
digest of that configuration, so:

- a finished stage whose configuration is unchanged is skipped (``--stage`` / ``--stop-stage``
  as in ESPnet recipes pick a range; ``force`` redoes the range);
- a stage that was interrupted (no marker) or whose configuration changed is run again. Each
  stage writes its own outputs atomically and the library functions it calls resume or skip
  finished work (training runs resume from their newest checkpoint), so re-running a
  half-finished stage never mistakes a partial file for a finished one;
- when a stage is redone, the markers of every later stage are cleared, since their inputs may
  change.

The stage function is called with a dict of the earlier stages' results (by stage name); its
return value (JSON-serialisable, or None) is stored in the marker and read back on a skip, so
later stages can use earlier results without recomputing them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from kd.core.config import parse_config, with_overrides
from kd.core.io import MARKER_NAME, clear_done, is_done, load_yaml, mark_done

__all__ = ["Stage", "StageOutcome", "add_stage_arguments", "add_workers_argument", "check_stage_range", "load_preset",
           "preset_section", "preset_seeds", "preset_workers", "recipe_parser", "run_recipe", "run_stages",
           "stage_dir"]

STAGES_DIR = "stages"
T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Stage:
    number: int  # 1, 2, ...: the order, and what --stage / --stop-stage refer to
    name: str  # lower-case identifier, used in the marker folder name
    run: Callable[[dict[str, Any]], Any]  # gets earlier stages' results by name; returns a JSON-able summary
    config: Any = field(default_factory=dict)  # JSON-serialisable inputs; a change redoes the stage
    description: str = ""  # one line for the log

    def __post_init__(self) -> None:
        if not isinstance(self.number, int) or isinstance(self.number, bool) or self.number < 1:
            raise ValueError(f"Stage.number: expected an integer >= 1, found {self.number!r}")
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"Stage.name: expected lower-case letters, digits, '_' or '-', found {self.name!r}")


@dataclass(frozen=True)
class StageOutcome:
    number: int
    name: str
    status: str  # "ran", "skipped" (finished earlier, same config) or "outside" (not in start..stop)
    seconds: float  # wall time of this invocation (0 for a skip)
    result: Any = None  # the stage's return value (also on a skip, read from its marker)


def stage_dir(work_dir: str | os.PathLike, stage: Stage) -> Path:
    return Path(work_dir) / STAGES_DIR / f"{stage.number:02d}-{stage.name}"


def _stored_result(directory: Path) -> Any:
    return json.loads((directory / MARKER_NAME).read_text(encoding="utf-8")).get("result")


def check_stage_range(stages: Sequence[Stage], start: int, stop: int | None) -> None:
    """A ValueError unless the stage numbers are unique and ``start..stop`` overlaps them."""
    numbers = [s.number for s in stages]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"stages: expected unique stage numbers, found {numbers}")
    if stop is not None and stop < start:
        raise ValueError(f"stop stage: expected >= start stage {start}, found {stop}")
    known = sorted(numbers)
    if known and (start > known[-1] or (stop is not None and stop < known[0])):
        raise ValueError(f"stage range {start}..{stop}: expected an overlap with the recipe's stages {known}")


def run_stages(stages: Sequence[Stage], work_dir: str | os.PathLike, *, start: int = 1, stop: int | None = None,
               force: bool = False, log: Callable[[str], None] | None = None) -> list[StageOutcome]:
    """Run the stages numbered ``start..stop`` (inclusive; ``stop=None``: to the last) in order.

    Args:
        stages: the recipe's stages; numbers must be unique.
        work_dir: the recipe's output folder; markers go to ``work_dir/stages/``.
        start, stop: the range to run, as ESPnet's ``--stage`` / ``--stop-stage``.
        force: redo stages in the range even when their markers say they finished.
        log: where progress lines go (default: stderr).

    Returns:
        One :class:`StageOutcome` per stage, in order (stages outside the range: ``outside``).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_stage_range(stages, start, stop)
    outcomes: list[StageOutcome] = []
    results: dict[str, Any] = {}
    for stage in sorted(stages, key=lambda s: s.number):
        directory = stage_dir(work_dir, stage)
        inside = stage.number >= start and (stop is None or stage.number <= stop)
        if not inside:
            result = _stored_result(directory) if is_done(directory, stage.config) else None
            outcomes.append(StageOutcome(stage.number, stage.name, "outside", 0.0, result))
            results[stage.name] = result
            continue
        # a redone stage clears the markers of every later stage (their inputs may change), so
        # is_done is False for everything after it
        if not force and is_done(directory, stage.config):
            log(f"stage {stage.number} ({stage.name}): finished earlier, skipped")
            results[stage.name] = _stored_result(directory)
            outcomes.append(StageOutcome(stage.number, stage.name, "skipped", 0.0, results[stage.name]))
            continue
        for later in stages:
            if later.number > stage.number:
                clear_done(stage_dir(work_dir, later))
        clear_done(directory)
        log(f"stage {stage.number} ({stage.name}): {stage.description or 'running'}")
        began = time.perf_counter()
        result = stage.run(dict(results))
        results[stage.name] = result
        seconds = time.perf_counter() - began
        directory.mkdir(parents=True, exist_ok=True)
        mark_done(directory, stage.config, result=result, seconds=round(seconds, 3))
        log(f"stage {stage.number} ({stage.name}): done in {seconds:.1f} s")
        outcomes.append(StageOutcome(stage.number, stage.name, "ran", seconds, result))
    return outcomes


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--stage``, ``--stop-stage`` and ``--force`` for a recipe's ``run.py``."""
    parser.add_argument("--stage", type=int, default=1, help="first stage to run (default 1)")
    parser.add_argument("--stop-stage", type=int, default=None, help="last stage to run (default: the last)")
    parser.add_argument("--force", action="store_true", help="redo the stages in range even if finished")


def recipe_parser(doc: str, config: Path, name: str) -> argparse.ArgumentParser:
    """A recipe's command line: ``--preset``, ``--config``, ``--out`` and the stage arguments.

    ``name``: the recipe's folder name; outputs default to ``exp/<name>/<preset>``.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="section of config.yaml (smoke, cpu, gpu)")
    parser.add_argument("--config", type=Path, default=config)
    parser.add_argument("--out", type=Path, default=None, help=f"default: exp/{name}/PRESET")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                        help="preset settings over the YAML (seeds=[0], teacher.optim.max_epochs=8, ...)")
    parser.set_defaults(recipe=name)
    add_stage_arguments(parser)
    return parser


def add_workers_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--workers N``: ``what`` (a recipe's independent runs) side by side (:mod:`kd.recipes.parallel`)."""
    parser.add_argument("--workers", type=int, default=None,
                        help=f"{what} side by side, each on its share of the cores (default: the preset's "
                             f"workers, else 1; see kd.recipes.parallel)")


def preset_workers(parser: argparse.ArgumentParser, args: argparse.Namespace, workers: int) -> int:
    """``--workers``, else the preset's ``workers``; a parser error unless an integer >= 1.

    Not part of any stage's settings: the runs are the same runs, their floating-point sums
    taken over fewer threads.
    """
    workers = args.workers if args.workers is not None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        parser.error(f"workers: expected an integer >= 1, found {workers!r}")
    return workers


def _where(args: argparse.Namespace) -> str:  # what a preset error names first: the file and the preset
    return f"{args.config}: preset {args.preset!r}"


def preset_seeds(parser: argparse.ArgumentParser, args: argparse.Namespace, seeds: Sequence[int]) -> list[int]:
    """``--seeds``, else the preset's ``seeds``: a parser error unless a non-empty list of distinct
    integers >= 0."""
    seeds = list(args.seeds or seeds)
    valid = (isinstance(seeds, (list, tuple)) and len(seeds) > 0 and len(set(seeds)) == len(seeds)
             and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds))
    if not valid:
        parser.error(f"{_where(args)}: seeds: expected a list of distinct integers >= 0, "
                     f"found {seeds!r}")
    return list(seeds)


def load_preset(parser: argparse.ArgumentParser, args: argparse.Namespace,
                preset_class: type[T]) -> tuple[T, dict[str, Any], Path]:
    """The preset section of the recipe's YAML (``x-...`` keys hold shared anchors, not presets), with
    ``--set`` over it, read into ``preset_class`` (one of :mod:`kd.recipes.presets`); the same section as
    written; and the output folder.

    The stages' markers record the sections as written, not the typed preset: a field that a preset
    class gains, with its default, then leaves the digests of finished stages as they were.

    A file that is not YAML, not a mapping of presets, or a preset with an unknown, missing or misshapen
    key is a parser error naming the file, the preset and the key's path.
    """
    import yaml

    path = args.config
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"--config {path}: cannot read the recipe's YAML: {e}")
    if not isinstance(data, Mapping):
        parser.error(f"--config {path}: expected a mapping of preset names to settings, found {type(data).__name__}")
    presets = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    if args.preset not in presets:
        parser.error(f"--preset: expected one of {sorted(presets)}, found {args.preset!r}")
    if getattr(args, "set", None):
        if not isinstance(presets[args.preset], Mapping):
            parser.error(f"{_where(args)}: expected a mapping of settings")
        try:
            presets[args.preset] = with_overrides(presets[args.preset], args.set)
        except ValueError as e:
            parser.error(f"{_where(args)}: {e}")
    written = presets[args.preset]
    if not isinstance(written, Mapping):
        parser.error(f"{_where(args)}: expected a mapping of settings, found {type(written).__name__}")
    try:
        preset = parse_config(preset_class, written, f"preset {args.preset!r}")
    except ValueError as e:
        parser.error(f"{args.config}: {e}")
    out = (args.out or Path("exp") / args.recipe / args.preset).resolve()
    return preset, dict(written), out


@contextlib.contextmanager
def preset_section(parser: argparse.ArgumentParser, args: argparse.Namespace, key: str) -> Iterator[None]:
    """Build a preset section's configuration inside this block: its ValueError / TypeError /
    KeyError becomes a parser error naming the file, the preset and the section, before any stage runs.
    A message that already starts with the section's path (a config read with ``where=key``:
    ``layer_distill.optim.lr: ...``) is not prefixed with it again."""
    try:
        yield
    except KeyError as e:
        parser.error(f"{_where(args)}: {key}: missing key {e.args[0]!r}")
    except (ValueError, TypeError) as e:
        named = str(e).startswith((f"{key}.", f"{key}:"))
        parser.error(f"{_where(args)}: {e}" if named else f"{_where(args)}: {key}: {e}")


def run_recipe(stages: Sequence[Stage], out: Path, args: argparse.Namespace) -> list[StageOutcome]:
    """:func:`run_stages` over the range the command line asked for; one summary line on stderr.

    A range outside the recipe's stages is a command-line error (exit status 2), like a bad option.
    """
    try:
        check_stage_range(stages, args.stage, args.stop_stage)
    except ValueError as e:
        print(f"error: --stage / --stop-stage: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    outcomes = run_stages(stages, out, start=args.stage, stop=args.stop_stage, force=args.force)
    print("stages: " + ", ".join(f"{o.number} {o.name} {o.status}" for o in outcomes), file=sys.stderr)
    return outcomes
