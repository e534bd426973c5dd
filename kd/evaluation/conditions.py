"""Error rates of the built-in corpus split by recording condition.

The corpus manifest (``manifest.jsonl``) records, for every utterance, how it was made: voice,
variant, speaking rate, additive noise and its SNR, reverberation. ``error_by_condition`` joins
it with the per-utterance output of ``kd eval`` (``utterances.jsonl``) and scores each group of
utterances with :func:`kd.evaluation.evaluate.score_texts` (corpus-level WER and CER, as ``kd eval``), so a
table can say which part of a domain shift a model fails on.

Test speakers are few (4 per domain in the ``cpu`` preset) and each has one voice, variant and
rate, so the ``voice``, ``synthesiser`` and ``speaker`` groups are confounded with each other;
noise and reverberation are drawn per utterance and are not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["CONDITIONS", "condition_table", "error_by_condition", "read_manifest", "read_utterances",
           "utterance_conditions"]

CONDITIONS = ("all", "clean_dry", "noise", "snr", "reverb", "voice", "synthesiser", "speaker")


def read_manifest(corpus_dir: str | os.PathLike) -> dict[str, dict]:
    """Manifest records of a built corpus by utterance id."""
    path = Path(corpus_dir) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no corpus manifest (build the corpus with kd corpus synth)")
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
                utt = Path(record["path"]).stem
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: expected a JSON record with a 'path', found {line[:80]!r}") from e
            out[utt] = record
    return out


def utterance_conditions(record: Mapping) -> dict[str, str]:
    """The group of an utterance under each of CONDITIONS."""
    noisy, reverberant = record.get("noise") is not None, record.get("rt60") is not None
    variant = str(record.get("variant", ""))
    return {
        "all": "all",
        "clean_dry": "clean and dry" if not (noisy or reverberant) else "noise and/or reverberation",
        "noise": record["noise"] if noisy else "none",
        "snr": f"{record['snr_db']:g} dB" if noisy else "no noise",
        "reverb": "reverberant" if reverberant else "dry",
        "voice": str(record.get("voice")),
        "synthesiser": "klatt" if variant.startswith("klatt") else "human variant",
        "speaker": f"{record.get('speaker')} ({record.get('voice')}, {variant}, {record.get('rate')} wpm)",
    }


def error_by_condition(utterances: Iterable[Mapping], manifest: Mapping[str, Mapping],
                       conditions: Sequence[str] = CONDITIONS) -> dict[str, dict[str, dict]]:
    """``{condition: {group: {"utterances", "wer", "cer"}}}`` over the utterances of a kd eval run.

    ``utterances``: rows with ``utt``, ``ref`` and ``hyp`` (normalised, as ``utterances.jsonl``).
    Every utterance must be in the manifest (a row from another corpus is an error, not a skip).
    """
    from kd.evaluation.evaluate import score_texts

    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"conditions: expected names from {CONDITIONS}, found {unknown}")
    groups: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for row in utterances:
        record = manifest.get(row["utt"])
        if record is None:
            raise ValueError(f"utterance {row['utt']!r} is not in the corpus manifest")
        labels = utterance_conditions(record)
        for c in conditions:
            refs, hyps = groups.setdefault((c, labels[c]), ([], []))
            refs.append(row["ref"])
            hyps.append(row["hyp"])
    out: dict[str, dict[str, dict]] = {c: {} for c in conditions}
    for (c, group), (refs, hyps) in sorted(groups.items()):
        score = score_texts(refs, hyps)
        out[c][group] = {"utterances": len(refs), "wer": score.wer, "cer": score.cer}
    return out


def read_utterances(path: str | os.PathLike) -> list[dict]:
    """The rows of a kd eval ``utterances.jsonl``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def condition_table(results: Mapping[str, Mapping[str, Mapping[str, dict]]], metric: str = "cer") -> str:
    """Markdown: one row per (condition, group), one column per system (``{system: error_by_condition}``)."""
    systems = list(results)
    if not systems:
        raise ValueError("results: expected at least one system, found none")
    first = results[systems[0]]
    lines = ["| condition | group | utterances | " + " | ".join(f"{s} {metric.upper()} (%)" for s in systems) + " |",
             "|---|---|---:|" + "---:|" * len(systems)]
    for condition, groups in first.items():
        for group, cell in groups.items():
            values = []
            for s in systems:
                other = results[s].get(condition, {}).get(group)
                values.append("-" if other is None else f"{100 * other[metric]:.1f}")
            lines.append(f"| {condition} | {group} | {cell['utterances']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
