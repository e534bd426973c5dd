"""The recipes' presets as typed configs: one frozen dataclass per recipe, read by :func:`kd.core.config.parse_config`.

A preset is a section of a recipe's ``recipes/<name>/config.yaml`` (``cpu``, ``smoke``, ``gpu``, ...). Its
keys, their types and the defaults of the optional ones are the fields of the recipe's class here; a
misspelt or misshapen key is an error naming the preset and the key's path (``preset 'smoke':
corpus: unknown field 'sed' (did you mean 'seed'?)``) before any stage runs (:func:`kd.recipes.stages.load_preset`).

Sections that are configs of their own are typed here as those configs where the recipe uses them as
they are (``conditions``: :class:`kd.recipes.experiment.Condition`, ``claims``:
:class:`kd.recipes.multidomain.Claim`); sections that the recipe completes before reading them (a
``TrainConfig`` section whose data dirs, tokens and seed the recipe fills in, the overrides of a wav2vec 2.0
stage preset, ``decode``, ``analysis``) are mappings here, read by their own config class when the
recipe builds every run's settings, which :func:`kd.recipes.stages.load_preset`'s callers do before stage 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kd.core.config import CONFIG, to_plain, with_config
from kd.recipes.experiment import Condition, StudentSize
from kd.recipes.multidomain import Claim

__all__ = ["AsrCompressPreset", "CorpusSection", "LayerwiseAnalysisPreset", "MultidomainPreset", "PRESETS",
           "SpeedSection", "W2v2CompressPreset"]


@dataclass(frozen=True)
@with_config(CONFIG)
class CorpusSection:
    """Every recipe's ``corpus``: the arguments of :func:`kd.corpus.synth.build_corpus`."""

    preset: str  # a corpus preset of kd.corpus.synth (alnum_cpu, alnum_tests, cpu, tests, gpu, ...)
    seed: int = 0


@dataclass(frozen=True)
@with_config(CONFIG)
class SpeedSection:
    """``speed``: settings of :func:`kd.bench.speed.bench_speed`; a field left out keeps bench_speed's default."""

    batch_sizes: tuple[int, ...] | None = None
    seconds: float | None = None
    repeats: int | None = None
    warmup: int | None = None
    device: str | None = None
    attn_implementation: str | None = None

    def given(self) -> dict[str, Any]:
        """The fields the preset sets, as bench_speed's keyword arguments."""
        return {k: v for k, v in to_plain(self).items() if v is not None}


@dataclass(frozen=True)
@with_config(CONFIG)
class MultidomainPreset:
    """A preset of ``recipes/multidomain_ukd`` (:class:`kd.recipes.multidomain_stages.MultidomainSetup`)."""

    corpus: CorpusSection
    tokens: Literal["words", "chars"]  # a word-level SentencePiece model, or a character list
    teacher_domains: tuple[str, ...]
    target_domain: str
    teacher: dict[str, Any]  # the teachers' TrainConfig section (data dirs, tokens and seed filled in)
    student: dict[str, Any]  # the students' section of kd.recipes.experiment.student_train_config
    # size name -> kd.recipes.experiment.StudentSize fields (encoder_layers, decoder_keep, share_encoder)
    student_sizes: dict[str, dict[str, Any]]
    conditions: tuple[Condition, ...]
    claims: tuple[Claim, ...]
    seeds: tuple[int, ...]
    decode: dict[str, Any]  # a kd.evaluation.decode.DecodeConfig section: the headline decoding
    analysis: dict[str, Any] = field(default_factory=dict)  # kd.analyze.layerwise.AnalyzeConfig fields
    device: str = "cpu"  # evaluation and analysis
    # the teachers of every seed's students are this seed's teachers (the students' seeds then vary only the
    # students); None: each seed trains (or restores) its own teachers
    teacher_seed: int | None = None
    shipped_teachers: str | None = None  # folder of shipped teachers, relative to the recipe; None: trained here
    student_freeze: tuple[str, ...] = ()  # parameters that students built from the teacher's layers keep
    workers: int = 1  # training runs side by side (kd.recipes.parallel)

    def __post_init__(self) -> None:
        self.sizes()  # each size checked as the preset is read
        for name in self.student_freeze:
            if not name:
                raise ValueError(f"student_freeze: expected parameter names or prefixes, "
                                 f"found {list(self.student_freeze)}")

    def sizes(self) -> tuple[StudentSize, ...]:
        return tuple(StudentSize.from_dict(name, spec) for name, spec in self.student_sizes.items())


