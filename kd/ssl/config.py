"""Configurations of the self-supervised teacher stages: pre-training, CTC fine-tuning, optimisation.

Three frozen, versioned dataclasses, each with ``tiny`` (CPU unit tests, seconds), ``cpu`` (2 CPU
cores: pre-training about 40 minutes, the updates it needs to leave the chance-level plateau; CTC
fine-tuning about 40 minutes, the updates it needs to leave the blank-only plateau) and ``gpu``
(wav2vec 2.0 base, 12 x 768, each stage within about 9 minutes on one H100) presets:

- :class:`OptimSettings`: the optimisation and batching part shared by every stage
  (AdamW, linear warmup then cosine decay, gradient accumulation, clipping, mixed precision);
- :class:`SSLConfig`: the wav2vec 2.0 architecture and its pre-training objective
  (Baevski et al. 2020: span masking, contrastive task over Gumbel-quantised targets,
  codebook-diversity penalty, Gumbel temperature annealing);
- :class:`CTCConfig`: fine-tuning with a character CTC head.

Sizing of the ``gpu`` presets (not measured here; no GPU on the development machine): a base
training step on 128 s of audio takes about 0.075 s on an H100 (sdpa, bf16), so a 192 s
pre-training micro-batch (quantiser and 100 negatives on top) is budgeted at about 0.15 s and
2500 steps at about 6-7 minutes; ``time_limit_s`` stops a stage early, with a final checkpoint,
should the machine be slower.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

CONFIG_VERSION = 1
MIXED_PRECISION = ("no", "bf16", "fp16")  # accelerate's names

__all__ = ["CONFIG_VERSION", "CTCConfig", "OptimSettings", "SSLConfig", "config_from_dict"]


def _fail(field_name: str, value: Any, expected: str) -> None:
    raise ValueError(f"{field_name}: expected {expected}, found {value!r}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            _fail(f"{type(obj).__name__}.{name}", value, "a value > 0")


def _fraction(obj: Any, *names: str, upper_open: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
            _fail(f"{type(obj).__name__}.{name}", value, "a value in [0, 1)" if upper_open else "a value in [0, 1]")


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against the type ``hint`` (and build nested dataclasses); ``path`` names the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(value, inner, path)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        try:
            return config_from_dict(hint, value, prefix=f"{path}.")
        except ValueError as err:
            if str(err).startswith(path):
                raise
            raise ValueError(f"{path}: {err}") from None
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            _fail(path, value, "a list")
        args = typing.get_args(hint)
        inner = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(path, value, f"a list of {len(args)} values")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(path, value, "a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, value, "an integer")
        return value
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            _fail(path, value, f"a {hint.__name__}")
        return value
    raise TypeError(f"{path}: unsupported field type {hint!r}")  # a programming error, not user input


T = typing.TypeVar("T")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, checking names and types field by field."""
    name = prefix.rstrip(".") or cls.__name__
    if not isinstance(data, Mapping):
        raise TypeError(f"{name}: expected a mapping of {cls.__name__} fields, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; expected only {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        values[key] = _convert(value, hints[key], f"{prefix or cls.__name__ + '.'}{key}")
    if "version" in fields and data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise ValueError(f"{name}.version: this code reads version {CONFIG_VERSION}, found {data['version']!r}")
    return cls(**values)


@dataclass(frozen=True)
class OptimSettings:
    """Optimisation and batching of one training stage."""

    steps: int = 1000  # optimizer updates in the stage
    lr: float = 5e-4  # peak learning rate (AdamW)
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.05  # cosine decay from lr (end of warmup) to min_lr_ratio * lr (last step)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # wav2vec 2.0's Adam betas
    eps: float = 1e-6
    grad_accum: int = 1  # micro-batches per optimizer update
    clip_norm: float | None = 10.0  # max global gradient L2 norm; None: no clipping
    mixed_precision: str = "no"  # accelerate's "no", "bf16" or "fp16"
    max_batch_seconds: float = 60.0  # padded audio per micro-batch (utterances x longest), seconds
    max_utterances: int = 64  # utterances per micro-batch at most
    num_workers: int = 0  # DataLoader processes reading audio
    seed: int = 0  # python/numpy/torch seed (masks, negatives, dropout, batch order)
    time_limit_s: float | None = None  # stop early (with a final checkpoint) after this much training time

    def __post_init__(self) -> None:
        _positive(self, "steps", "lr", "eps", "grad_accum", "clip_norm", "max_batch_seconds", "max_utterances",
                  "time_limit_s")
        if self.warmup_steps < 0:
            _fail("OptimSettings.warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.num_workers < 0:
            _fail("OptimSettings.num_workers", self.num_workers, "an integer >= 0")
        if self.weight_decay < 0:
            _fail("OptimSettings.weight_decay", self.weight_decay, "a value >= 0")
        _fraction(self, "min_lr_ratio")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            _fail("OptimSettings.betas", self.betas, "two values in [0, 1)")
        if self.mixed_precision not in MIXED_PRECISION:
            _fail("OptimSettings.mixed_precision", self.mixed_precision, f"one of {list(MIXED_PRECISION)}")

    def learning_rate(self, step: int) -> float:
        """Learning rate of optimizer update ``step`` (1 for the first): a pure function of the step."""
        from kd.training.schedule import warmup_cosine

        return warmup_cosine(step, lr=self.lr, warmup_steps=self.warmup_steps, total_steps=self.steps,
                             min_lr_ratio=self.min_lr_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OptimSettings":
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class SSLConfig:
    """A wav2vec 2.0 model and its self-supervised pre-training (Baevski et al. 2020)."""

    name: str = "custom"  # the preset it came from (informational)
    # --- architecture (Hugging Face Wav2Vec2Config names in comments)
    hidden_size: int = 768
    num_layers: int = 12  # num_hidden_layers
    num_heads: int = 12  # num_attention_heads
    intermediate_size: int = 3072  # feed-forward width
    conv_dim: tuple[int, ...] = (512,) * 7  # feature-encoder channels per conv layer
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # product 320: one frame per 20 ms at 16 kHz
    num_conv_pos_embeddings: int = 128  # kernel of the convolutional relative position embedding
    num_conv_pos_embedding_groups: int = 16
    stable_layer_norm: bool = True  # pre-LN Transformer and per-frame layer norm in the conv stack
    # (more stable to pre-train; the per-frame conv norm also keeps padded batches exact)
    dropout: float = 0.1  # hidden, attention and activation dropout
    layerdrop: float = 0.05  # probability of skipping a Transformer layer in training
    feature_grad_mult: float = 0.1  # gradient scale into the conv feature encoder (wav2vec 2.0: 0.1 for stability)
    # learning rate of the conv feature encoder as a fraction of optim.lr. Under Adam, feature_grad_mult
    # hardly slows the encoder (each parameter's step is divided by its own gradient scale; only
    # clipping and eps see it); this does (recipes/w2v2_compress/README.md)
    feature_lr_scale: float = 1.0
    # feed each utterance at zero mean and unit variance (what published checkpoints with a layer-norm
    # feature encoder expect); recorded in the saved folders' preprocessor_config.json
    normalize_waveforms: bool = False
    # --- quantiser and contrastive task
    num_codevector_groups: int = 2  # G
    num_codevectors_per_group: int = 320  # V
    codevector_dim: int = 256  # concatenated code vector size
    proj_codevector_dim: int = 256  # space of the contrastive comparison
    num_negatives: int = 100  # distractors per masked frame, drawn from masked frames of the same utterance
    contrastive_temperature: float = 0.1  # kappa
    diversity_weight: float = 0.1  # alpha
    feature_penalty_weight: float = 10.0  # beta: L2 penalty on the feature-encoder output
    # --- masking of the feature-encoder output
    mask_prob: float = 0.65  # upper bound on the masked fraction (spans may overlap)
    mask_length: int = 10  # frames per span
    min_masks: int = 2  # spans per utterance at least (2 frames at least: a negative needs another frame)
    # --- Gumbel-softmax temperature: max(gumbel_min, gumbel_max * gumbel_decay ** step)
    gumbel_max: float = 2.0
    gumbel_min: float = 0.5
    gumbel_decay: float = 0.999
    # --- run
    checkpoint_steps: tuple[int, ...] = ()  # optimizer steps whose model is kept as ckpt-<step>/
    optim: OptimSettings = field(default_factory=OptimSettings)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "num_conv_pos_embeddings",
                  "num_conv_pos_embedding_groups", "num_codevector_groups", "num_codevectors_per_group",
                  "codevector_dim", "proj_codevector_dim", "num_negatives", "contrastive_temperature",
                  "mask_length", "min_masks", "gumbel_max", "gumbel_min")
        if self.hidden_size % self.num_heads:
            _fail("SSLConfig.hidden_size", self.hidden_size, f"a multiple of num_heads ({self.num_heads})")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            _fail("SSLConfig.hidden_size", self.hidden_size,
                  f"a multiple of num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})")
        if self.codevector_dim % self.num_codevector_groups:
            _fail("SSLConfig.codevector_dim", self.codevector_dim,
                  f"a multiple of num_codevector_groups ({self.num_codevector_groups})")
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            _fail("SSLConfig.conv_kernel/conv_stride", (self.conv_kernel, self.conv_stride),
                  f"as many entries as conv_dim ({n}, at least 1)")
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            if any(v < 1 for v in getattr(self, name)):
                _fail(f"SSLConfig.{name}", getattr(self, name), "positive integers")
        _fraction(self, "dropout", "layerdrop", "mask_prob", upper_open=True)
        if not 0.0 <= self.feature_grad_mult <= 1.0:
            _fail("SSLConfig.feature_grad_mult", self.feature_grad_mult, "a value in [0, 1]")
        if not 0.0 < self.feature_lr_scale <= 1.0:
            _fail("SSLConfig.feature_lr_scale", self.feature_lr_scale, "a value in (0, 1]")
        for name in ("diversity_weight", "feature_penalty_weight"):
            if getattr(self, name) < 0:
                _fail(f"SSLConfig.{name}", getattr(self, name), "a value >= 0")
        if self.gumbel_min > self.gumbel_max:
            _fail("SSLConfig.gumbel_min", self.gumbel_min, f"a value <= gumbel_max ({self.gumbel_max})")
        if not 0.0 < self.gumbel_decay <= 1.0:
            _fail("SSLConfig.gumbel_decay", self.gumbel_decay, "a value in (0, 1]")
        if self.mask_length < 2 and self.min_masks < 2:
            _fail("SSLConfig.min_masks", self.min_masks, "at least 2 when mask_length is 1 (negatives need two "
                                                         "masked frames)")
        steps = list(self.checkpoint_steps)
        if steps != sorted(set(steps)) or any(s < 1 or s > self.optim.steps for s in steps):
            _fail("SSLConfig.checkpoint_steps", self.checkpoint_steps,
                  f"strictly increasing steps in 1..optim.steps ({self.optim.steps})")

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.conv_stride)

    @property
    def codebook_size(self) -> int:
        """G x V: the number of codewords, the codebook perplexity's maximum."""
        return self.num_codevector_groups * self.num_codevectors_per_group

    def gumbel_temperature(self, step: int) -> float:
        """Temperature used for update ``step`` (0 before the first update)."""
        return max(self.gumbel_min, self.gumbel_max * self.gumbel_decay ** step)

    def to_wav2vec2_config(self):
        """The Hugging Face ``Wav2Vec2Config`` of this architecture (imports transformers)."""
        from transformers import Wav2Vec2Config

        norm = "layer" if self.stable_layer_norm else "group"
        return Wav2Vec2Config(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, conv_dim=list(self.conv_dim),
            conv_kernel=list(self.conv_kernel), conv_stride=list(self.conv_stride), conv_bias=self.stable_layer_norm,
            feat_extract_norm=norm, do_stable_layer_norm=self.stable_layer_norm,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
            hidden_dropout=self.dropout, attention_dropout=self.dropout, activation_dropout=self.dropout,
            feat_proj_dropout=self.dropout, final_dropout=self.dropout, layerdrop=self.layerdrop,
            num_codevector_groups=self.num_codevector_groups, num_codevectors_per_group=self.num_codevectors_per_group,
            codevector_dim=self.codevector_dim, proj_codevector_dim=self.proj_codevector_dim,
            num_negatives=self.num_negatives, contrastive_logits_temperature=self.contrastive_temperature,
            diversity_loss_weight=self.diversity_weight, mask_time_prob=self.mask_prob,
            mask_time_length=self.mask_length, mask_time_min_masks=self.min_masks,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSLConfig":
        return config_from_dict(cls, data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SSLConfig":
        if name not in SSL_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(SSL_PRESETS)}, found {name!r}")
        return dataclasses.replace(SSL_PRESETS[name], **overrides)


@dataclass(frozen=True)
class CTCConfig:
    """Fine-tuning a pre-trained encoder with a character CTC head (greedy decoding for scoring)."""

    name: str = "custom"
    freeze_feature_encoder: bool = True  # the conv stack keeps its pre-trained weights (as in wav2vec 2.0)
    mask_prob: float = 0.05  # SpecAugment-style time masking of the encoder input during fine-tuning
    mask_length: int = 10
    layerdrop: float = 0.05
    dropout: float = 0.1  # dropout before the output layer
    eval_batch_seconds: float = 120.0  # padded audio per decoding batch
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=5e-5, warmup_steps=500))
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _fraction(self, "mask_prob", "layerdrop", "dropout", upper_open=True)
        _positive(self, "mask_length", "eval_batch_seconds")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CTCConfig":
        return config_from_dict(cls, data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "CTCConfig":
        if name not in CTC_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(CTC_PRESETS)}, found {name!r}")
        return dataclasses.replace(CTC_PRESETS[name], **overrides)


