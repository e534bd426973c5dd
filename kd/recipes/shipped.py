"""Models that a recipe ships with the repository, like a recipe that starts from published checkpoints.

A shipped model is a model dir (:mod:`kd.models.model_dir`) that the toolkit itself trained, committed
next to a ``provenance.json``::

    {"fingerprint": {...},   what must match for the model to stand in for a training run: the digests
                             of the training and dev data, of the training config and of the token
                             inventory (see :func:`fingerprint`)
     "command": "...",       the command that retrains it
     "trained": {"date", "machine", "commit", "wall_seconds"}}

:func:`restore` copies the shipped model into a recipe's run dir when the fingerprint of the run the
recipe is about to train equals the shipped one, and says so; otherwise the recipe trains the model
as usual. Nothing is trusted by name alone: a corpus built with another seed or version, a changed
config or another token inventory has another fingerprint.

A training run longer than one sitting on one machine can ship a *resume point* instead of a model
(:func:`ship_resume_point`): the run's newest checkpoint (weights, optimiser and RNG state, data
position) and its logs under ``resume/``, with the same provenance plus ``"resume": {"step": N}``.
:func:`restore_for_run` puts it into the run dir of a run with the same fingerprint, and the training
loop continues from it exactly (``kd.training.engine``). Only the newest checkpoint travels, so the
final average of the best checkpoints (``checkpoint.average_best``) is taken over the checkpoints from
the resume point on: it equals the uninterrupted run's where those best checkpoints come after the
resume point (with a decaying learning rate, the late ones).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from kd.core.io import atomic_write_text, config_digest, write_json

__all__ = ["audio_digest", "cpu_model", "data_digest", "fingerprint", "provenance", "reidentify", "restore", "restore_for_run",
           "run_fingerprint", "settings_digest", "restore_resume_point", "ship", "ship_resume_point", "ship_run", "PROVENANCE",
           "RESUME_DIR"]

PROVENANCE = "provenance.json"
RESUME_DIR = "resume"  # a shipped resume point: resume/checkpoints/step-N/, resume/log.csv, resume/dev.csv
RESUMED_FROM_SHIPPED = "resumed-from-shipped.json"  # in a run dir: the provenance of the resume point it continued
_RUN_LOGS = ("log.csv", "dev.csv")


def audio_digest(data_dir: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a data dir's transcripts and audio bytes, in utterance order."""
    from kd.data.datadir import load_data_dir

    h = hashlib.sha256()
    for u in load_data_dir(data_dir).utterances:
        h.update(f"{u.utt} {u.text}\n".encode("utf-8"))
        h.update(Path(u.path).read_bytes())
    return h.hexdigest()[:16]


