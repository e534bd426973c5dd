"""Domains, speakers and size presets of the built-in synthetic corpus.

The corpus follows the multi-domain distillation setting of Kim et al. (2021): two
teacher domains with plenty of data and one target domain with little data and a shift.

* ``us``: American English voices, clean, ordinary speaking rates.
* ``uk``: British and Scottish voices (RP, Lancashire, West Midlands, Scotland), clean.
* ``target``: Caribbean and New York voices, partly through eSpeak's Klatt synthesiser,
  faster speech, additive pink or babble noise at 5-20 dB SNR and synthetic room
  reverberation. Little training data.

A speaker is a voice x variant x pitch x rate setting. Within each domain the eSpeak
variants are split into disjoint pools for train, dev and test, so no dev or test speaker
shares a variant (let alone a setting) with a training speaker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kd.corpus.sentences import Task

# eSpeak NG voice variants that sound like people. Left out: robotic and whispered ones,
# and those with "breath" noise (Alicia, Reed, Storm, caleb, f2, f3, f5, sandro, victor),
# whose output differs from one process to the next, which would break "same seed, same bytes".
HUMAN_VARIANTS = (
    "Alex", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen",
    "RicishayMax", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "david", "ed", "edward", "edward2", "f1", "f4", "grandma", "grandpa", "gustave",
    "ian", "iven", "iven2", "iven3", "iven4", "john", "linda", "m1", "m2", "m3", "m4", "m5",
    "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul",
    "pedro", "quincy", "rob", "robert", "shelby", "steph", "steph2", "steph3", "travis", "zac",
)
KLATT_VARIANTS = ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class DomainSpec:
    """How one domain sounds."""

    name: str
    voices: tuple[str, ...]  # eSpeak voice names (accents), used in turn
    variants: tuple[str, ...]  # eSpeak variants, split into disjoint train/dev/test pools
    rate: tuple[int, int]  # speaking rate range, words per minute
    pitch: tuple[int, int] = (30, 70)  # base pitch range (eSpeak units, 0-100)
    noise_prob: float = 0.0  # fraction of utterances with additive noise
    snr_db: tuple[float, ...] = ()  # SNRs drawn uniformly from this set
    babble_prob: float = 0.5  # among noisy utterances: babble (else pink noise)
    reverb_prob: float = 0.0  # fraction of utterances convolved with a room response
    rt60: tuple[float, float] = (0.2, 0.6)  # reverberation time range, seconds


DOMAINS: tuple[DomainSpec, ...] = (
    DomainSpec(name="us", voices=("en-us",), variants=HUMAN_VARIANTS, rate=(150, 190)),
    DomainSpec(
        name="uk",
        voices=("en", "en-GB-x-rp", "en-GB-scotland", "en-GB-x-gbclan", "en-GB-x-gbcwmd"),
        variants=HUMAN_VARIANTS,
        rate=(150, 190),
    ),
    DomainSpec(
        name="target",
        voices=("en-029", "en-US-nyc"),
        variants=HUMAN_VARIANTS + KLATT_VARIANTS,
        rate=(200, 260),
        noise_prob=0.7,
        snr_db=(5.0, 10.0, 15.0, 20.0),
        reverb_prob=0.5,
    ),
)
DOMAIN_BY_NAME = {d.name: d for d in DOMAINS}


@dataclass(frozen=True)
class SplitSize:
    utterances: int
    speakers: int


def _sizes(teacher: tuple[int, int, int], target: tuple[int, int, int], spk: tuple[int, int, int],
           target_spk: tuple[int, int, int]) -> dict[str, dict[str, SplitSize]]:
    out = {}
    for domain in DOMAINS:
        counts, speakers = (target, target_spk) if domain.name == "target" else (teacher, spk)
        out[domain.name] = {s: SplitSize(n, k) for s, n, k in zip(SPLITS, counts, speakers)}
    return out


@dataclass(frozen=True)
class CorpusPreset:
    """Utterance and speaker counts per domain and split."""

    name: str
    sizes: dict[str, dict[str, SplitSize]] = field(hash=False)
    min_words: int = 4
    max_words: int = 20
    task: Task = Task.SENTENCES  # the grammar: large-vocabulary sentences or the alphanumeric task

    def total_utterances(self) -> int:
        return sum(s.utterances for d in self.sizes.values() for s in d.values())

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "min_words": self.min_words,
            "max_words": self.max_words,
            "sizes": {d: {s: [v.utterances, v.speakers] for s, v in sp.items()} for d, sp in self.sizes.items()},
        }
        if self.task is not Task.SENTENCES:  # written only where it differs, so that the settings (and
            out["task"] = self.task.value  # the completion markers) of the large-vocabulary corpora stay as they were
        return out


PRESETS: dict[str, CorpusPreset] = {
    # seconds of synthesis: for unit tests
    "tests": CorpusPreset("tests", _sizes((12, 4, 4), (8, 4, 4), (3, 2, 2), (2, 2, 2)), max_words=10),
    # minutes of CPU time for the whole pipeline (two teachers, students, analyses)
    "cpu": CorpusPreset("cpu", _sizes((1000, 100, 100), (300, 100, 200), (24, 4, 4), (8, 4, 4))),
    # four times the cpu preset's teacher-domain data (about an hour of audio per teacher domain):
    # stronger CPU teachers for the multidomain_ukd recipe's cpu_large preset
    "cpu_large": CorpusPreset("cpu_large", _sizes((4000, 200, 200), (300, 100, 200), (40, 4, 4), (8, 4, 4))),
    # tens of hours of audio, for GPU runs
    "gpu": CorpusPreset("gpu", _sizes((24000, 500, 500), (3000, 500, 1000), (40, 8, 8), (16, 8, 8))),
    # the alphanumeric task (kd.corpus.alnum, 147 words, 2-12 words an utterance): seconds, for tests
    "alnum_tests": CorpusPreset("alnum_tests", _sizes((12, 4, 4), (8, 4, 4), (3, 2, 2), (2, 2, 2)), min_words=2,
                                max_words=12, task=Task.ALNUM),
    # what two CPU cores can learn: each teacher domain has 13x the target's training utterances
    # (LibriSpeech to WSJ is about 12 to 1 in Kim et al. 2021); test sets of 300 (teacher domains)
    # and 500 (target) utterances
    "alnum_cpu": CorpusPreset("alnum_cpu", _sizes((4000, 300, 300), (300, 200, 500), (40, 6, 8), (10, 6, 8)),
                              min_words=2, max_words=12, task=Task.ALNUM),
    # the multi-domain KD benchmark on 2 cores: 2000 target training utterances, the fewest with which
    # a target-only student recognises (54% dev WER after 15 epochs; 1000: 67%, 300: 82%), and teacher
    # domains of 14000 (about 10x the target's training audio: 7 h against 42 min)
    "alnum_kd_cpu": CorpusPreset("alnum_kd_cpu", _sizes((14000, 300, 300), (2000, 200, 500), (80, 6, 8), (20, 6, 8)),
                                 min_words=2, max_words=12, task=Task.ALNUM),
}


@dataclass(frozen=True)
class Speaker:
    id: str
    domain: str
    split: str
    voice: str
    variant: str
    pitch: int
    rate: int


def make_speakers(domain: DomainSpec, sizes: dict[str, SplitSize], seed: int) -> dict[str, list[Speaker]]:
    """Draw the speakers of one domain; variant pools of train, dev and test are disjoint."""
    rng = random.Random(f"{seed}/speakers/{domain.name}")
    variants = list(domain.variants)
    rng.shuffle(variants)
    n = len(variants)
    n_dev = n_test = max(1, n // 5)
    pools = {"dev": variants[:n_dev], "test": variants[n_dev:n_dev + n_test], "train": variants[n_dev + n_test:]}
    out: dict[str, list[Speaker]] = {}
    for split in SPLITS:
        count = sizes[split].speakers
        if count < 1:
            raise ValueError(f"Expected at least 1 speaker for {domain.name}/{split}, found {count}")
        pool = pools[split]
        out[split] = [
            Speaker(
                id=f"{domain.name}-{split}-s{k:03d}",
                domain=domain.name,
                split=split,
                voice=domain.voices[k % len(domain.voices)],
                variant=pool[k % len(pool)],
                pitch=rng.randint(*domain.pitch),
                rate=rng.randint(*domain.rate),
            )
            for k in range(count)
        ]
    return out
