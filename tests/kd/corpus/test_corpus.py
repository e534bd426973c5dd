"""The built-in corpus: determinism, alignments, speaker and sentence disjointness, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kd.cli import main
from kd.corpus.domains import PRESETS, SPLITS
from kd.corpus.synth import build_corpus
from kd.data import load_data_dir, read_alignments
from kd.data.text import NORMALIZED_ALPHABET


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".done.json"}


def test_same_seed_same_bytes_whatever_the_workers(tests_corpus, tmp_path):
    root, _ = tests_corpus
    other = tmp_path / "again"
    build_corpus(other, preset="tests", seed=0, jobs=1, progress=False)
    a, b = _files(root), _files(other)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.endswith(".wav")]) == PRESETS["tests"].total_utterances()
    different = [k for k in a if a[k] != b[k]]
    assert different == []


def test_other_seed_other_corpus(tests_corpus, tmp_path):
    root, _ = tests_corpus
    other = tmp_path / "seed1"
    build_corpus(other, preset="tests", seed=1, jobs=2, progress=False)
    assert (root / "us/train/text").read_bytes() != (other / "us/train/text").read_bytes()


def test_rerun_skips_finished_corpus(tests_corpus):
    root, _ = tests_corpus
    again = build_corpus(root, preset="tests", seed=0, jobs=2, progress=False)
    assert again["skipped"] is True


def test_counts_and_summary(tests_corpus):
    root, summary = tests_corpus
    preset = PRESETS["tests"]
    for domain, splits in preset.sizes.items():
        for split, size in splits.items():
            s = summary["splits"][domain][split]
            assert s["utterances"] == size.utterances
            assert s["speakers"] == size.speakers
            assert s["hours"] > 0
    assert summary["hours"] == pytest.approx(sum(s["hours"] for d in summary["splits"].values() for s in d.values()),
                                             abs=1e-3)


def test_alignments_line_up_with_audio(tests_corpus):
    root, _ = tests_corpus
    records = _manifest(root)
    checked_silence = 0
    for r in records:
        x, rate = sf.read(root / r["path"], dtype="float32")
        assert rate == 16000 and x.ndim == 1
        duration = len(x) / rate
        assert duration == pytest.approx(r["duration"], abs=1e-3)
        phones = r["phones"]
        assert phones, r["utt"]
        for (s0, e0, _), (s1, _, _) in zip(phones, phones[1:]):
            assert e0 == pytest.approx(s1, abs=1e-3)  # consecutive, in order
        for s, e, _ in phones:
            assert 0.0 <= s < e <= duration + 1e-3
        assert phones[-1][1] == pytest.approx(duration, abs=2e-3)  # covers to the end
        assert phones[0][0] == 0.0  # and from the start
        words = r["words"]
        assert [w for _, _, w in words] == r["text"].split()
        speech = [p for p in phones if p[2] != "sil"]
        for (s, e, _), (s1, _, _) in zip(words, words[1:]):
            assert speech[0][0] - 1e-3 <= s <= e <= speech[-1][1] + 1e-3
            assert e <= s1 + 1e-3
        if r["noise"] is None and r["rt60"] is None:
            # no energy outside the span of the speech phones
            first, last = int(speech[0][0] * rate), int(speech[-1][1] * rate)
            outside = np.concatenate([x[:first], x[last + int(0.02 * rate):]])
            peak = np.abs(x).max()
            assert outside.size == 0 or np.abs(outside).max() < 0.05 * peak, r["utt"]
            checked_silence += 1
    assert checked_silence > 20


def test_alignment_file_matches_manifest(tests_corpus):
    root, _ = tests_corpus
    records = {r["utt"]: r for r in _manifest(root)}
    align = read_alignments(root / "target" / "test")
    assert align
    for utt, a in align.items():
        assert a["phones"] == records[utt]["phones"] and a["words"] == records[utt]["words"]


def test_dev_and_test_speakers_disjoint_from_training(tests_corpus):
    root, _ = tests_corpus
    records = _manifest(root)
    for domain in ("us", "uk", "target"):
        by_split = {s: [r for r in records if r["domain"] == domain and r["split"] == s] for s in SPLITS}
        train_spk = {r["speaker"] for r in by_split["train"]}
        train_voices = {(r["voice"], r["variant"]) for r in by_split["train"]}
        for split in ("dev", "test"):
            assert not train_spk & {r["speaker"] for r in by_split[split]}
            assert not train_voices & {(r["voice"], r["variant"]) for r in by_split[split]}


def test_sentence_sets_disjoint(tests_corpus):
    root, _ = tests_corpus
    records = _manifest(root)
    train = {r["text"] for r in records if r["split"] == "train"}
    dev = {r["text"] for r in records if r["split"] == "dev"}
    test = {r["text"] for r in records if r["split"] == "test"}
    assert not train & dev and not train & test and not dev & test
    assert len(train) == sum(1 for r in records if r["split"] == "train")  # no repeats either


def test_target_domain_is_shifted(tests_corpus):
    root, _ = tests_corpus
    records = _manifest(root)
    target = [r for r in records if r["domain"] == "target"]
    teacher = [r for r in records if r["domain"] != "target"]
    assert all(r["noise"] is None and r["rt60"] is None for r in teacher)
    assert any(r["noise"] is not None for r in target) and any(r["rt60"] is not None for r in target)
    assert min(r["rate"] for r in target) > max(r["rate"] for r in teacher)
    assert not {r["voice"] for r in target} & {r["voice"] for r in teacher}


def test_data_dirs_load_and_check_clean(tests_corpus, capsys):
    root, _ = tests_corpus
    for domain in ("us", "uk", "target"):
        for split in SPLITS:
            d = root / domain / split
            data = load_data_dir(d, charset=NORMALIZED_ALPHABET)
            assert len(data) == PRESETS["tests"].sizes[domain][split].utterances
            assert {u.domain for u in data.utterances} == {domain}
            lines = (d / "wav.scp").read_text().splitlines()
            assert lines == sorted(lines)
    assert main(["data", "check", str(root / "target" / "train")]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_splits_rendered_later_have_the_bytes_of_a_corpus_rendered_at_once(tests_corpus, tmp_path):
    """A recipe renders the teacher domains' training audio only when it trains a teacher: the audio
    does not depend on which splits a call renders (the chunks are the whole plan's)."""
    from kd.corpus.synth import SPLIT_FILE
    from kd.recipes.shipped import data_digest

    root, _ = tests_corpus
    lazy = tmp_path / "lazy"
    # the plan's first chunk of 48 utterances holds us, uk and target/train; the second target/dev, test
    first = build_corpus(lazy, preset="tests", seed=0, jobs=2, progress=False, splits=["target/dev", "target/test"])
    assert sorted(first["not_rendered"]) == sorted(f"{d}/{s}" for d in ("us", "uk", "target") for s in SPLITS
                                                   if f"{d}/{s}" not in {"target/dev", "target/test"})
    assert set(first["splits"]) == {"target"} and set(first["splits"]["target"]) == {"dev", "test"}
    # an unrendered split: its data dir from the plan (transcripts readable, identified by its plan) ...
    train = lazy / "us/train"
    assert (train / "text").read_bytes() == (root / "us/train/text").read_bytes()
    assert json.loads((train / SPLIT_FILE).read_text())["utterances"] == PRESETS["tests"].sizes["us"]["train"].utterances
    planned = data_digest(train)
    assert planned.startswith("plan-") and planned == data_digest(root / "us/train")
    assert len(load_data_dir(train, check_audio=False).utterances) == 12
    # ... whose audio is an error naming the missing files, not silently empty
    with pytest.raises(Exception, match="missing audio file"):
        load_data_dir(train)
    second = build_corpus(lazy, preset="tests", seed=0, jobs=1, progress=False)  # the rest, one worker
    assert second["not_rendered"] == [] and second["skipped"] is False
    assert build_corpus(lazy, preset="tests", seed=0, jobs=2, progress=False)["skipped"] is True
    a, b = _files(root), _files(lazy)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert data_digest(train) == planned  # rendering does not change what identifies the split


def test_unknown_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"splits: unknown \['us/eval'\]"):
        build_corpus(tmp_path / "c", preset="tests", seed=0, progress=False, splits=["us/eval"])
