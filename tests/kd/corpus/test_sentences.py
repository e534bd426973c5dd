"""Tests for the synthetic corpus's sentence generator and word lists."""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kd.corpus import vocab
from kd.corpus.sentences import (
    ALPHABET,
    SentenceGenerator,
    generate_splits,
    number_words,
    vocabulary,
)

REPO = Path(__file__).resolve().parents[3]
SPLITS = {"train": 1500, "dev": 300, "test": 300}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[str]]:
    return generate_splits(SPLITS, seed=7)


def test_vocabulary_is_large_and_lowercase():
    words = vocabulary()
    assert len(words) >= 1500
    bad = sorted(w for w in words if not re.fullmatch(r"[a-z']+", w))
    assert bad == []


def test_word_lists_have_no_duplicates():
    lists = {
        "FIRST_NAMES": vocab.FIRST_NAMES, "PLACE_NAMES": vocab.PLACE_NAMES,
        "MANNER_ADVERBS": vocab.MANNER_ADVERBS, "GENERAL_ADJECTIVES": vocab.GENERAL_ADJECTIVES,
        "MOTION_VERBS": vocab.MOTION_VERBS, "ORDINALS": vocab.ORDINALS,
    }
    for kind in vocab.Kind:
        lists[f"NOUNS[{kind.name}]"] = vocab.NOUNS[kind]
        lists[f"ADJECTIVES[{kind.name}]"] = vocab.ADJECTIVES[kind]
        lists[f"TRANSITIVE_VERBS[{kind.name}]"] = vocab.TRANSITIVE_VERBS[kind]
    for kind, verbs in vocab.INTRANSITIVE_VERBS.items():
        lists[f"INTRANSITIVE_VERBS[{kind.name}]"] = verbs
    duplicated = {name: sorted({w for w in ws if ws.count(w) > 1}) for name, ws in lists.items()}
    assert {name: d for name, d in duplicated.items() if d} == {}


def test_animal_verbs_name_known_animals():
    animals = set(vocab.NOUNS[vocab.Kind.ANIMAL])
    unknown = {verb: sorted(set(names) - animals) for verb, names in vocab.ANIMAL_VERBS.items()}
    assert {verb: u for verb, u in unknown.items() if u} == {}


@pytest.mark.parametrize("word, expected", [
    ("box", "boxes"), ("baby", "babies"), ("key", "keys"), ("knife", "knives"),
    ("child", "children"), ("sheep", "sheep"), ("church", "churches"), ("potato", "potatoes"),
    ("radio", "radios"),
])
def test_plural(word, expected):
    assert vocab.plural(word) == expected


@pytest.mark.parametrize("verb, forms", [
    ("carry", ("carries", "carried", "carried", "carrying")),
    ("watch", ("watches", "watched", "watched", "watching")),
    ("stop", ("stops", "stopped", "stopped", "stopping")),
    ("bake", ("bakes", "baked", "baked", "baking")),
    ("see", ("sees", "saw", "seen", "seeing")),
    ("swim", ("swims", "swam", "swum", "swimming")),
    ("go", ("goes", "went", "gone", "going")),
    ("moo", ("moos", "mooed", "mooed", "mooing")),
    ("play", ("plays", "played", "played", "playing")),
    ("panic", ("panics", "panicked", "panicked", "panicking")),
    ("argue", ("argues", "argued", "argued", "arguing")),
])
def test_verb_forms(verb, forms):
    v = vocab.make_verb(verb)
    assert (v.third, v.past, v.participle, v.gerund) == forms


@pytest.mark.parametrize("adjective, comparative, superlative", [
    ("big", ("bigger",), ("biggest",)), ("happy", ("happier",), ("happiest",)),
    ("nice", ("nicer",), ("nicest",)), ("good", ("better",), ("best",)),
    ("famous", ("more", "famous"), ("most", "famous")),
])
def test_comparison(adjective, comparative, superlative):
    assert vocab.comparative(adjective) == comparative
    assert vocab.superlative(adjective) == superlative


def test_number_words():
    assert number_words(1) == ["one"]
    assert number_words(13) == ["thirteen"]
    assert number_words(20) == ["twenty"]
    assert number_words(342) == ["three", "hundred", "forty", "two"]
    assert number_words(900) == ["nine", "hundred"]
    for bad in (0, 1000):
        with pytest.raises(ValueError, match=f"found {bad}"):
            number_words(bad)


def test_splits_have_requested_sizes_unique_and_disjoint(splits):
    assert {name: len(s) for name, s in splits.items()} == SPLITS
    for name, sentences in splits.items():
        assert len(set(sentences)) == len(sentences), name
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(splits[a]) & set(splits[b]), (a, b)


def test_sentences_are_clean_transcripts_within_bounds():
    words = vocabulary()
    allowed = set(ALPHABET)
    sentences = generate_splits({"train": 2000}, seed=3, min_words=5, max_words=12)["train"]
    rng = random.Random(0)
    free = [SentenceGenerator(0).sentence(rng) for _ in range(2000)]  # no length filter
    for text in sentences + free:
        assert set(text) <= allowed, text
        assert text == " ".join(text.split()), text  # single spaces, no leading/trailing
        assert set(text.split()) <= words, (text, set(text.split()) - words)
    assert all(5 <= len(t.split()) <= 12 for t in sentences)


