"""Seeded English sentence generator for the built-in synthetic corpus (docs/design.md §6).

Sentences are what eSpeak NG speaks and what the ASR models must transcribe, so they are
written the way transcripts are: lowercase words from `kd.corpus.vocab`, single spaces, no
punctuation. A template grammar (statements in several tenses, questions, relative and
subordinate clauses, passives, comparisons, numbers, dates, clock times, weather) combines
the word lists; nouns and verbs agree in number and meaning (verbs only take objects of the
kinds they list).

`generate_splits` draws train/dev/test sets of unique, pairwise disjoint sentences.
Randomness comes only from `random.Random` instances; nothing depends on hash seeds or set
iteration order, so a seed always gives the same sentences.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from kd.corpus import vocab as V
from kd.corpus.alnum import AlnumGenerator
from kd.corpus.vocab import Kind, Noun, Verb

ALPHABET = "abcdefghijklmnopqrstuvwxyz' "

# Attempts allowed per requested sentence (plus a constant) before giving up on a split.
_ATTEMPTS_PER_SENTENCE = 50
_EXTRA_ATTEMPTS = 1000

_AN_EXCEPTIONS = frozenset(("honest", "hour"))  # silent h: "an honest man"
_A_EXCEPTIONS = frozenset(("uniform", "university", "useful", "one"))  # "a useful tool"


class _Agr(enum.Enum):
    """Subject agreement: "i" | third person singular | everything else ("you", plurals)."""

    FIRST = 0  # "i"
    SG = 1
    PL = 2


_BE_PRESENT = {_Agr.FIRST: "am", _Agr.SG: "is", _Agr.PL: "are"}
_BE_PAST = {_Agr.FIRST: "was", _Agr.SG: "was", _Agr.PL: "were"}
_HAVE = {_Agr.FIRST: "have", _Agr.SG: "has", _Agr.PL: "have"}
_DO = {_Agr.FIRST: "do", _Agr.SG: "does", _Agr.PL: "do"}
_PRONOUN_AGR = {"i": _Agr.FIRST, "he": _Agr.SG, "she": _Agr.SG}
_OBJECT_FORM = {"i": "me", "he": "him", "she": "her", "we": "us", "they": "them"}


class _Tense(enum.Enum):
    PAST = 0
    PRESENT = 1
    PROGRESSIVE = 2
    PAST_PROGRESSIVE = 3
    FUTURE = 4
    GOING_TO = 5
    PERFECT = 6


_TENSES = tuple(_Tense)
_TENSE_WEIGHTS = (40, 15, 10, 7, 12, 6, 10)
# first auxiliary of a verb group -> which time phrases fit it ("is" -> "now", not "every day")
_AUX_TENSE = {
    "was": _Tense.PAST, "were": _Tense.PAST, "did": _Tense.PAST, "will": _Tense.FUTURE,
    "can": _Tense.FUTURE, "has": _Tense.PERFECT, "have": _Tense.PERFECT, "do": _Tense.PRESENT,
    "does": _Tense.PRESENT, "is": _Tense.PROGRESSIVE, "are": _Tense.PROGRESSIVE,
    "am": _Tense.PROGRESSIVE,
}


@dataclass(frozen=True)
class _NP:
    words: tuple[str, ...]
    agr: _Agr


def number_words(n: int) -> list[str]:
    """Spell 1 <= n <= 999 as words: 342 -> ["three", "hundred", "forty", "two"]."""
    if not 1 <= n <= 999:
        raise ValueError(f"number_words expects 1 <= n <= 999, found {n}")
    words = []
    if n >= 100:
        words += [V.UNITS[n // 100 - 1], "hundred"]
        n %= 100
    if n >= 20:
        words.append(V.TENS[n // 10 - 2])
        n %= 10
    if n > 0:
        words.append(V.UNITS[n - 1])
    return words


def _article(next_word: str) -> str:
    if next_word in _AN_EXCEPTIONS:
        return "an"
    if next_word in _A_EXCEPTIONS:
        return "a"
    return "an" if next_word[0] in "aeiou" else "a"


class _Lexicon:
    """Inflected word pools, built once from `kd.corpus.vocab` in list order."""

    def __init__(self) -> None:
        self.nouns = {k: tuple(V.make_noun(w, k) for w in ws) for k, ws in V.NOUNS.items()}
        self.adjectives = {k: V.GENERAL_ADJECTIVES + ws for k, ws in V.ADJECTIVES.items()}
        gradable = set(V.SUFFIX_GRADABLE) | set(V.PERIPHRASTIC_GRADABLE)
        self.gradable = {k: tuple(a for a in ws if a in gradable) for k, ws in self.adjectives.items()}
        self.verbs: dict[str, Verb] = {}
        objects: dict[str, list[Noun]] = {}
        for kind, bases in V.TRANSITIVE_VERBS.items():
            for base in bases:
                objects.setdefault(base, []).extend(self.nouns[kind])
        self.transitive = tuple(self.verb(b) for b in objects)
        self.objects_of = {b: tuple(ns) for b, ns in objects.items()}
        self.verbs_taking = {k: tuple(self.verb(b) for b in bs) for k, bs in V.TRANSITIVE_VERBS.items()}
        self.person_acts = tuple(self.verb(b) for b in V.INTRANSITIVE_VERBS[Kind.PERSON])
        general = V.INTRANSITIVE_VERBS[Kind.ANIMAL]
        self.animal_acts = {  # animal (singular) -> intransitive verbs it can be the subject of
            n.singular: tuple(self.verb(b) for b in general + tuple(
                b for b, animals in V.ANIMAL_VERBS.items() if n.singular in animals))
            for n in self.nouns[Kind.ANIMAL]
        }
        self.motion = tuple(self.verb(b) for b in V.MOTION_VERBS)
        self.reporting = tuple(self.verb(b) for b in V.REPORTING_VERBS)
        self.infinitive = tuple(self.verb(b) for b in V.INFINITIVE_VERBS)
        self.event_schedule = tuple(self.verb(b) for b in V.EVENT_SCHEDULE_VERBS)
        self.place_schedule = tuple(self.verb(b) for b in V.PLACE_SCHEDULE_VERBS)
        self.weather = tuple(self.verb(b) for b in V.WEATHER_VERBS)
        self.cost = self.verb("cost")
        self.countables = tuple(n for k in (Kind.ANIMAL, Kind.OBJECT, Kind.FOOD) for n in self.nouns[k])
        self.priced = tuple(
            n for k in (Kind.OBJECT, Kind.CLOTHING, Kind.VEHICLE, Kind.TEXT) for n in self.nouns[k]
        )

    def acts(self, noun: Noun | None) -> tuple[Verb, ...]:
        """Intransitive verbs for a subject noun (None: a name or pronoun, i.e. a person)."""
        if noun is None or noun.kind is Kind.PERSON:
            return self.person_acts
        return self.animal_acts[noun.singular]

    def verb(self, base: str) -> Verb:
        if base not in self.verbs:
            self.verbs[base] = V.make_verb(base)
        return self.verbs[base]

    def words(self) -> frozenset[str]:
        """Every word some template can emit (used by `vocabulary()`)."""
        out: set[str] = set()
        for nouns in self.nouns.values():
            out.update(w for n in nouns for w in (n.singular, n.plural))
        for verb in self.verbs.values():
            out.update((verb.base, verb.third, verb.past, verb.participle, verb.gerund))
        for kind, adjectives in self.adjectives.items():
            out.update(adjectives)
            for a in self.gradable[kind]:
                out.update(V.comparative(a) + V.superlative(a))
        for group in (
            V.FIRST_NAMES, V.PLACE_NAMES, V.INTENSIFIERS, V.MANNER_ADVERBS, V.PLACE_ADVERBS,
            V.FREQUENCY_ADVERBS, V.WEATHER_ADJECTIVES, V.SUBJECT_PRONOUNS, V.OBJECT_PRONOUNS, V.POSSESSIVES,
            V.SINGULAR_DETERMINERS, V.PLURAL_DETERMINERS, V.PREPOSITIONS_OF_PLACE,
            V.PREPOSITIONS_OF_FIXTURE, V.PREPOSITIONS_OF_THING, V.CONJUNCTIONS, V.SUBORDINATORS,
            V.MODALS, V.CURRENCIES, V.TEMPLATE_WORDS, V.UNITS, V.TENS, V.ORDINALS, V.DAYS,
            V.MONTHS, V.SEASONS, V.PARTS_OF_DAY, V.ROUTINES, V.TIME_WORDS,
        ):
            out.update(group)
        out.update(V.plural(u) for u in V.TIME_UNITS)
        out.update(V.TIME_UNITS)
        out.update(V.plural(d) for d in V.DAYS)
        return frozenset(out)


@functools.cache
def _lexicon() -> _Lexicon:
    return _Lexicon()


@functools.cache
def vocabulary() -> frozenset[str]:
    """All words the generator can emit."""
    return _lexicon().words()


class _Grammar:
    """Phrase builders and sentence templates; each template returns a list of words."""

    def __init__(self, lex: _Lexicon) -> None:
        self.lex = lex
        self.templates: tuple[tuple[Callable[[random.Random], list[str]], int], ...] = (
            (self.statement, 14), (self.copula, 5), (self.existential, 5), (self.yes_no, 7),
            (self.wh_question, 7), (self.relative, 7), (self.coordinated, 9),
            (self.subordinate, 9), (self.conditional, 4), (self.passive, 6),
            (self.imperative, 4), (self.modal, 5), (self.infinitive, 5), (self.comparison, 6),
            (self.numbers, 6), (self.reported, 6), (self.weather, 3), (self.date, 3),
            (self.negation, 5), (self.perfect, 3),
        )
        self.weights = tuple(w for _, w in self.templates)

    # ------------------------------------------------------------ noun phrases

    def np(self, rng: random.Random, noun: Noun, plural: bool | None = None,
           adj_prob: float = 0.4) -> _NP:
        if plural is None:
            plural = rng.random() < 0.3
        words = []
        if rng.random() < adj_prob:
            if rng.random() < 0.15:
                words.append(rng.choice(("very", "really", "extremely", "fairly")))
            words.append(rng.choice(self.lex.adjectives[noun.kind]))
        words.append(noun.plural if plural else noun.singular)
        r = rng.random()
        if plural:
            if r < 0.2:
                det = number_words(rng.randint(2, 20))
            elif r < 0.4:
                det = [rng.choice(V.POSSESSIVES)]
            else:
                det = [rng.choice(V.PLURAL_DETERMINERS)]
        elif r < 0.25:
            det = [rng.choice(V.POSSESSIVES)]
        else:
            d = rng.choice(V.SINGULAR_DETERMINERS)
            det = [_article(words[0]) if d == "a" else d]
        return _NP(tuple(det + words), _Agr.PL if plural else _Agr.SG)

    def indefinite(self, rng: random.Random, noun: Noun, plural: bool) -> _NP:
        """ "a red box" / "three red boxes" / "some boxes" (for "there is ...")."""
        words = [rng.choice(self.lex.adjectives[noun.kind])] if rng.random() < 0.4 else []
        if not plural:
            words.append(noun.singular)
            return _NP(tuple([_article(words[0])] + words), _Agr.SG)
        words.append(noun.plural)
        det = number_words(rng.randint(2, 30)) if rng.random() < 0.6 else [
            rng.choice(("some", "many", "several"))]
        return _NP(tuple(det + words), _Agr.PL)

    def person(self, rng: random.Random, subject: bool = True) -> _NP:
        r = rng.random()
        if r < 0.25:
            return _NP((rng.choice(V.FIRST_NAMES),), _Agr.SG)
        if r < 0.45:
            if not subject:
                return _NP((rng.choice(V.OBJECT_PRONOUNS),), _Agr.SG)
            pronoun = rng.choice(V.SUBJECT_PRONOUNS)
            return _NP((pronoun,), _PRONOUN_AGR.get(pronoun, _Agr.PL))
        return self.np(rng, rng.choice(self.lex.nouns[Kind.PERSON]))

    def animate(self, rng: random.Random) -> tuple[_NP, tuple[Verb, ...]]:
        """A person or animal subject and the intransitive verbs that fit it."""
        if rng.random() < 0.75:
            return self.person(rng), self.lex.person_acts
        noun = rng.choice(self.lex.nouns[Kind.ANIMAL])
        return self.np(rng, noun), self.lex.acts(noun)

    def thing(self, rng: random.Random, noun: Noun, subject: bool = True) -> _NP:
        if noun.kind is Kind.PERSON and rng.random() < 0.5:
            return self.person(rng, subject)
        return self.np(rng, noun)

    def obj(self, rng: random.Random, verb: Verb) -> list[str]:
        return list(self.thing(rng, rng.choice(self.lex.objects_of[verb.base]), False).words)

    # ------------------------------------------------------------ verbs, places, times

    def tense(self, rng: random.Random) -> _Tense:
        return rng.choices(_TENSES, _TENSE_WEIGHTS)[0]

    def vgroup(self, verb: Verb, agr: _Agr, tense: _Tense) -> list[str]:
        if tense is _Tense.PAST:
            return [verb.past]
        if tense is _Tense.PRESENT:
            return [verb.third if agr is _Agr.SG else verb.base]
        if tense is _Tense.PROGRESSIVE:
            return [_BE_PRESENT[agr], verb.gerund]
        if tense is _Tense.PAST_PROGRESSIVE:
            return [_BE_PAST[agr], verb.gerund]
        if tense is _Tense.FUTURE:
            return ["will", verb.base]
        if tense is _Tense.GOING_TO:
            return [_BE_PRESENT[agr], "going", "to", verb.base]
        return [_HAVE[agr], verb.participle]

    def location(self, rng: random.Random) -> list[str]:
        r = rng.random()
        if r < 0.15:
            return ["in", rng.choice(V.PLACE_NAMES)]
        if r < 0.6:
            noun, preps = rng.choice(self.lex.nouns[Kind.PLACE]), V.PREPOSITIONS_OF_PLACE
        elif r < 0.8:
            noun, preps = rng.choice(self.lex.nouns[Kind.FIXTURE]), V.PREPOSITIONS_OF_FIXTURE
        else:
            noun, preps = rng.choice(self.lex.nouns[Kind.OBJECT]), V.PREPOSITIONS_OF_THING
        return [rng.choice(preps)] + list(self.np(rng, noun, False, 0.3).words)

    def destination(self, rng: random.Random) -> list[str]:
        r = rng.random()
        if r < 0.3:
            return ["to", rng.choice(V.PLACE_NAMES)]
        if r < 0.4:
            return ["home"]
        return ["to"] + list(self.np(rng, rng.choice(self.lex.nouns[Kind.PLACE]), False, 0.2).words)

    def clock(self, rng: random.Random) -> list[str]:
        hour = rng.choice(V.UNITS[:12])
        return rng.choice((
            [hour, "o'clock"], [hour], ["half", "past", hour], ["a", "quarter", "to", hour],
            ["a", "quarter", "past", hour], ["noon"], ["midnight"],
            [hour] + number_words(rng.choice((10, 15, 20, 30, 40, 45, 50))),
        ))

    def day_of_month(self, rng: random.Random) -> list[str]:
        day = rng.randint(1, 31)
        if day <= 20:
            ordinal = [V.ORDINALS[day - 1]]
        elif day == 30:
            ordinal = ["thirtieth"]
        else:
            ordinal = [V.TENS[day // 10 - 2], V.ORDINALS[day % 10 - 1]]
        return ["the"] + ordinal + ["of", rng.choice(V.MONTHS)]

    def amount(self, rng: random.Random, unit: str) -> list[str]:
        n = rng.randint(1, 12) if rng.random() < 0.8 else rng.randint(13, 99)
        return [_article(unit), unit] if n == 1 else number_words(n) + [V.plural(unit)]

    def time(self, rng: random.Random, tense: _Tense) -> list[str]:
        part = rng.choice(V.PARTS_OF_DAY)
        when = ("night", "week", "month", "year", "weekend") + V.DAYS + V.SEASONS
        if tense in (_Tense.PAST, _Tense.PAST_PROGRESSIVE):
            options = (
                ["yesterday"], ["yesterday", part], ["last", rng.choice(when)], ["this", part],
                ["on", rng.choice(V.DAYS)], ["in", rng.choice(V.MONTHS)],
                self.amount(rng, rng.choice(V.TIME_UNITS)) + ["ago"],
                ["on"] + self.day_of_month(rng), ["at"] + self.clock(rng),
                ["in", "the", rng.choice(V.SEASONS)],
            )
        elif tense is _Tense.PRESENT:
            options = (
                ["every", rng.choice(("day", "morning", "evening", "week", "weekend") + V.DAYS)],
                ["on", V.plural(rng.choice(V.DAYS))], ["in", "the", part], ["at", "night"],
                [rng.choice(("after", "before")), rng.choice(V.ROUTINES)],
                [rng.choice(("once", "twice")), "a", rng.choice(("day", "week", "month", "year"))],
                ["at"] + self.clock(rng), ["in", "the", rng.choice(V.SEASONS)],
            )
        elif tense is _Tense.PROGRESSIVE:
            options = (["now"], ["right", "now"], ["at", "the", "moment"], ["today"],
                       ["this", rng.choice(("week",) + V.PARTS_OF_DAY)])
        elif tense is _Tense.PERFECT:
            options = (["this", rng.choice(("week", "month", "year", "morning"))], ["today"],
                       ["since", rng.choice(V.DAYS + V.MONTHS)], ["recently"],
                       ["for"] + self.amount(rng, rng.choice(V.TIME_UNITS[1:])))
        else:
            options = (
                ["tomorrow"], ["tomorrow", part], ["tonight"], ["next", rng.choice(when[1:])],
                ["soon"], ["later"], ["on", rng.choice(V.DAYS)], ["in", rng.choice(V.MONTHS)],
                ["in"] + self.amount(rng, rng.choice(V.TIME_UNITS)), ["on"] + self.day_of_month(rng),
                ["at"] + self.clock(rng), ["this", rng.choice(("weekend", "afternoon", "evening"))],
            )
        return rng.choice(options)

    # ------------------------------------------------------------ clauses

    def clause(self, rng: random.Random, tense: _Tense | None = None, time_prob: float = 0.4,
               extra_prob: float = 0.6) -> list[str]:
        """A declarative clause: transitive, intransitive or motion, with optional extras."""
        tense = self.tense(rng) if tense is None else tense
        r = rng.random()
        if r < 0.55:
            subject = self.person(rng)
            verb = rng.choice(self.lex.transitive)
            tail = self.obj(rng, verb)
        elif r < 0.85:
            subject, acts = self.animate(rng)
            verb = rng.choice(acts)
            tail = []
        else:
            subject = self.person(rng)
            verb = rng.choice(self.lex.motion)
            tail = self.destination(rng)
            if tail[0] == "to" and rng.random() < 0.3:
                tail = ["from", rng.choice(V.PLACE_NAMES)] + tail
        head = list(subject.words)
        if tense is _Tense.PRESENT and rng.random() < 0.3:
            head.append(rng.choice(V.FREQUENCY_ADVERBS))
        words = head + self.vgroup(verb, subject.agr, tense) + tail
        if rng.random() < 0.4 * extra_prob:
            words.append(rng.choice(V.MANNER_ADVERBS))
        if rng.random() < 0.25 * extra_prob:
            companion = self.animate(rng)[0] if rng.random() < 0.7 else self.np(
                rng, rng.choice(self.lex.nouns[Kind.OBJECT]))
            words += ["with"] + [w if w not in _OBJECT_FORM else _OBJECT_FORM[w] for w in companion.words]
        if not tail or tail[0] not in ("to", "from", "home"):
            if rng.random() < 0.6 * extra_prob:
                words += self.location(rng)
            elif rng.random() < 0.25 * extra_prob:
                words.append(rng.choice(V.PLACE_ADVERBS))
        if rng.random() < time_prob:
            when = self.time(rng, tense)
            words = when + words if rng.random() < 0.25 else words + when
        return words

    def predicate_adjective(self, rng: random.Random, kind: Kind) -> list[str]:
        words = [rng.choice(V.INTENSIFIERS)] if rng.random() < 0.3 else []
        return words + [rng.choice(self.lex.adjectives[kind])]

    def be(self, rng: random.Random, agr: _Agr) -> list[str]:
        return rng.choice(([_BE_PRESENT[agr]], [_BE_PAST[agr]], ["will", "be"]))

    # ------------------------------------------------------------ templates

    def statement(self, rng: random.Random) -> list[str]:
        return self.clause(rng, time_prob=0.6, extra_prob=0.7)

    def copula(self, rng: random.Random) -> list[str]:
        kind = rng.choice(tuple(Kind))
        subject = self.thing(rng, rng.choice(self.lex.nouns[kind]))
        words = list(subject.words) + self.be(rng, subject.agr) + self.predicate_adjective(rng, kind)
        if rng.random() < 0.25:
            words += ["and", rng.choice(self.lex.adjectives[kind])]
        if kind is not Kind.EVENT and rng.random() < 0.3:
            words += self.location(rng)
        if rng.random() < 0.3:
            words += self.time(rng, _AUX_TENSE[words[len(subject.words)]])
        return words

    def existential(self, rng: random.Random) -> list[str]:
        noun = rng.choice(self.lex.countables + self.lex.nouns[Kind.PERSON])
        subject = self.indefinite(rng, noun, rng.random() < 0.5)
        words = ["there"] + self.be(rng, subject.agr) + list(subject.words) + self.location(rng)
        if words[1] == "will" and rng.random() < 0.5:
            words += self.time(rng, _Tense.FUTURE)
        return words

    def yes_no(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        verb = rng.choice(self.lex.transitive)
        form = rng.randrange(6)
        if form == 0:
            words = ["did"] + list(subject.words) + [verb.base] + self.obj(rng, verb)
        elif form == 1:
            words = [_DO[subject.agr]] + list(subject.words) + [verb.base] + self.obj(rng, verb)
        elif form == 2:
            words = [_BE_PRESENT[subject.agr]] + list(subject.words) + [verb.gerund] + self.obj(rng, verb)
        elif form == 3:
            ever = ["ever"] if rng.random() < 0.5 else []
            words = [_HAVE[subject.agr]] + list(subject.words) + ever + [verb.participle]
            words += self.obj(rng, verb)
        elif form == 4:
            words = [rng.choice(("will", "can", "could", "should"))] + list(subject.words) + [verb.base]
            words += self.obj(rng, verb)
        else:
            kind = rng.choice(tuple(Kind))
            subject = self.thing(rng, rng.choice(self.lex.nouns[kind]))
            be = rng.choice((_BE_PRESENT, _BE_PAST))[subject.agr]
            return [be] + list(subject.words) + self.predicate_adjective(rng, kind)
        words += self.location(rng) if rng.random() < 0.3 else []
        tense = (_Tense.PAST, _Tense.PRESENT, _Tense.PROGRESSIVE, _Tense.PERFECT, _Tense.FUTURE)[form]
        return words + (self.time(rng, tense) if rng.random() < 0.3 else [])

    def wh_question(self, rng: random.Random) -> list[str]:
        verb = rng.choice(self.lex.transitive)
        subject = self.person(rng)
        aux = rng.choice((["did"], [_DO[subject.agr]], ["will"], ["can"]))
        form = rng.randrange(5)
        if form == 0:
            tense = rng.choice((_Tense.PAST, _Tense.PERFECT, _Tense.FUTURE, _Tense.PRESENT))
            return ["who"] + self.vgroup(verb, _Agr.SG, tense) + self.obj(rng, verb)
        if form == 1:
            noun = rng.choice(self.lex.objects_of[verb.base])
            plural = rng.random() < 0.3
            head = ["which", noun.plural if plural else noun.singular]
            if noun.kind is not Kind.PERSON and rng.random() < 0.5:
                head = ["what"]
            return head + aux + list(subject.words) + [verb.base] + (
                self.location(rng) if rng.random() < 0.3 else [])
        if form == 2:
            q = rng.choice(("where", "when", "why", "how"))
            words = [q] + aux + list(subject.words) + [verb.base] + self.obj(rng, verb)
            if q in ("why", "how") and rng.random() < 0.5:
                words += self.time(rng, _AUX_TENSE[aux[0]])
            return words
        if form == 3:
            actor, acts = self.animate(rng)
            act = rng.choice(acts)
            return ["why"] + [_BE_PRESENT[actor.agr]] + list(actor.words) + [act.gerund]
        noun = rng.choice(self.lex.objects_of[verb.base])
        return ["how", "many", noun.plural] + aux + list(subject.words) + [verb.base]

    def relative(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.5:
            noun = rng.choice(self.lex.nouns[Kind.PERSON])
            head = self.np(rng, noun, adj_prob=0.2)
            verb = rng.choice(self.lex.transitive)
            inner = [rng.choice(("who", "that")), verb.past] + self.obj(rng, verb)
        else:
            noun = rng.choice(self.lex.nouns[rng.choice(tuple(Kind))])
            head = self.np(rng, noun, adj_prob=0.2)
            verb = rng.choice(self.lex.verbs_taking[noun.kind])
            inner = ["that"] + list(self.person(rng).words) + [verb.past]
        kind = noun.kind
        words = list(head.words) + inner
        if kind in (Kind.PERSON, Kind.ANIMAL) and rng.random() < 0.6:
            act = rng.choice(self.lex.acts(noun))
            words += self.vgroup(act, head.agr, rng.choice((_Tense.PAST, _Tense.PRESENT, _Tense.FUTURE)))
            return words + ([rng.choice(V.MANNER_ADVERBS)] if rng.random() < 0.5 else [])
        be = rng.choice((_BE_PRESENT, _BE_PAST))[head.agr]
        if rng.random() < 0.5:
            return words + [be] + self.predicate_adjective(rng, kind)
        return words + [be] + self.location(rng)

    def coordinated(self, rng: random.Random) -> list[str]:
        tense = self.tense(rng)
        first = self.clause(rng, tense, time_prob=0.2, extra_prob=0.3)
        return first + [rng.choice(V.CONJUNCTIONS)] + self.clause(rng, tense, 0.0, 0.3)

    def subordinate(self, rng: random.Random) -> list[str]:
        word = rng.choice(V.SUBORDINATORS)
        if word in ("when", "after", "before", "until") and rng.random() < 0.3:
            inner = self.clause(rng, _Tense.PRESENT, 0.0, 0.3)
            main = self.clause(rng, _Tense.FUTURE, 0.2, 0.3)
        else:
            inner_tense = _Tense.PAST_PROGRESSIVE if word == "while" else _Tense.PAST
            inner = self.clause(rng, inner_tense, 0.0, 0.3)
            main = self.clause(rng, _Tense.PAST, 0.2, 0.3)
        if rng.random() < 0.5:
            return [word] + inner + main
        return main + [word] + inner

    def conditional(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.3:
            inner = ["it", V.third_person(rng.choice(V.WEATHER_VERBS))] + self.time(rng, _Tense.FUTURE)
        else:
            inner = self.clause(rng, _Tense.PRESENT, 0.0, 0.3)
        main = self.clause(rng, _Tense.FUTURE, 0.0, 0.3)
        if rng.random() < 0.3:
            main[main.index("will")] = rng.choice(("can", "might", "should"))
        return ["if"] + inner + main

    def passive(self, rng: random.Random) -> list[str]:
        kind = rng.choice(tuple(Kind))
        subject = self.thing(rng, rng.choice(self.lex.nouns[kind]))
        if subject.words[0] in V.SUBJECT_PRONOUNS:
            subject = self.np(rng, rng.choice(self.lex.nouns[kind]))
        verb = rng.choice(self.lex.verbs_taking[kind])
        aux = rng.choice(([_BE_PAST[subject.agr]], [_BE_PRESENT[subject.agr]],
                          [_HAVE[subject.agr], "been"], ["will", "be"],
                          [_BE_PRESENT[subject.agr], "being"]))
        words = list(subject.words) + aux + [verb.participle]
        if rng.random() < 0.5:
            words += ["by"] + list(self.person(rng, subject=False).words)
        if rng.random() < 0.3:
            words += self.location(rng)
        if rng.random() < 0.3:
            words += self.time(rng, _AUX_TENSE[aux[0]])
        return words

    def imperative(self, rng: random.Random) -> list[str]:
        verb = rng.choice(self.lex.transitive)
        start = rng.choice(([], ["please"], ["don't"], ["do", "not"], ["let's"]))
        words = start + [verb.base] + self.obj(rng, verb)
        r = rng.random()
        if r < 0.3:
            words += self.location(rng)
        elif r < 0.5:
            words += self.time(rng, _Tense.FUTURE)
        elif r < 0.65:
            words.append(rng.choice(V.MANNER_ADVERBS))
        return words

    def modal(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        words = list(subject.words) + [rng.choice(V.MODALS)]
        if rng.random() < 0.2:
            words.append("not")
        verb = rng.choice(self.lex.transitive)
        words += [verb.base] + self.obj(rng, verb)
        if rng.random() < 0.3:
            words += self.location(rng)
        if rng.random() < 0.4:
            words += self.time(rng, _Tense.FUTURE)
        return words

    def infinitive(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        # no progressive: "she is wanting to" is not idiomatic
        tense = rng.choice((_Tense.PAST, _Tense.PAST, _Tense.PRESENT, _Tense.FUTURE, _Tense.PERFECT))
        words = list(subject.words) + self.vgroup(rng.choice(self.lex.infinitive), subject.agr, tense)
        if rng.random() < 0.4:
            verb = rng.choice(self.lex.motion)
            words += ["to", verb.base] + self.destination(rng)
        else:
            verb = rng.choice(self.lex.transitive)
            words += ["to", verb.base] + self.obj(rng, verb)
        if rng.random() < 0.3:
            words += self.time(rng, tense)
        return words

    def comparison(self, rng: random.Random) -> list[str]:
        kind = rng.choice(tuple(Kind))
        adjective = rng.choice(self.lex.gradable[kind])
        nouns = self.lex.nouns[kind]
        noun = rng.choice(nouns)
        first = self.thing(rng, noun)
        form = rng.randrange(3)
        if form == 0:
            be = rng.choice((_BE_PRESENT, _BE_PAST))[first.agr]
            return list(first.words) + [be] + list(V.comparative(adjective)) + ["than"] + list(
                self.thing(rng, rng.choice(nouns), subject=False).words)
        top_noun = rng.choice(nouns) if kind is Kind.PERSON else noun
        plural = first.agr is _Agr.PL and form == 1
        top = ["the"] + list(V.superlative(adjective)) + [top_noun.plural if plural else top_noun.singular]
        where = rng.choice((["in", rng.choice(V.PLACE_NAMES)], ["in", "the"] + [
            rng.choice(self.lex.nouns[Kind.PLACE]).singular], ["of", "all"]))
        if form == 1:
            be = rng.choice((_BE_PRESENT, _BE_PAST))[first.agr]
            return list(first.words) + [be] + top + where
        if kind in (Kind.PERSON, Kind.ANIMAL):
            act = rng.choice(self.lex.acts(top_noun))
            return top + where + self.vgroup(act, _Agr.SG, self.tense(rng))
        return top + where + [rng.choice(("is", "was"))] + self.location(rng)

    def numbers(self, rng: random.Random) -> list[str]:
        form = rng.randrange(4)
        if form == 0:
            subject = self.person(rng)
            be = rng.choice((_BE_PRESENT, _BE_PAST))[subject.agr]
            n = rng.randint(2, 99)
            return list(subject.words) + [be] + number_words(n) + ["years", "old"]
        if form == 1:
            subject = self.person(rng)
            noun = rng.choice(self.lex.countables)
            verb = rng.choice(self.lex.verbs_taking[noun.kind])
            n = rng.randint(2, 99) if rng.random() < 0.8 else rng.randint(100, 999)
            tense = rng.choice((_Tense.PAST, _Tense.FUTURE, _Tense.PERFECT))
            words = list(subject.words) + self.vgroup(verb, subject.agr, tense)
            words += number_words(n) + [noun.plural]
            return words + (self.location(rng) if rng.random() < 0.5 else [])
        if form == 2:
            kind = rng.choice((Kind.EVENT, Kind.PLACE))
            subject = self.np(rng, rng.choice(self.lex.nouns[kind]), plural=False, adj_prob=0.2)
            verbs = self.lex.event_schedule if kind is Kind.EVENT else self.lex.place_schedule
            verb = rng.choice(verbs)
            tense = rng.choice((_Tense.PAST, _Tense.PRESENT, _Tense.FUTURE))
            return list(subject.words) + self.vgroup(verb, _Agr.SG, tense) + ["at"] + self.clock(rng)
        subject = self.np(rng, rng.choice(self.lex.priced), adj_prob=0.3)
        tense = rng.choice((_Tense.PAST, _Tense.PRESENT, _Tense.FUTURE))
        r = rng.random()
        if r < 0.7:
            price = number_words(rng.randint(2, 99))
        elif r < 0.9:
            price = number_words(rng.randint(100, 999))
        else:
            price = number_words(rng.randint(1, 20)) + ["thousand"]
        words = list(subject.words) + self.vgroup(self.lex.cost, subject.agr, tense)
        return words + price + [rng.choice(V.CURRENCIES)]

    def reported(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        tense = rng.choice((_Tense.PAST, _Tense.PRESENT, _Tense.PERFECT))
        words = list(subject.words) + self.vgroup(rng.choice(self.lex.reporting), subject.agr, tense)
        inner = _Tense.PAST if tense is _Tense.PAST else None
        return words + ["that"] + self.clause(rng, inner, time_prob=0.3, extra_prob=0.3)

    def weather(self, rng: random.Random) -> list[str]:
        tense = rng.choice(_TENSES)
        if rng.random() < 0.4:
            words = ["it"] + self.vgroup(rng.choice(self.lex.weather), _Agr.SG, tense)
        else:
            tense = rng.choice((_Tense.PAST, _Tense.PRESENT, _Tense.FUTURE))
            be = {_Tense.PAST: ["was"], _Tense.PRESENT: ["is"], _Tense.FUTURE: ["will", "be"]}[tense]
            intensifier = [rng.choice(V.INTENSIFIERS)] if rng.random() < 0.3 else []
            words = ["it"] + be + intensifier + [rng.choice(V.WEATHER_ADJECTIVES)]
        if rng.random() < 0.4:
            words += ["in", rng.choice(V.PLACE_NAMES)]
        return words + self.time(rng, tense)

    def date(self, rng: random.Random) -> list[str]:
        if rng.random() < 0.5:
            subject = self.person(rng)
            verb = rng.choice(([_BE_PAST[subject.agr], "born"], [rng.choice(("arrived", "stayed"))]))
            words = list(subject.words) + verb + ["in", rng.choice(V.PLACE_NAMES)]
        else:
            subject = self.np(rng, rng.choice(self.lex.nouns[Kind.EVENT]), plural=False)
            words = list(subject.words) + self.be(rng, _Agr.SG)
        return words + ["on"] + (self.day_of_month(rng) if rng.random() < 0.7 else [rng.choice(V.DAYS)])

    def negation(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        verb = rng.choice(self.lex.transitive)
        agr = subject.agr
        form = rng.randrange(5)
        if form == 4:
            be = rng.choice((_BE_PRESENT, _BE_PAST))[agr]
            group = [be, "not"] if agr is _Agr.FIRST or rng.random() < 0.4 else [be + "n't"]
            if rng.random() < 0.5:
                act = rng.choice(self.lex.person_acts)
                return list(subject.words) + group + [act.gerund] + self.time(rng, _Tense.PROGRESSIVE)
            return list(subject.words) + group + self.predicate_adjective(rng, Kind.PERSON)
        if form == 0:
            group = [rng.choice(("didn't", "did not")), verb.base]
        elif form == 1:
            do = _DO[agr]
            group = [rng.choice((do + "n't", do + " not")), verb.base]
        elif form == 2:
            group = [rng.choice(("won't", "will not", "can't")), verb.base]
        else:
            have = _HAVE[agr]
            group = [rng.choice((have + "n't", have + " not")), verb.participle]
        words = list(subject.words) + " ".join(group).split() + self.obj(rng, verb)
        words += self.location(rng) if rng.random() < 0.3 else []
        tense = (_Tense.PAST, _Tense.PRESENT, _Tense.FUTURE, _Tense.PERFECT)[form]
        return words + (self.time(rng, tense) if rng.random() < 0.3 else [])

    def perfect(self, rng: random.Random) -> list[str]:
        subject = self.person(rng)
        verb = rng.choice(self.lex.transitive)
        adverb = rng.choice(("never", "already", "just", "recently", "often"))
        words = list(subject.words) + [_HAVE[subject.agr], adverb, verb.participle] + self.obj(rng, verb)
        return words + (self.time(rng, _Tense.PERFECT) if rng.random() < 0.3 else [])

    def sentence(self, rng: random.Random) -> str:
        template = rng.choices(self.templates, self.weights)[0][0]
        return " ".join(template(rng))


class Task(enum.Enum):
    """Which grammar a corpus speaks."""

    SENTENCES = "sentences"  # the large-vocabulary sentence grammar of this module (about 3500 words)
    ALNUM = "alnum"  # digits, letters, numbers, dates, times, commands (kd.corpus.alnum, 150 words)


def _split_seed(seed: int, name: str) -> int:
    """Seed of one split's sentence stream, stable across processes (no `hash()`)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, found {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return value


