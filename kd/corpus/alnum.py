"""A small-vocabulary task for the built-in corpus: spoken digits, letters, numbers, dates, times
and short commands, in the manner of CMU's AN4 ("alphanumeric") database that ESPnet's `an4`
recipe trains on a CPU.

The large-vocabulary sentences of `kd.corpus.sentences` (about 3500 words) are too hard for a
model trained for minutes on two cores: its teachers stay at 25-40% CER. This task has 147 words,
short utterances (2-10 words), and the same speakers, accents, noise and reverberation, so that
the teachers of a CPU run can recognise their own domain well and the multi-domain distillation
has something to transfer.

Transcripts are written as the ASR models must output them: lowercase words, single spaces.
Spelled letters are single-letter words ("j o h n"); eSpeak NG reads them as letter names.
`AlnumGenerator.sentence(rng)` is the grammar; `SentenceGenerator` (kd.corpus.sentences) draws
disjoint splits from it the same way as from the large-vocabulary grammar.
"""

from __future__ import annotations

import random

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
ORDINAL_UNITS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
ORDINAL_TEENS = ("tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
                 "seventeenth", "eighteenth", "nineteenth")
# one-word commands of a keypad or form dialogue, as in AN4
COMMANDS = ("enter", "erase", "rubout", "repeat", "help", "stop", "start", "cancel", "go", "yes", "no", "next",
            "back", "clear", "delete", "save", "done")
# what a digit string is; e.g. "zip code one five two one three"
CODE_NAMES = (("zip", "code"), ("phone", "number"), ("extension",), ("account", "number"), ("pin",),
              ("code",), ("room",), ("flight",))


def _digits(rng: random.Random, low: int, high: int) -> list[str]:
    """A string of low..high digits; zero is read "oh" one time in three, as people do."""
    out = []
    for _ in range(rng.randint(low, high)):
        d = rng.randrange(10)
        out.append("oh" if d == 0 and rng.random() < 1 / 3 else DIGITS[d])
    return out


def number_words(n: int) -> list[str]:
    """0 <= n <= 9999 in words, without "and": 2015 -> two thousand fifteen."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words expects 0 <= n <= 9999, found {n}")
    if n == 0:
        return ["zero"]
    words: list[str] = []
    if n >= 1000:
        words += [DIGITS[n // 1000], "thousand"]
        n %= 1000
    if n >= 100:
        words += [DIGITS[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10 - 2])
        n %= 10
        if n:
            words.append(DIGITS[n])
    elif n >= 10:
        words.append(TEENS[n - 10])
    elif n > 0:
        words.append(DIGITS[n])
    return words


def ordinal_words(n: int) -> list[str]:
    """1 <= n <= 31 as an ordinal: 23 -> twenty third."""
    if not 1 <= n <= 31:
        raise ValueError(f"ordinal_words expects 1 <= n <= 31, found {n}")
    if n < 10:
        return [ORDINAL_UNITS[n - 1]]
    if n < 20:
        return [ORDINAL_TEENS[n - 10]]
    if n % 10 == 0:
        return ["twentieth" if n == 20 else "thirtieth"]
    return [TENS[n // 10 - 2], ORDINAL_UNITS[n % 10 - 1]]


def _year(rng: random.Random) -> list[str]:
    """A year read the usual way: nineteen eighty four, two thousand twelve."""
    year = rng.randint(1950, 2029)
    if year >= 2000:
        return number_words(year)
    tail = year % 100
    return ["nineteen", *(["oh", DIGITS[tail]] if tail < 10 else number_words(tail))]


def _time(rng: random.Random) -> list[str]:
    hour = rng.randint(1, 12)
    minute = rng.choice((0, 0, 5, 10, 15, 20, 30, 40, 45, 50, rng.randint(1, 59)))
    words = number_words(hour)
    if minute == 0:
        words = [*words, "o'clock"]
    elif minute < 10:
        words = [*words, "oh", DIGITS[minute]]
    else:
        words = [*words, *number_words(minute)]
    if rng.random() < 0.4:
        words.append(rng.choice(("in the morning", "in the evening", "at night")))
    return words


def _spelled(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(low, high))]


class AlnumGenerator:
    """The alphanumeric grammar: one template drawn per sentence, each filled at random."""

    def __init__(self) -> None:
        self._templates = (
            (4, self._code), (3, self._spell), (2, self._date), (2, self._time), (2, self._number),
            (2, self._command), (1, self._room), (1, self._digit_string),
        )
        self._weights = [w for w, _ in self._templates]

    def sentence(self, rng: random.Random) -> str:
        (template,) = rng.choices([t for _, t in self._templates], weights=self._weights)
        return " ".join(" ".join(template(rng)).split())

    @staticmethod
    def _code(rng: random.Random) -> list[str]:
        name = list(rng.choice(CODE_NAMES))
        lead = rng.choice(([], ["my"], ["the"], ["enter"], ["enter", "the"], ["dial"] if name[0] == "phone" else []))
        return [*lead, *name, *_digits(rng, 3, 7)]

    @staticmethod
    def _spell(rng: random.Random) -> list[str]:
        lead = rng.choice(([], ["spell"], ["my", "name", "is"], ["the", "code", "is"], ["letters"]))
        return [*lead, *_spelled(rng, 2, 7)]

    @staticmethod
    def _date(rng: random.Random) -> list[str]:
        month = rng.randrange(12)
        day = ordinal_words(rng.randint(1, 30 if month in (3, 5, 8, 10) else 29 if month == 1 else 31))
        year = _year(rng) if rng.random() < 0.5 else []
        lead = rng.choice(([], ["on"], ["the", "date", "is"], ["born", "on"], ["due"]))
        if rng.random() < 0.5:
            return [*lead, MONTHS[month], *day, *year]
        return [*lead, "the", *day, "of", MONTHS[month], *year]

    @staticmethod
    def _time(rng: random.Random) -> list[str]:
        lead = rng.choice((["at"], ["set", "the", "alarm", "for"], ["wake", "me", "at"], ["meet", "at"], []))
        return [*lead, *_time(rng)]

    @staticmethod
    def _number(rng: random.Random) -> list[str]:
        n = rng.choice((rng.randint(0, 99), rng.randint(100, 999), rng.randint(1000, 9999)))
        lead = rng.choice((["go", "to", "page"], ["channel"], ["number"], ["enter"], ["add"], ["take", "off"]))
        return [*lead, *number_words(n)]

    @staticmethod
    def _command(rng: random.Random) -> list[str]:
        first = rng.choice(COMMANDS)
        if rng.random() < 0.5:
            return [first, rng.choice(COMMANDS)]
        return [first, *_digits(rng, 1, 4)]

    @staticmethod
    def _room(rng: random.Random) -> list[str]:
        floor = rng.choice(ORDINAL_UNITS[:6])
        return ["room", *_digits(rng, 3, 3), "on", "the", floor, "floor"]

    @staticmethod
    def _digit_string(rng: random.Random) -> list[str]:
        return _digits(rng, 2, 9)


def vocabulary() -> frozenset[str]:
    """Every word the grammar can produce."""
    words = {*DIGITS, "oh", *TEENS, *TENS, "hundred", "thousand", *LETTERS, *MONTHS, *ORDINAL_UNITS,
             *ORDINAL_TEENS, "twentieth", "thirtieth", *COMMANDS, "o'clock"}
    words |= {w for name in CODE_NAMES for w in name}
    phrases = ("my name is the code is the date is born on due of set the alarm for wake me at meet at go to page "
               "channel number take off dial spell letters in the morning in the evening at night on floor room "
               "enter add")
    return frozenset(words | set(phrases.split()))
