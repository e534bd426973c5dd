"""Small file helpers shared by every stage: atomic writes, completion markers and YAML reading.

A stage writes its outputs through these helpers, so a file is either absent or
complete (written to a temporary name in the same folder, flushed, then renamed), and
marks the stage finished with a marker file that records what produced it. A re-run
skips a stage whose marker matches its configuration and redoes anything else.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

MARKER_NAME = ".done.json"


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``3e-5``, ``1E+4``).

    YAML 1.1, which PyYAML follows, reads a float only with a dot (``3.0e-5``) and leaves ``3e-5`` a
    string, so a learning rate written the usual way would fail a number check. YAML 1.2 reads it as
    a float; so does this loader. It adds no tags: Python objects are refused as by ``yaml.safe_load``.
    """


# add_implicit_resolver copies the resolver table for the subclass: yaml.SafeLoader is unchanged
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text safely with :class:`YamlLoader`; the toolkit reads every YAML config, recipe
    file and model-folder metadata so."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file.

    ``durable`` also flushes the data to disk before the rename (survives a power cut);
    bulk files that a stage can regenerate skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (stable bytes for equal objects)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def config_digest(obj: Any) -> str:
    """A stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def is_done(stage_dir: str | os.PathLike, config: Any) -> bool:
    """True when ``stage_dir`` holds a completion marker written for this exact ``config``."""
    marker = Path(stage_dir) / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("config_digest") == config_digest(config)


def mark_done(stage_dir: str | os.PathLike, config: Any, **info: Any) -> None:
    """Record that the stage in ``stage_dir`` finished for ``config`` (written last, atomically)."""
    write_json(Path(stage_dir) / MARKER_NAME, {"config_digest": config_digest(config), **info})


def clear_done(stage_dir: str | os.PathLike) -> None:
    marker = Path(stage_dir) / MARKER_NAME
    if marker.exists():
        marker.unlink()


class LockedError(RuntimeError):
    """Another process holds the lock (see :func:`file_lock` with ``wait=False``)."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, what: str = "") -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block.

    The operating system drops the lock when the holder exits, killed or not, so a crash never
    leaves a stale lock behind. ``wait=False`` raises :class:`LockedError` at once when another
    process holds it; ``what`` names the locked thing in that message. POSIX only (``fcntl``);
    elsewhere the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield path
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(f"{what or path}: another process holds its lock {path}; "
                              "wait for it to finish or stop it") from None
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_csv_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """A CSV log (a header row, then one row of numbers per update, as :class:`kd.training.logs.CsvLog`
    writes it), numbers as floats, empty cells as NaN."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]
