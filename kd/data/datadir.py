"""Readers for Kaldi/ESPnet data dirs and the LibriSpeech folder layout.

A data dir holds ``wav.scp`` and ``text`` (required), ``utt2spk``, ``spk2utt`` and ``utt2dom``
(optional), each a list of ``<utt-id> <value>`` lines. Relative audio paths in ``wav.scp``
are resolved against the data dir itself. Pipe entries (``cmd |``) and ``segments`` are not
supported and are reported as such.

Every problem is reported with its file, line and utterance id. ``load_data_dir`` raises
:class:`DataDirError` on the first problem, or, with ``skip_bad=True``, drops the affected
utterances and counts them in :class:`SkipReport`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kd.data.audio import AudioError, Problem, inspect_audio
from kd.data.text import normalize_text


@dataclass(frozen=True)
class Issue:
    """One problem found in a data dir."""

    problem: Problem
    file: str
    utt: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f" [{self.utt}]" if self.utt else ""
        return f"{where}{who}: {self.problem.value}: {self.message}"


class DataDirError(ValueError):
    def __init__(self, issue: Issue, more: int = 0):
        self.issue = issue
        extra = f" (and {more} more problems; run `kd data check` to list them)" if more else ""
        super().__init__(f"{issue}{extra}")


@dataclass(frozen=True)
class Utterance:
    utt: str
    path: Path
    text: str  # as written in the data dir (normalise with normalize_text before use)
    speaker: str
    domain: str | None = None


@dataclass
class SkipReport:
    """Utterances dropped under ``skip_bad``: counted by problem, listed with the reason."""

    issues: list[Issue] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len({i.utt for i in self.issues if i.utt is not None})

    def by_problem(self) -> dict[str, int]:
        return dict(Counter(i.problem.value for i in self.issues))

    def to_dict(self) -> dict:
        return {"skipped_utterances": self.count, "by_problem": self.by_problem(),
                "issues": [str(i) for i in self.issues]}


@dataclass
class DataDir:
    root: Path
    utterances: list[Utterance]
    skipped: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.utterances)


def _read_table(path: Path, issues: list[Issue], allow_empty_value: bool = False) -> dict[str, tuple[str, int]]:
    """Parse ``<id> <value>`` lines into id -> (value, line number)."""
    table: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if key in table:
                issues.append(Issue(Problem.DUPLICATE_ID, str(path), key, f"also on line {table[key][1]}", n))
                continue
            if not value and not allow_empty_value:
                kind = Problem.EMPTY_TRANSCRIPT if path.name == "text" else Problem.MALFORMED_LINE
                issues.append(Issue(kind, str(path), key, "no value after the utterance id", n))
            table[key] = (value, n)
    return table


def scan_data_dir(path: str | os.PathLike, *, sample_rate: int | None = 16000, check_audio: bool = True,
                  check_samples: bool = False, charset: frozenset[str] | None = None,
                  unknown_chars: Callable[[str], list[str]] | None = None) -> tuple[list[Utterance], list[Issue]]:
    """Read a data dir and list every problem (nothing raised for bad content).

    ``unknown_chars(text)`` (for example a tokenizer's) or ``charset`` (allowed characters
    of normalised text) enables the token-inventory check. ``check_audio`` validates every
    audio header (rate, channels, truncation); ``check_samples`` also decodes the samples
    (NaN/inf).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected a data dir at {root}, found no such directory")
    issues: list[Issue] = []
    for required in ("wav.scp", "text"):
        if not (root / required).is_file():
            raise DataDirError(Issue(Problem.MISSING_ID, str(root / required), None, "required file is missing"))
    wav = _read_table(root / "wav.scp", issues)
    text = _read_table(root / "text", issues)
    optional = {name: _read_table(root / name, issues) for name in ("utt2spk", "utt2dom") if (root / name).is_file()}
    if (root / "segments").is_file():
        issues.append(Issue(Problem.UNSUPPORTED, str(root / "segments"), None, "segments files are not supported"))
    # ids must agree across files
    for name, table in [("text", text), *optional.items()]:
        for utt in wav.keys() - table.keys():
            issues.append(Issue(Problem.MISSING_ID, str(root / name), utt, f"id in wav.scp but not in {name}"))
        for utt in table.keys() - wav.keys():
            issues.append(Issue(Problem.MISSING_ID, str(root / "wav.scp"), utt,
                                f"id in {name} (line {table[utt][1]}) but not in wav.scp"))
    if (root / "spk2utt").is_file() and "utt2spk" in optional:
        spk2utt = _read_table(root / "spk2utt", issues)
        pairs = {(u, s) for s, (v, _) in spk2utt.items() for u in v.split()}
        expected = {(u, s) for u, (s, _) in optional["utt2spk"].items()}
        for u, s in sorted(pairs ^ expected):
            if u not in optional["utt2spk"] and u not in wav:
                continue
            if u in wav and u not in optional["utt2spk"]:
                continue  # already reported as missing from utt2spk
            issues.append(Issue(Problem.SPEAKER_MISMATCH, str(root / "spk2utt"), u,
                                f"speaker {s!r} is in only one of utt2spk and spk2utt"))
    utterances = []
    for utt, (entry, line) in wav.items():
        if entry.endswith("|") or " " in entry.strip():
            issues.append(Issue(Problem.UNSUPPORTED, str(root / "wav.scp"), utt,
                                f"only plain file paths are supported, found {entry!r}", line))
            continue
        if not entry:
            continue
        audio = Path(entry) if os.path.isabs(entry) else root / entry
        transcript = text.get(utt, ("", 0))[0]
        if utt in text and transcript:
            norm = normalize_text(transcript)
            if not norm:
                issues.append(Issue(Problem.EMPTY_TRANSCRIPT, str(root / "text"), utt,
                                    f"nothing left after normalisation of {transcript!r}", text[utt][1]))
            bad = unknown_chars(transcript) if unknown_chars else (
                sorted(set(norm) - charset) if charset is not None else [])
            if bad:
                issues.append(Issue(Problem.UNKNOWN_CHARACTERS, str(root / "text"), utt,
                                    f"{''.join(bad)!r} in {transcript!r}", text[utt][1]))
        if check_audio:
            try:
                inspect_audio(audio, utt=utt, sample_rate=sample_rate, check_samples=check_samples)
            except AudioError as e:
                issues.append(Issue(e.problem, e.path, utt, e.detail))
        speaker = optional.get("utt2spk", {}).get(utt, (utt, 0))[0]
        domain = optional.get("utt2dom", {}).get(utt, (None, 0))[0]
        utterances.append(Utterance(utt, audio, transcript, speaker, domain))
    return utterances, issues


