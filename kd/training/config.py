"""`TrainConfig`: everything one training or distillation run reads, as a frozen, versioned dataclass.

A run is configured by one YAML file (``TrainConfig.from_yaml``). Every section is a frozen
dataclass with typed fields, read by the toolkit's one config system (:func:`kd.core.config.parse_config`):
nothing may be unknown, missing or of the wrong type, and errors name the full field path
(``TrainConfig.optim.lr``), the value found and what was expected.

YAML 1.1 reads an unquoted ``no`` as ``false``; ``optim.mixed_precision: no`` is therefore also
accepted as ``false``.
"""

from __future__ import annotations

import copy
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from kd.core.config import CONFIG, parse_config, to_plain, with_config
from kd.core.io import load_yaml
from kd.data.augment import AugmentConfig
from kd.training.losses import KDLossConfig

__all__ = [
    "CheckpointConfig",
    "Criterion",
    "DataConfig",
    "KDConfig",
    "LogConfig",
    "MixedPrecision",
    "ModelConfig",
    "OptimConfig",
    "Schedule",
    "TeacherOutputs",
    "TeacherSpec",
    "TokenKind",
    "TokenConfig",
    "TrainConfig",
    "check_checkpoint",
    "check_optim",
    "with_added_fields",
    "without_added_defaults",
]

CONFIG_VERSION = 1
# fields added to version 1 after runs were written without them: (section, ..., field) -> the value
# that gives what runs without the field did (speed settings change only floating-point rounding);
# see TrainConfig.identity. Usually the field's default; kd.loss.soft_labels is the exception (its
# default is the paper's "sampled", runs without the field used "mean_logits")
ADDED_FIELDS = {("optim", "fused"): True, ("optim", "tf32"): True, ("data", "augment"): None,
                ("kd", "loss", "reduction"): "mean", ("checkpoint", "best_by"): "loss",
                ("model", "freeze"): [], ("kd", "loss", "soft_labels"): "mean_logits",
                ("kd", "loss", "num_samples"): 10, ("optim", "decoupled_weight_decay"): False,
                ("optim", "time_limit_s"): None}


def with_added_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a saved config as plain dicts, changed in place and returned) with each field of
    ADDED_FIELDS that it lacks set to the value runs without the field had, where the field's
    section is present: a config written before a field existed then reads as the run it was,
    also where the field's default differs from that value."""
    for (*sections, name), value in ADDED_FIELDS.items():
        holder = data
        for section in sections:
            holder = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and name not in holder:
            holder[name] = copy.deepcopy(value)
    return data


def without_added_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as plain dicts, changed in place and returned) without the fields of
    ADDED_FIELDS that hold their default or are absent: a config written before a field existed
    and one written after, with the field at its default, come out equal."""
    for (*sections, name), default in ADDED_FIELDS.items():
        holder = data
        for section in sections:
            holder = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(name, default) == default:
            holder.pop(name, None)
    return data


class TokenKind(enum.Enum):
    """Where the token inventory comes from."""

    CHAR = "char"  # characters of the normalised training transcripts
    LIST = "list"  # a token list file (one symbol a line, ESPnet layout), e.g. a teacher's tokens.txt
    SENTENCEPIECE = "sentencepiece"  # a trained SentencePiece model file


class Criterion(enum.Enum):
    """How checkpoints are ranked for keeping and averaging."""

    LOSS = "loss"  # the lowest dev loss
    ACC = "acc"  # the highest teacher-forced token accuracy on the dev set


class Schedule(enum.Enum):
    """Learning-rate schedule; t = 1, 2, ... counts optimizer steps, w = warmup_steps."""

    NOAM = "noam"  # lr * d_model^-0.5 * min(t^-0.5, t * w^-1.5) (Vaswani et al. 2017)
    WARMUP_INVERSE_SQRT = "warmup_inverse_sqrt"  # lr * min(t / w, sqrt(w / t)): peak lr at t = w
    WARMUP_COSINE = "warmup_cosine"  # linear to lr at w, cosine to min_lr_ratio * lr at the last step
    CONSTANT = "constant"  # lr * min(1, t / w)


class MixedPrecision(enum.Enum):
    """`accelerate`'s mixed-precision modes."""

    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"

    @classmethod
    def _missing_(cls, value: object) -> "MixedPrecision | None":
        return cls.NO if value is False else None  # YAML 1.1 reads an unquoted no as false


class TeacherOutputs(enum.Enum):
    """How teacher outputs reach the KD loss."""

    ONLINE = "online"  # teacher forward pass on every batch, under torch.no_grad
    CACHED = "cached"  # computed once per utterance, stored in safetensors shards, re-read


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...]  # data dirs (wav.scp, text, ...) whose utterances are pooled
    dev: str | None = None  # data dir for the dev loss; None: checkpoints ranked by recency
    max_seconds: float = 120.0  # padded seconds of audio per micro-batch (len * longest)
    max_utterances: int = 64  # utterances per micro-batch at most
    num_workers: int = 0  # DataLoader worker processes reading audio
    skip_bad: bool = False  # drop broken utterances (counted) instead of raising
    augment: AugmentConfig | None = None  # noise and reverberation on training batches (kd.data.augment)