def test_default_length_distribution(splits):
    lengths = [len(t.split()) for t in splits["train"]]
    assert min(lengths) >= 4 and max(lengths) <= 20
    assert 8 <= statistics.mean(lengths) <= 12  # measured: about 9.0


def test_same_seed_reproduces_and_different_seed_differs(splits):
    again = SentenceGenerator(7).generate_splits(SPLITS)
    assert again == splits
    assert SentenceGenerator(99).generate_splits(SPLITS, seed=7) == splits
    other = generate_splits(SPLITS, seed=8)
    for name in SPLITS:
        assert other[name] != splits[name]
    a, b = SentenceGenerator(5), SentenceGenerator(5)
    assert [a.sentence() for _ in range(50)] == [b.sentence() for _ in range(50)]
    assert [a.sentence(random.Random(1)) for _ in range(3)] == [b.sentence(random.Random(1))] * 3


def test_output_does_not_depend_on_hash_seed():
    code = (
        "from kd.corpus.sentences import generate_splits;"
        "s = generate_splits({'train': 200, 'dev': 50}, seed=11);"
        "print(abs(hash('x')) % 1000, '|'.join(s['train'] + s['dev']))"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                                capture_output=True, text=True, check=True)
        outputs.append(result.stdout.split(" ", 1))
    assert outputs[0][0] != outputs[1][0]  # the hash seed did change
    assert outputs[0][1] == outputs[1][1]


def test_earlier_splits_do_not_depend_on_later_ones_and_growth_appends():
    small = generate_splits({"test": 100, "train": 200}, seed=2)
    large = generate_splits({"test": 100, "train": 600}, seed=2)
    assert small["test"] == large["test"]
    assert large["train"][:200] == small["train"]


def test_exclude_is_respected(splits):
    excluded = set(splits["train"][:500])
    again = generate_splits(SPLITS, seed=7, exclude=excluded)
    everything = [t for s in again.values() for t in s]
    assert not excluded & set(everything)
    assert again["train"][:1000] == splits["train"][500:]  # the rest of the stream, in order
    assert generate_splits({"a": 10}, seed=7, exclude=list(excluded)) == generate_splits(
        {"a": 10}, seed=7, exclude=excluded)


def test_indefinite_articles_and_agreement():
    rng = random.Random(4)
    gen = SentenceGenerator(0)
    bigrams = set()
    for _ in range(5000):
        ws = gen.sentence(rng).split()
        bigrams.update(zip(ws, ws[1:]))
    assert {b for a, b in bigrams if a == "an"} and {b for a, b in bigrams if a == "a"}
    vowel_start = {(a, b) for a, b in bigrams if a == "a" and b[0] in "aeiou"}
    assert vowel_start <= {("a", w) for w in ("uniform", "university", "useful", "one")}
    consonant_start = {(a, b) for a, b in bigrams if a == "an" and b[0] not in "aeiou"}
    assert consonant_start <= {("an", "honest"), ("an", "hour")}
    wrong = {
        ("i", "is"), ("i", "are"), ("i", "has"), ("i", "does"), ("i", "were"),
        ("he", "are"), ("he", "have"), ("he", "were"), ("he", "do"), ("he", "am"),
        ("she", "are"), ("she", "have"), ("she", "were"), ("she", "do"), ("she", "am"),
        ("we", "is"), ("we", "was"), ("we", "has"), ("we", "does"), ("we", "am"),
        ("they", "is"), ("they", "was"), ("they", "has"), ("they", "does"), ("they", "am"),
        ("does", "i"), ("does", "we"), ("does", "they"), ("does", "you"), ("do", "he"),
        ("do", "she"),
    }
    assert bigrams & wrong == set()


def test_three_thousand_sentences_cover_most_of_the_vocabulary():
    sentences = generate_splits({"train": 3000}, seed=0)["train"]
    used = {w for t in sentences for w in t.split()}
    words = vocabulary()
    assert len(used) / len(words) >= 0.75  # measured 0.82-0.83 over seeds 0-5


@pytest.mark.parametrize("kwargs, message", [
    ({"counts": {"train": -1}}, r"counts\['train'\] must be >= 0, found -1"),
    ({"counts": {"train": 2.5}}, r"counts\['train'\] must be an int, found 2.5"),
    ({"counts": {"train": True}}, r"counts\['train'\] must be an int, found True"),
    ({"counts": {"": 3}}, r"non-empty split names, found ''"),
    ({"counts": [("train", 3)]}, r"counts must be a mapping"),
    ({"counts": {"train": 3}, "min_words": 9, "max_words": 5}, r"min_words=9 > max_words=5"),
    ({"counts": {"train": 3}, "min_words": 0}, r"min_words must be >= 1, found 0"),
    ({"counts": {"train": 3}, "seed": "7"}, r"seed must be an int, found '7'"),
    ({"counts": {"train": 3}, "exclude": "a sentence"}, r"exclude must be a collection"),
])
def test_bad_arguments_raise(kwargs, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_splits(**kwargs)


def test_impossible_request_reports_how_many_were_found():
    # no template yields a one-word sentence
    with pytest.raises(ValueError, match=r"split 'train': found only 0 of 5 unique sentences"):
        generate_splits({"train": 5}, seed=0, min_words=1, max_words=1)