@dataclass(frozen=True)
@with_config(CONFIG)
class AsrCompressPreset:
    """A preset of ``recipes/asr_compress`` (:class:`kd.recipes.asr_compress.AsrCompressSetup`)."""

    corpus: CorpusSection
    domain: str  # the teacher's and the students' domain
    teacher: dict[str, Any]  # the teacher's TrainConfig section (data dirs, tokens and seed filled in)
    budgets: tuple[int, ...]  # encoder layers (weight sets of a shared student) per student
    decoder_keep: tuple[int, ...]  # the teacher's decoder layers every student keeps
    student: dict[str, Any]  # the students' TrainConfig section (model: only overrides)
    seeds: tuple[int, ...]  # the students' training seeds
    decode: dict[str, Any]  # a kd.evaluation.decode.DecodeConfig section: the headline decoding
    analysis: dict[str, Any] = field(default_factory=dict)  # kd.analyze.layerwise.AnalyzeConfig fields
    device: str = "cpu"
    shipped_teacher: str | None = None  # the shipped teacher's folder, relative to the recipe; None: trained here
    speed: SpeedSection = field(default_factory=SpeedSection)
    workers: int = 1
    # kd.ssl.layer_distill.LayerDistillConfig fields of the students' layer-to-layer distillation before their
    # fine-tuning (the recipe sets the seed of each run); None: the students are fine-tuned directly
    layer_distill: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.speed.warmup is not None or self.speed.device is not None:
            raise ValueError("speed: expected batch_sizes, seconds, repeats or attn_implementation (the recipe sets "
                             "warmup and device)")


@dataclass(frozen=True)
@with_config(CONFIG)
class W2v2CompressPreset:
    """A preset of ``recipes/w2v2_compress``."""

    corpus: CorpusSection
    ssl_domains: tuple[str, ...]  # pre-training and layer distillation audio: DOMAIN/train
    asr_domain: str  # CTC fine-tuning on DOMAIN/train, analysis on DOMAIN/dev, WER on DOMAIN/test
    ssl_preset: str  # kd.ssl.config.SSL_PRESETS
    ctc_preset: str  # kd.ssl.config.CTC_PRESETS
    distill_preset: str  # kd.ssl.layer_distill.LAYER_DISTILL_PRESETS
    analysis: dict[str, Any]  # kd.analyze.layerwise.AnalyzeConfig fields
    budget_layers: int  # layers (weight sets for the shared student) of every student
    reuse_threshold: float  # attention JSD (bits) under which a layer reuses an earlier layer's attention
    speed: SpeedSection
    # fields over the stage presets, merged section by section (an optim override keeps the other optim fields)
    ssl_overrides: dict[str, Any] = field(default_factory=dict)
    ctc_overrides: dict[str, Any] = field(default_factory=dict)
    student_ctc_overrides: dict[str, Any] = field(default_factory=dict)  # over the teacher's fine-tuning
    distill_overrides: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)  # the students' layer distillation and CTC runs
    workers: int = 1  # plans distilled and fine-tuned side by side


@dataclass(frozen=True)
@with_config(CONFIG)
class LayerwiseAnalysisPreset:
    """A preset of ``recipes/layerwise_analysis``."""

    corpus: CorpusSection
    asr_domain: str  # the ASR teacher trains on DOMAIN/train; the analyses run on DOMAIN/dev
    asr_teacher: dict[str, Any]  # the ASR teacher's TrainConfig section (data dirs and tokens filled in)
    analysis: dict[str, Any]  # kd.analyze.layerwise.AnalyzeConfig fields
    ssl_preset: str  # kd.ssl.config.SSL_PRESETS
    ssl_domains: tuple[str, ...]  # unlabelled pre-training audio: DOMAIN/train
    compare_utterances: int  # dev utterances of the CKA comparison of the two teachers
    asr_teacher_run: str | None = None  # a finished run reused when trained with these settings
    ssl_run: str | None = None  # a finished pre-training reused when trained with these settings


PRESETS = {"multidomain_ukd": MultidomainPreset, "asr_compress": AsrCompressPreset,
           "w2v2_compress": W2v2CompressPreset, "layerwise_analysis": LayerwiseAnalysisPreset}