def _finish(root: Path, utterances: list[Utterance], issues: list[Issue], skip_bad: bool) -> DataDir:
    if issues and not skip_bad:
        raise DataDirError(issues[0], more=len(issues) - 1)
    bad = {i.utt for i in issues if i.utt is not None}
    fatal = [i for i in issues if i.utt is None]
    if fatal:
        raise DataDirError(fatal[0], more=len(issues) - 1)
    kept = [u for u in utterances if u.utt not in bad]
    return DataDir(root, kept, SkipReport(issues))


def load_data_dir(path: str | os.PathLike, *, skip_bad: bool = False, sample_rate: int | None = 16000,
                  check_audio: bool = True, check_samples: bool = False,
                  charset: frozenset[str] | None = None,
                  unknown_chars: Callable[[str], list[str]] | None = None) -> DataDir:
    """Load a Kaldi/ESPnet data dir (see :func:`scan_data_dir` for the checks)."""
    utterances, issues = scan_data_dir(path, sample_rate=sample_rate, check_audio=check_audio,
                                       check_samples=check_samples, charset=charset, unknown_chars=unknown_chars)
    return _finish(Path(path), utterances, issues, skip_bad)


def load_librispeech(path: str | os.PathLike, *, skip_bad: bool = False, check_audio: bool = True,
                     domain: str | None = None) -> DataDir:
    """Load a LibriSpeech-layout folder: ``<spk>/<chapter>/<spk>-<chapter>.trans.txt`` + ``.flac``."""
    root = Path(path)
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"Expected LibriSpeech layout <spk>/<chapter>/*.trans.txt under {root}, found none")
    issues: list[Issue] = []
    utterances = []
    for trans in transcripts:
        table = _read_table(trans, issues)
        for utt, (transcript, line) in sorted(table.items()):
            audio = trans.parent / f"{utt}.flac"
            if not transcript:
                issues.append(Issue(Problem.EMPTY_TRANSCRIPT, str(trans), utt, "no transcript", line))
            if check_audio:
                try:
                    inspect_audio(audio, utt=utt)
                except AudioError as e:
                    issues.append(Issue(e.problem, e.path, utt, e.detail))
            utterances.append(Utterance(utt, audio, transcript, utt.split("-")[0], domain or root.name))
    return _finish(root, utterances, issues, skip_bad)