@dataclass(frozen=True)
class TokenConfig:
    kind: TokenKind = TokenKind.CHAR
    path: str | None = None  # token list (LIST) or SentencePiece .model (SENTENCEPIECE)


@dataclass(frozen=True)
class ModelConfig:
    preset: str | None = "small"  # an AsrConfig preset: teacher, base, small, tiny
    overrides: dict[str, Any] = field(default_factory=dict)  # AsrConfig fields on top of the preset
    init_from: str | None = None  # a run dir or a model dir (kd.models.model_dir): architecture and weights from it
    init_weights: str = "model_avg.safetensors"  # weights file inside init_from
    # parameters left as they are (ESPnet's --freeze_param): names or dotted prefixes of the model's
    # parameters, e.g. espnet.encoder.embed (the convolutional subsampling a student took from its
    # teacher); they get no gradient and no optimizer state
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and stopping of one training run: the one optimisation section of every trainer
    (``TrainConfig.optim`` and the ``optim`` of the wav2vec 2.0 stages in :mod:`kd.ssl.config`).

    The optimiser is Adam (Kingma & Ba), or AdamW (Loshchilov & Hutter: the weight decay applied to the
    weights directly rather than added to the gradient) with ``decoupled_weight_decay``; the learning
    rate of every step comes from :func:`kd.training.schedule.learning_rate`.
    """

    lr: float = 1e-3  # peak learning rate (the Noam factor for schedule=noam)
    schedule: Schedule = Schedule.WARMUP_INVERSE_SQRT
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0  # warmup_cosine: final lr / peak lr
    betas: tuple[float, ...] = (0.9, 0.98)  # Adam (ESPnet Transformer recipes)
    eps: float = 1e-9
    weight_decay: float = 0.0
    # AdamW: weight_decay shrinks the weights directly (wav2vec 2.0's optimiser); false: Adam's L2 term,
    # added to the gradient (ESPnet's). The two are the same when weight_decay is 0
    decoupled_weight_decay: bool = False
    max_epochs: int | None = None  # stop after this many passes over the training data
    max_steps: int | None = None  # stop after this many optimizer steps (whichever comes first)
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_norm: float | None = 5.0  # max global gradient L2 norm; None: no clipping
    mixed_precision: MixedPrecision = MixedPrecision.NO
    fused: bool = True  # the fused (single-kernel) Adam on CUDA; ignored on CPU
    tf32: bool = True  # TF32 tensor-core matmuls for float32 work on CUDA (~1e-3 relative rounding); ignored on CPU
    # stop after this many seconds of training (every process at the same step), with a final checkpoint;
    # a resumed run may raise it and continue. None: no limit
    time_limit_s: float | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # periodic checkpoints every N optimizer steps (0: only at epoch ends)
    at_epoch_end: bool = True
    keep_last: int = 3  # the most recent K checkpoints are kept ...
    average_best: int = 5  # ... and the N best by best_by, which model_avg.safetensors averages
    # how checkpoints are ranked: "loss" (the lowest dev loss) or "acc" (the highest teacher-forced
    # token accuracy on the dev set, ESPnet's `best_model_criterion: valid acc max`). The dev loss
    # of a small target set starts rising (over-confidence) epochs before the accuracy stops rising
    best_by: Criterion = Criterion.LOSS


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10  # CSV / TensorBoard row every N optimizer steps
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar on the main process


@dataclass(frozen=True)
class TeacherSpec:
    run_dir: str  # a finished training run: config.yaml, model_config.yaml, tokens.txt, weights
    weights: str = "model_avg.safetensors"  # weights file inside run_dir


@dataclass(frozen=True)
class KDConfig:
    teachers: tuple[TeacherSpec, ...]
    loss: KDLossConfig = field(default_factory=KDLossConfig)
    teacher_outputs: TeacherOutputs = TeacherOutputs.ONLINE
    cache_dir: str | None = None  # CACHED: where shards go; None: <out_dir>/teacher_cache
    cache_dtype: str = "float32"  # CACHED: float32 (exact) or bfloat16 (half the disk)


@dataclass(frozen=True)
@with_config(CONFIG)
class TrainConfig:
    """One training (or, with a `kd` section, distillation) run of a hybrid CTC/attention model."""

    data: DataConfig
    tokens: TokenConfig = field(default_factory=TokenConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LogConfig = field(default_factory=LogConfig)
    kd: KDConfig | None = None
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def identity(self) -> dict[str, Any]:
        """What completion markers and run comparisons use: :meth:`to_dict` without the fields of
        ADDED_FIELDS that hold their default, so a finished run stays finished when the toolkit
        gains an option (a config written before the option existed compares equal)."""
        return without_added_defaults(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return parse_config(cls, data, "TrainConfig")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> "TrainConfig":
        """Read a YAML file, with ``overrides`` (``KEY.PATH=VALUE``, the command line's ``--set``) set over
        it; errors are prefixed with the file name."""
        from kd.core.config import with_overrides

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Expected a YAML config at {path}, found no such file")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of sections, found {type(data).__name__}")
        try:
            return cls.from_dict(with_overrides(data, overrides))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from None


# ---------------------------------------------------------------- validation of values


def _validate(c: TrainConfig) -> None:
    def fail(name: str, value: Any, expected: str) -> None:
        raise ValueError(f"TrainConfig.{name}: expected {expected}, found {value!r}")

    if c.version != CONFIG_VERSION:
        fail("version", c.version, str(CONFIG_VERSION))
    if not c.data.train:
        fail("data.train", list(c.data.train), "at least one data dir")
    if not c.data.max_seconds > 0:
        fail("data.max_seconds", c.data.max_seconds, "> 0")
    for name in ("max_utterances",):
        if getattr(c.data, name) < 1:
            fail(f"data.{name}", getattr(c.data, name), ">= 1")
    if c.data.num_workers < 0:
        fail("data.num_workers", c.data.num_workers, ">= 0")
    if c.tokens.kind is not TokenKind.CHAR and not c.tokens.path:
        fail("tokens.path", c.tokens.path, f"a file for tokens.kind={c.tokens.kind.value}")
    m = c.model
    if (m.preset is None) == (m.init_from is None):
        fail("model.preset", m.preset, "a preset name or model.init_from (a run dir), exactly one of them")
    if m.init_from is not None and m.overrides and set(m.overrides) - set(_training_only_fields()):
        fail("model.overrides", m.overrides, "with model.init_from, only the fields that leave the architecture as "
             f"the run fixed it: {', '.join(_training_only_fields())}")
    if "vocab_size" in m.overrides:
        fail("model.overrides.vocab_size", m.overrides["vocab_size"], "no value: it comes from the token list")
    for prefix in m.freeze:
        if not prefix or prefix.startswith(".") or prefix.endswith("."):
            fail("model.freeze", list(m.freeze), "parameter names or dotted prefixes such as espnet.encoder.embed")
    check_optim(c.optim, lambda name, value, expected: fail(f"optim.{name}", value, expected))
    check_checkpoint(c.checkpoint, lambda name, value, expected: fail(f"checkpoint.{name}", value, expected))
    if c.logging.every_steps < 1:
        fail("logging.every_steps", c.logging.every_steps, ">= 1")
    if c.kd is not None:
        if not c.kd.teachers:
            fail("kd.teachers", [], "at least one teacher")
        if c.kd.cache_dtype not in ("float32", "bfloat16"):
            fail("kd.cache_dtype", c.kd.cache_dtype, "'float32' or 'bfloat16'")
        n = len(c.kd.teachers)
        for name in ("teacher_weights", "dev_wers"):
            value = getattr(c.kd.loss, name)
            if value is not None and len(value) != n:
                fail(f"kd.loss.{name}", list(value), f"{n} values (one per teacher)")


def check_optim(o: OptimConfig, fail) -> None:
    """Check the values of an optimisation section; ``fail(field, value, expected)`` raises, naming the
    field as its config names it (``TrainConfig.optim.lr``, ``SSLConfig.optim.lr``)."""
    if not o.lr > 0:
        fail("lr", o.lr, "> 0")
    if o.warmup_steps < 0 or (o.warmup_steps == 0 and o.schedule in (Schedule.NOAM, Schedule.WARMUP_INVERSE_SQRT)):
        fail("warmup_steps", o.warmup_steps, f">= 1 for schedule={o.schedule.value} (>= 0 otherwise)")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        fail("min_lr_ratio", o.min_lr_ratio, "a value in [0, 1]")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        fail("betas", list(o.betas), "two values in [0, 1)")
    if not o.eps > 0:
        fail("eps", o.eps, "> 0")
    if o.weight_decay < 0:
        fail("weight_decay", o.weight_decay, ">= 0")
    if o.max_epochs is None and o.max_steps is None:
        fail("max_steps", None, "a number of steps, or optim.max_epochs, or both")
    for name in ("max_epochs", "max_steps"):
        value = getattr(o, name)
        if value is not None and value < 1:
            fail(name, value, ">= 1 or null")
    if o.grad_accum < 1:
        fail("grad_accum", o.grad_accum, ">= 1")
    if o.clip_norm is not None and not o.clip_norm > 0:
        fail("clip_norm", o.clip_norm, "> 0 or null")
    if o.time_limit_s is not None and not o.time_limit_s > 0:
        fail("time_limit_s", o.time_limit_s, "> 0 or null")


def check_checkpoint(k: CheckpointConfig, fail) -> None:
    """Check the values of a checkpoint section (``fail`` as for :func:`check_optim`)."""
    if k.every_steps < 0:
        fail("every_steps", k.every_steps, ">= 0")
    if k.keep_last < 1:
        fail("keep_last", k.keep_last, ">= 1 (the newest checkpoint is what a resume needs)")
    if k.average_best < 1:
        fail("average_best", k.average_best, ">= 1")


def _training_only_fields() -> tuple[str, ...]:
    """AsrConfig fields that ``model.overrides`` may set on top of ``model.init_from``."""
    from kd.models.asr import SPECAUG_FIELDS

    return SPECAUG_FIELDS
