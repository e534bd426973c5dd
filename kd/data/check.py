"""``kd data check``: validate a data dir and report every problem with file and utterance."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kd.data.datadir import Issue, scan_data_dir
from kd.data.text import NORMALIZED_ALPHABET, CharTokenizer


@dataclass
class CheckReport:
    root: str
    num_utterances: int
    issues: list[Issue] = field(default_factory=list)
    hours: float = 0.0
    min_seconds: float = 0.0
    max_seconds: float = 0.0
    speakers: int = 0
    domains: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def bad_utterances(self) -> int:
        return len({i.utt for i in self.issues if i.utt})

    def summary(self) -> str:
        lines = [
            f"{self.root}: {self.num_utterances} utterances, {self.speakers} speakers, {self.hours:.3f} h "
            f"(utterances {self.min_seconds:.2f}-{self.max_seconds:.2f} s)",
        ]
        if self.domains:
            lines.append("domains: " + ", ".join(f"{d}={n}" for d, n in sorted(self.domains.items())))
        if self.issues:
            counts = Counter(i.problem.value for i in self.issues)
            lines.append(f"{len(self.issues)} problems in {self.bad_utterances} utterances: "
                         + "; ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_data_dir(path: str | os.PathLike, *, sample_rate: int = 16000, token_list: str | None = None,
                   check_samples: bool = True) -> CheckReport:
    """Check every file, id, transcript and audio file of a data dir.

    Audio: readable, not truncated, non-empty, mono, at ``sample_rate``, and (with
    ``check_samples``) free of NaN/inf. Transcripts: non-empty after normalisation and, with
    ``token_list`` (an ESPnet-style character token list), inside that inventory; without it,
    inside the characters the toolkit's normalisation produces.
    """
    import soundfile as sf

    tokenizer = CharTokenizer.load(token_list) if token_list else None
    utterances, issues = scan_data_dir(
        path, sample_rate=sample_rate, check_audio=True, check_samples=check_samples,
        charset=None if tokenizer else NORMALIZED_ALPHABET,
        unknown_chars=tokenizer.unknown_characters if tokenizer else None,
    )
    bad = {i.utt for i in issues}
    durations = []
    for u in utterances:
        if u.utt not in bad:
            durations.append(sf.info(str(u.path)).duration)
    return CheckReport(
        root=str(Path(path)),
        num_utterances=len(utterances),
        issues=sorted(issues, key=lambda i: (i.file, i.line or 0, i.utt or "")),
        hours=sum(durations) / 3600.0,
        min_seconds=min(durations, default=0.0),
        max_seconds=max(durations, default=0.0),
        speakers=len({u.speaker for u in utterances}),
        domains=dict(Counter(u.domain for u in utterances if u.domain)),
    )