def read_alignments(path: str | os.PathLike) -> dict[str, dict]:
    """Read ``alignments.jsonl`` (a data dir or the file): utt -> {"phones": [[s, e, p]...], "words": [...]}."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / "alignments.jsonl"
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[rec["utt"]] = {"phones": rec["phones"], "words": rec["words"]}
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON object with utt, phones, words ({e})") from None
    return out


def write_subset(src: str | os.PathLike, dst: str | os.PathLike, num_utterances: int, *, seed: int = 0) -> Path:
    """Write a data dir holding ``num_utterances`` utterances of ``src``, drawn at random (seeded).

    For low-resource experiments: the same ``(src, num_utterances, seed)`` always gives the same
    utterances. ``wav.scp``, ``text``, ``utt2spk``, ``utt2dom`` and ``alignments.jsonl`` keep their
    subset's lines (audio paths rewritten relative to ``dst``, the audio is not copied); ``spk2utt``
    is rebuilt. Each file is written atomically, so a re-run after an interruption rewrites them.
    """
    import json
    import random

    from kd.core.io import atomic_write_text

    src, dst = Path(src), Path(dst)
    utterances = load_data_dir(src, check_audio=False).utterances
    if isinstance(num_utterances, bool) or not isinstance(num_utterances, int) or num_utterances < 1:
        raise ValueError(f"num_utterances: expected an integer >= 1, found {num_utterances!r}")
    if num_utterances > len(utterances):
        raise ValueError(f"num_utterances: {src} has {len(utterances)} utterances, {num_utterances} were asked for")
    if dst.resolve() == src.resolve():
        raise ValueError(f"write_subset: the destination is the source data dir {src}")
    ids = sorted(u.utt for u in utterances)
    chosen = set(random.Random(seed).sample(ids, num_utterances))
    kept = sorted((u for u in utterances if u.utt in chosen), key=lambda u: u.utt)
    dst.mkdir(parents=True, exist_ok=True)
    table = lambda rows: "".join(f"{k} {v}\n" for k, v in rows)  # noqa: E731
    atomic_write_text(dst / "wav.scp", table((u.utt, os.path.relpath(u.path.resolve(), dst.resolve())) for u in kept))
    atomic_write_text(dst / "text", table((u.utt, u.text) for u in kept))
    if (src / "utt2spk").is_file():
        atomic_write_text(dst / "utt2spk", table((u.utt, u.speaker) for u in kept))
        speakers: dict[str, list[str]] = {}
        for u in kept:
            speakers.setdefault(u.speaker, []).append(u.utt)
        atomic_write_text(dst / "spk2utt", table((s, " ".join(us)) for s, us in sorted(speakers.items())))
    if (src / "utt2dom").is_file():
        atomic_write_text(dst / "utt2dom", table((u.utt, u.domain) for u in kept))
    if (src / "alignments.jsonl").is_file():
        with open(src / "alignments.jsonl", encoding="utf-8") as f:
            lines = [line for line in f if line.strip() and json.loads(line).get("utt") in chosen]
        atomic_write_text(dst / "alignments.jsonl", "".join(lines))
    return dst
