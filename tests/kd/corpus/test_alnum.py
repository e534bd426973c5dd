"""The alphanumeric task of the built-in corpus: its grammar, its splits and its synthesised corpus."""

from __future__ import annotations

import json
import random
import re

import pytest

from kd.corpus.alnum import AlnumGenerator, number_words, ordinal_words, vocabulary
from kd.corpus.domains import PRESETS, SPLITS
from kd.corpus.sentences import SentenceGenerator, Task, generate_splits
from kd.corpus.synth import build_corpus


def test_vocabulary_is_small_and_covers_every_sentence():
    words = vocabulary()
    assert 100 <= len(words) <= 300  # a few hundred words at most (ESPnet an4-like)
    assert all(re.fullmatch(r"[a-z']+", w) for w in words)
    rng = random.Random(3)
    generator = AlnumGenerator()
    used = {w for _ in range(20000) for w in generator.sentence(rng).split(" ")}
    assert used <= words
    assert words - used == set()  # no dead word in the list


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (42, "forty two"), (100, "one hundred"),
    (305, "three hundred five"), (2015, "two thousand fifteen"), (9999, "nine thousand nine hundred ninety nine"),
])
def test_number_words(n, words):
    assert " ".join(number_words(n)) == words


@pytest.mark.parametrize("n, words", [(1, "first"), (12, "twelfth"), (20, "twentieth"), (23, "twenty third"),
                                      (31, "thirty first")])
def test_ordinal_words(n, words):
    assert " ".join(ordinal_words(n)) == words


def test_out_of_range_numbers_are_errors():
    with pytest.raises(ValueError, match="0 <= n <= 9999, found 10000"):
        number_words(10000)
    with pytest.raises(ValueError, match="1 <= n <= 31, found 0"):
        ordinal_words(0)


def test_splits_deterministic_disjoint_and_bounded():
    counts = {"train": 2000, "dev": 200, "test": 300}
    a = generate_splits(counts, seed=5, min_words=2, max_words=12, task=Task.ALNUM)
    b = generate_splits(counts, seed=5, min_words=2, max_words=12, task=Task.ALNUM)
    assert a == b
    assert generate_splits(counts, seed=6, min_words=2, max_words=12, task=Task.ALNUM) != a
    sets = {k: set(v) for k, v in a.items()}
    assert all(len(sets[k]) == counts[k] for k in counts)
    assert not sets["train"] & sets["dev"] and not sets["train"] & sets["test"] and not sets["dev"] & sets["test"]
    assert all(2 <= len(s.split(" ")) <= 12 for v in a.values() for s in v)
    large = generate_splits({"train": 50}, seed=5)
    assert not set(large["train"]) & sets["train"]  # the large-vocabulary task is another grammar


def test_task_must_be_a_task():
    with pytest.raises(ValueError, match="expected a Task .*found 'alnum'"):
        SentenceGenerator(0, task="alnum")


def test_large_vocabulary_presets_keep_their_settings():
    # the settings (and completion markers) of the earlier corpora do not mention the task
    assert "task" not in PRESETS["cpu"].to_dict()
    assert PRESETS["alnum_cpu"].to_dict()["task"] == "alnum"


def test_alnum_cpu_is_sized_like_the_paper():
    sizes = PRESETS["alnum_cpu"].sizes
    for teacher in ("us", "uk"):
        assert sizes[teacher]["train"].utterances >= 10 * sizes["target"]["train"].utterances
        assert sizes[teacher]["test"].utterances >= 300
    assert sizes["target"]["test"].utterances >= 500


@pytest.fixture(scope="module")
def alnum_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("alnum")
    build_corpus(root, preset="alnum_tests", seed=0, jobs=2, progress=False)
    return root


def _manifest(root):
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def test_alnum_corpus_same_seed_same_bytes(alnum_corpus, tmp_path):
    other = tmp_path / "again"
    build_corpus(other, preset="alnum_tests", seed=0, jobs=1, progress=False)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))  # noqa: E731
                          if p.is_file() and p.name != ".done.json"}
    a, b = files(alnum_corpus), files(other)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_alnum_corpus_speakers_disjoint_and_words_in_vocabulary(alnum_corpus):
    records = _manifest(alnum_corpus)
    assert len(records) == PRESETS["alnum_tests"].total_utterances()
    assert {w for r in records for w in r["text"].split()} <= vocabulary()
    for domain in ("us", "uk", "target"):
        by_split = {s: [r for r in records if r["domain"] == domain and r["split"] == s] for s in SPLITS}
        train_voices = {(r["voice"], r["variant"]) for r in by_split["train"]}
        for split in ("dev", "test"):
            assert not train_voices & {(r["voice"], r["variant"]) for r in by_split[split]}
    target = [r for r in records if r["domain"] == "target"]
    assert any(r["noise"] for r in target) and any(r["rt60"] for r in target)
    assert all(r["noise"] is None and r["rt60"] is None for r in records if r["domain"] != "target")