SSL_PRESETS: dict[str, SSLConfig] = {
    # seconds on a CPU: unit tests
    "tiny": SSLConfig(
        name="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
        conv_dim=(32, 32, 32), conv_kernel=(40, 4, 4), conv_stride=(20, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, dropout=0.0, layerdrop=0.0,
        num_codevector_groups=2, num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=32,
        num_negatives=10, mask_length=4, gumbel_decay=0.9, checkpoint_steps=(2, 4),
        optim=OptimSettings(steps=4, lr=1e-3, warmup_steps=1, max_batch_seconds=20.0),
    ),
    # about 40 minutes on 2 CPU cores (the cpu corpus: about 1.7 h of training audio). The contrastive
    # loss sits at its chance level for about 300 updates, while the feature encoder's codes change from
    # frame to frame like noise, then falls below it (0.12 nats by update 700); 200 updates, raw waveforms
    # and the feature penalty of the paper's BASE recipe (this preset until 2026-12-03, the
    # w2v2_compress recipe's cpu_short) never learn (recipes/w2v2_compress/README.md). Each utterance is
    # normalised and there is no feature penalty, as in the reference recipe for this layer-norm
    # architecture; the Gumbel temperature reaches 0.5 at update 990.
    "cpu": SSLConfig(
        name="cpu", hidden_size=192, num_layers=4, num_heads=4, intermediate_size=768,
        conv_dim=(96,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8, dropout=0.1,
        layerdrop=0.0, num_codevectors_per_group=64, codevector_dim=128, proj_codevector_dim=128,
        num_negatives=50, normalize_waveforms=True, feature_penalty_weight=0.0, feature_grad_mult=1.0,
        gumbel_decay=0.9986, checkpoint_steps=(100, 250, 500, 1000),
        optim=OptimSettings(steps=1000, lr=5e-4, warmup_steps=100, max_batch_seconds=30.0),
    ),
    # wav2vec 2.0 base (12 x 768, 95M parameters) on one H100, bf16; see the module docstring. With the
    # layer-norm feature encoder and pre-LN Transformer (stable_layer_norm), the loss weights and gradient
    # scale of the reference recipe for that architecture (the paper's LARGE models): no feature penalty,
    # full gradient into the feature encoder. On the cpu preset the penalty of 10 shrinks the encoder
    # output tenfold within 50 updates (recipes/w2v2_compress/README.md). Normalised utterances, as in the
    # cpu preset, the one setting whose pre-training has been seen to learn.
    "gpu": SSLConfig(
        name="gpu", checkpoint_steps=(100, 250, 500, 1000, 1500, 2000, 2500), gumbel_decay=0.9992,
        feature_penalty_weight=0.0, feature_grad_mult=1.0, normalize_waveforms=True,
        optim=OptimSettings(steps=2500, lr=5e-4, warmup_steps=250, max_batch_seconds=192.0, max_utterances=96,
                            mixed_precision="bf16", num_workers=8, time_limit_s=480.0),
    ),
}

CTC_PRESETS: dict[str, CTCConfig] = {
    # random tiny conv features are poor, so the tiny preset trains them too
    "tiny": CTCConfig(name="tiny", freeze_feature_encoder=False, mask_prob=0.0, layerdrop=0.0, dropout=0.0,
                      eval_batch_seconds=30.0,
                      optim=OptimSettings(steps=120, lr=5e-3, warmup_steps=5, min_lr_ratio=1.0, weight_decay=0.0,
                                          max_batch_seconds=30.0)),
    # a 2-core CPU: leaves the blank-only plateau after 300-400 updates and keeps learning (about 40
    # minutes on one thread for the 4 x 192 cpu model). The conv feature encoder is trained too: with
    # it frozen (a pre-training that collapsed leaves it poor) or with fewer updates the outputs stay
    # blank (recipes/w2v2_compress/README.md)
    "cpu": CTCConfig(name="cpu", freeze_feature_encoder=False, mask_prob=0.0, layerdrop=0.0,
                     optim=OptimSettings(steps=1500, lr=1e-3, warmup_steps=100, min_lr_ratio=0.5,
                                         max_batch_seconds=30.0)),
    "gpu": CTCConfig(name="gpu", eval_batch_seconds=400.0,
                     optim=OptimSettings(steps=4000, lr=3e-4, warmup_steps=400, max_batch_seconds=160.0,
                                         max_utterances=96, mixed_precision="bf16", num_workers=8,
                                         time_limit_s=480.0)),
}