class SentenceGenerator:
    """Seeded generator of plain lowercase English sentences.

    Args:
        seed: seeds the generator's own stream, used by `sentence()` when no `rng` is given
            and by `generate_splits` when no `seed` is given.
        task: the grammar: large-vocabulary sentences (default) or the alphanumeric task.
    """

    def __init__(self, seed: int = 0, task: Task = Task.SENTENCES) -> None:
        self.seed = _check_int("seed", seed)
        if not isinstance(task, Task):
            raise ValueError(f"task: expected a Task ({', '.join(t.value for t in Task)}), found {task!r}")
        self._rng = random.Random(seed)
        self._grammar = _Grammar(_lexicon()) if task is Task.SENTENCES else AlnumGenerator()

    def sentence(self, rng: random.Random | None = None) -> str:
        """One sentence drawn with `rng` (default: the generator's own seeded stream)."""
        return self._grammar.sentence(self._rng if rng is None else rng)

    def generate_splits(
        self,
        counts: Mapping[str, int],
        seed: int | None = None,
        min_words: int = 4,
        max_words: int = 20,
        exclude: Collection[str] | None = None,
    ) -> dict[str, list[str]]:
        """Unique sentences per split, no sentence in two splits or in `exclude`.

        Each split draws from its own stream, seeded by (`seed`, split name); splits are
        filled in the order of `counts`, and a sentence already taken by an earlier split (or
        in `exclude`) is skipped. So a split's list depends only on the seed, its name and
        count, the earlier splits and `exclude`; asking for more sentences appends to it.

        Args:
            counts: split name -> number of sentences, e.g. {"train": 5000, "dev": 500}.
            seed: defaults to the generator's seed.
            min_words, max_words: inclusive bounds on words per sentence.
            exclude: sentences never to return (e.g. those of another domain's splits).

        Raises:
            ValueError: bad counts or bounds, or fewer unique sentences found within
                50 attempts per sentence (+1000) than requested.
        """
        seed = self.seed if seed is None else _check_int("seed", seed)
        if not isinstance(counts, Mapping):
            raise ValueError(
                f"counts must be a mapping of split name -> int, found {type(counts).__name__}")
        for name, count in counts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"counts keys must be non-empty split names, found {name!r}")
            _check_int(f"counts[{name!r}]", count, minimum=0)
        _check_int("min_words", min_words, minimum=1)
        _check_int("max_words", max_words, minimum=1)
        if min_words > max_words:
            raise ValueError(
                f"min_words must be <= max_words, found min_words={min_words} > max_words={max_words}")
        if exclude is None:
            exclude = frozenset()
        elif isinstance(exclude, str) or not isinstance(exclude, Collection):
            raise ValueError(f"exclude must be a collection of sentences, found {type(exclude).__name__}")
        elif not isinstance(exclude, (set, frozenset)):
            exclude = frozenset(exclude)  # membership tests only; order is irrelevant
        taken: set[str] = set()
        splits: dict[str, list[str]] = {}
        for name, count in counts.items():
            rng = random.Random(_split_seed(seed, name))
            found: list[str] = []
            limit = _ATTEMPTS_PER_SENTENCE * count + _EXTRA_ATTEMPTS
            attempts = 0
            while len(found) < count:
                if attempts == limit:
                    raise ValueError(
                        f"split {name!r}: found only {len(found)} of {count} unique sentences with "
                        f"{min_words}-{max_words} words in {limit} attempts (seed={seed}); "
                        "ask for fewer sentences or widen the word bounds"
                    )
                attempts += 1
                text = self._grammar.sentence(rng)
                if not min_words <= text.count(" ") + 1 <= max_words:
                    continue
                if text in taken or text in exclude:
                    continue
                taken.add(text)
                found.append(text)
            splits[name] = found
        return splits


def generate_splits(
    counts: Mapping[str, int],
    seed: int,
    min_words: int = 4,
    max_words: int = 20,
    exclude: Collection[str] | None = None,
    task: Task = Task.SENTENCES,
) -> dict[str, list[str]]:
    """`SentenceGenerator(seed, task).generate_splits(counts, ...)`; see there."""
    return SentenceGenerator(seed, task).generate_splits(counts, seed, min_words, max_words, exclude)