def data_digest(data_dir: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a data dir's transcripts and audio, in utterance order.

    A split of the built-in corpus (its ``corpus_split.json``, written by ``kd.corpus.synth.build_corpus``)
    is identified by its plan digest (engine, texts, speakers, effects and seeds of every utterance) and
    its transcripts, so that its audio need not be rendered to check a shipped model trained on it.
    """
    from kd.corpus.synth import SPLIT_FILE

    split_file = Path(data_dir) / SPLIT_FILE
    if split_file.is_file():
        plan = json.loads(split_file.read_text(encoding="utf-8"))
        h = hashlib.sha256(f"corpus split {plan['digest']}\n".encode("utf-8"))
        h.update((Path(data_dir) / "text").read_bytes())
        return "plan-" + h.hexdigest()[:16]
    return audio_digest(data_dir)


def fingerprint(*, train: list[str | os.PathLike], dev: str | os.PathLike | None, config: Mapping[str, Any],
                tokens: str | os.PathLike) -> dict[str, Any]:
    """What identifies a training run's outcome: its data (content, not paths), its settings without
    the data paths, and its token inventory file."""
    return {"train": [data_digest(d) for d in train], "dev": data_digest(dev) if dev else None,
            "config": settings_digest(config), "tokens": hashlib.sha256(Path(tokens).read_bytes()).hexdigest()[:16]}


def run_fingerprint(config: Any, tokens: str | os.PathLike) -> dict[str, Any]:
    """:func:`fingerprint` of a ``TrainConfig`` (its data dirs and settings) and its token list file."""
    return fingerprint(train=list(config.data.train), dev=config.data.dev, config=config.to_dict(), tokens=tokens)


# TrainConfig fields added after the shipped teachers' fingerprints were taken: left out of the digest
# while they hold the value of the runs before them (kd.training.config.ADDED_FIELDS), so that an
# unchanged preset keeps the fingerprint its shipped teachers carry
ADDED_SINCE_SHIPPED = (("optim", "decoupled_weight_decay"),)
# fields that never change a run's outcome (a time-limited run resumed without the limit ends exactly as
# the uninterrupted run): always left out of the digest
OUTCOME_NEUTRAL = (("optim", "time_limit_s"),)


def settings_digest(config: Mapping[str, Any]) -> str:
    """Digest of a training config (``TrainConfig.to_dict()``) without its data and token paths, without
    the fields of :data:`OUTCOME_NEUTRAL` and without those of :data:`ADDED_SINCE_SHIPPED` at their
    earlier value."""
    from kd.training.config import ADDED_FIELDS

    settings = json.loads(json.dumps(config))
    settings.get("data", {}).pop("train", None)
    settings.get("data", {}).pop("dev", None)
    settings.get("tokens", {}).pop("path", None)
    for section, name in ADDED_SINCE_SHIPPED:
        holder = settings.get(section)
        if isinstance(holder, dict) and holder.get(name) == ADDED_FIELDS[(section, name)]:
            holder.pop(name)
    for section, name in OUTCOME_NEUTRAL:
        holder = settings.get(section)
        if isinstance(holder, dict):
            holder.pop(name, None)
    return config_digest(settings)


def ship(model_dir: str | os.PathLike, target: str | os.PathLike, *, fingerprint: Mapping[str, Any], command: str,
         trained: Mapping[str, Any]) -> Path:
    """Copy a trained model dir to ``target`` (in the repository) with its provenance."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target)
    write_json(target / PROVENANCE, {"fingerprint": dict(fingerprint), "command": command, "trained": dict(trained)})
    return target


def ship_run(run: str | os.PathLike, tokens: str | os.PathLike, target: str | os.PathLike, *, command: str,
             trained: Mapping[str, Any]) -> Path:
    """:func:`ship` a finished training run's model dir to ``target``, with the run's fingerprint
    (:func:`run_fingerprint` with the token list ``tokens``) and its wall time added to ``trained``
    (:func:`provenance`); for a run resumed from a checkpoint, that wall time covers the updates after
    ``resumed_from`` only, and ``resumed_from`` says so. A run without ``result.json`` (not trained to the end,
    or restored from a shipped model) or one stopped by its time limit is a ValueError."""
    from kd.training.config import TrainConfig

    run = Path(run)
    if not (run / "result.json").is_file():
        raise ValueError(f"{run} is not a finished training run (restored teachers are not shipped)")
    config = TrainConfig.from_yaml(run / "config.yaml")
    result = json.loads((run / "result.json").read_text())
    if result.get("stopped_early"):
        raise ValueError(f"{run} was stopped by its time limit at step {result['steps']}: ship it as a resume "
                         "point (ship_resume_point) or let it finish")
    timing = {"wall_seconds": result["wall_seconds"]}
    if result.get("resumed_from"):
        timing["resumed_from"] = result["resumed_from"]
    timing.update(_time_before_resume(run))
    shipped = ship(run / "model", target, command=command, trained={**trained, **timing},
                   fingerprint=run_fingerprint(config, tokens))
    print(f"shipped {run} to {target}")
    return shipped


def ship_resume_point(run: str | os.PathLike, tokens: str | os.PathLike, target: str | os.PathLike, *,
                      command: str, trained: Mapping[str, Any]) -> Path:
    """Ship an unfinished training run as a resume point at ``target`` (replacing what is there): its
    newest checkpoint and logs under ``resume/``, and a provenance with the run's fingerprint, ``"resume":
    {"step": N}`` and, in ``trained``, the seconds of training to that step by the run's ``log.csv`` (its
    rows' ``steps_per_s``; earlier resume points' seconds as ``wall_seconds_before_resume``). Stop
    the run first: a checkpoint pruned while it is copied is an error. A finished run (``result.json``)
    or one without a checkpoint is a ValueError: ship the first with :func:`ship_run`."""
    from kd.training.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
    from kd.training.config import TrainConfig

    run, target = Path(run), Path(target)
    result = run / "result.json"
    if result.is_file() and not json.loads(result.read_text(encoding="utf-8")).get("stopped_early"):
        raise ValueError(f"{run} finished training: ship its model (ship_run), not a resume point")
    newest = latest_checkpoint(run / CHECKPOINTS_DIR)
    if newest is None:
        raise ValueError(f"{run} holds no finished checkpoint to resume from")
    config = TrainConfig.from_yaml(run / "config.yaml")
    timing = {"wall_seconds": _elapsed_at(run / "log.csv", newest.step)}
    timing.update(_time_before_resume(run))
    tmp = target.with_name(target.name + ".shipping")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(newest.path, tmp / RESUME_DIR / CHECKPOINTS_DIR / newest.path.name)
    for name in _RUN_LOGS:
        if (run / name).is_file():
            shutil.copy2(run / name, tmp / RESUME_DIR / name)
    write_json(tmp / PROVENANCE, {"fingerprint": run_fingerprint(config, tokens), "command": command,
                                  "trained": {**trained, **timing}, "resume": {"step": newest.step}})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    print(f"shipped {run} at step {newest.step} to {target} (a resume point)")
    return target


def _time_before_resume(run: Path) -> dict[str, float]:
    """``{"wall_seconds_before_resume": s}`` for a run that continued a shipped resume point (the seconds of
    the resume point and of those it continued), else ``{}``."""
    earlier = run / RESUMED_FROM_SHIPPED
    if not earlier.is_file():
        return {}
    before = json.loads(earlier.read_text(encoding="utf-8"))["trained"]
    return {"wall_seconds_before_resume": before.get("wall_seconds", 0.0) + before.get("wall_seconds_before_resume", 0.0)}


def _elapsed_at(log: Path, step: int) -> float:
    """Seconds of training up to ``step`` by a run's ``log.csv``: each row's steps since the row before,
    at its ``steps_per_s`` (0.0 without a log)."""
    import csv

    elapsed, last = 0.0, 0
    if log.is_file():
        with open(log, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                now = int(row["step"])
                if now > step:
                    break
                if float(row.get("steps_per_s") or 0) > 0:
                    elapsed += (now - last) / float(row["steps_per_s"])
                last = now
    return round(elapsed, 3)


def reidentify(shipped: str | os.PathLike, *, train: Sequence[str | os.PathLike],
               dev: str | os.PathLike | None) -> dict[str, Any]:
    """Rewrite the data digests of a shipped model that was identified by its data's audio bytes
    (:func:`audio_digest`) as the digests :func:`data_digest` gives today (a built-in corpus split: its
    plan), without retraining it. ``train`` and ``dev`` are rendered data dirs of the same data: each must
    still give the recorded audio digest, else nothing is written (ValueError naming the dir). The former
    digests stay in the provenance under ``audio_fingerprint``. Returns the new fingerprint."""
    path = Path(shipped) / PROVENANCE
    record = json.loads(path.read_text(encoding="utf-8"))
    found = record["fingerprint"]
    old = {"train": [audio_digest(d) for d in train], "dev": audio_digest(dev) if dev else None}
    for key in ("train", "dev"):
        if found.get(key) != old[key]:
            raise ValueError(f"{shipped}: the {key} data given ({train if key == 'train' else dev}) has audio digest "
                             f"{old[key]}, the shipped model was trained on {found.get(key)}")
    record["audio_fingerprint"] = old
    record["fingerprint"] = {**found, "train": [data_digest(d) for d in train],
                             "dev": data_digest(dev) if dev else None}
    write_json(path, record)
    return record["fingerprint"]


def _differing_parts(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The parts (train, dev, config, tokens) in which two fingerprints differ, sorted."""
    return sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))


def restore(shipped: str | os.PathLike, model_dir: str | os.PathLike, expected: Mapping[str, Any]) -> str | None:
    """Copy the shipped model to ``model_dir`` if its fingerprint equals ``expected``.

    Returns None when it was restored, else the reason it was not (no shipped model; which part
    of the fingerprint differs), for the recipe's log.
    """
    shipped = Path(shipped)
    if not (shipped / PROVENANCE).is_file():
        return f"no shipped model at {shipped}"
    provenance = json.loads((shipped / PROVENANCE).read_text(encoding="utf-8"))
    differs = _differing_parts(provenance.get("fingerprint", {}), expected)
    if differs:
        return f"{shipped}: the shipped model was trained with other {', '.join(differs)}"
    model_dir = Path(model_dir)
    tmp = model_dir.with_name(model_dir.name + ".restoring")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(shipped, tmp, ignore=shutil.ignore_patterns(PROVENANCE))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    atomic_write_text(model_dir.parent / "restored-from.txt", f"{shipped}\n")
    return None


def restore_for_run(shipped: str | os.PathLike | None, run: str | os.PathLike, config: Any,
                    tokens: str | os.PathLike, label: str) -> bool:
    """Whether the shipped model stands in for the training run ``run`` of ``config`` (a ``TrainConfig``;
    ``tokens``: its token list file): restored into ``run/model`` when its fingerprint matches and ``run``
    has not finished training here; otherwise False, with the reason on stderr under ``label``."""
    import sys

    from kd.core.io import MARKER_NAME

    if shipped is None or (Path(run) / MARKER_NAME).is_file():  # a run that finished here is kept
        return False
    if (Path(shipped) / RESUME_DIR).is_dir():
        step = restore_resume_point(shipped, run, run_fingerprint(config, tokens), label)
        if step is not None:
            print(f"{label}: training, from the shipped resume point {shipped} at step {step}", file=sys.stderr)
        return False
    reason = restore(shipped, Path(run) / "model", run_fingerprint(config, tokens))
    if reason is not None:
        print(f"{label}: training ({reason})", file=sys.stderr)
    return reason is None


def restore_resume_point(shipped: str | os.PathLike, run: str | os.PathLike, expected: Mapping[str, Any],
                         label: str) -> int | None:
    """Put the resume point shipped at ``shipped`` (:func:`ship_resume_point`) into the run dir ``run``
    when its fingerprint equals ``expected`` and ``run`` holds no checkpoint as far on; returns its
    step, or None (with the reason on stderr under ``label``) when the run starts or continues
    without it."""
    import sys

    from kd.training.checkpoint import CHECKPOINTS_DIR, latest_checkpoint, list_checkpoints

    shipped, run = Path(shipped), Path(run)
    record = json.loads((shipped / PROVENANCE).read_text(encoding="utf-8"))
    differs = _differing_parts(record.get("fingerprint", {}), expected)
    if differs:
        print(f"{label}: the resume point {shipped} is of a run with other {', '.join(differs)}; training "
              "from the start", file=sys.stderr)
        return None
    [point] = list_checkpoints(shipped / RESUME_DIR / CHECKPOINTS_DIR)
    here = latest_checkpoint(run / CHECKPOINTS_DIR)
    if here is not None and here.step >= point.step:
        print(f"{label}: {run} is at step {here.step}, at or past the resume point {shipped} (step "
              f"{point.step})", file=sys.stderr)
        return None
    (run / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    tmp = run / CHECKPOINTS_DIR / f".tmp-{point.path.name}"  # never read as a checkpoint until renamed
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(point.path, tmp)
    for name in _RUN_LOGS:  # the learning curve so far (truncated to the step on resume)
        if (shipped / RESUME_DIR / name).is_file():
            shutil.copy2(shipped / RESUME_DIR / name, run / name)
    write_json(run / RESUMED_FROM_SHIPPED, {**record, "shipped": str(shipped)})
    os.replace(tmp, run / CHECKPOINTS_DIR / point.path.name)
    return point.step


def provenance(repo: str | os.PathLike, watched: Sequence[str] = ()) -> dict[str, str]:
    """Date, machine, CPU model and commit of a results file or a shipped model.

    ``commit``: the short hash of the git checkout ``repo``, with ``+changes`` when any of the paths
    ``watched`` (relative to ``repo``) has uncommitted changes; ``unknown`` outside a git checkout.
    """
    import datetime
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *watched], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu_model(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}


def cpu_model() -> str:
    """The CPU's model name (floating-point results of a training run can differ between CPU models)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
