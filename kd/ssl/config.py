"""Configurations of the self-supervised teacher stages: pre-training and CTC fine-tuning.

Frozen, versioned dataclasses, each with ``tiny`` (CPU unit tests, seconds), ``cpu`` (2 CPU cores:
pre-training about 40 minutes, the updates it needs to leave the chance-level plateau; CTC
fine-tuning about 40 minutes, the updates it needs to leave the blank-only plateau) and ``gpu``
(wav2vec 2.0 base, 12 x 768, each stage within about 9 minutes on one H100) presets:

- :class:`SSLConfig`: the wav2vec 2.0 architecture and its pre-training objective
  (Baevski et al. 2020: span masking, contrastive task over Gumbel-quantised targets,
  codebook-diversity penalty, Gumbel temperature annealing);
- :class:`CTCConfig`: fine-tuning with a character CTC head.

Every stage (these two and :class:`kd.ssl.layer_distill.LayerDistillConfig`) trains on the toolkit's
one training stack (:mod:`kd.training.engine`) and has the sections of a ``TrainConfig`` that it needs,
under the same names: ``optim`` (:class:`kd.training.config.OptimConfig`: AdamW, linear warmup then
cosine decay, gradient accumulation, clipping, mixed precision, time limit), ``data``
(:class:`BatchConfig`: micro-batch size and loader processes), ``checkpoint``
(:class:`kd.training.config.CheckpointConfig`: how often to save for a resume) and ``seed``. A section
given in part (``optim: {lr: 1e-4}``) takes its other fields from the stage's default, not from the
class's: :func:`ssl_optim` holds the defaults of the wav2vec 2.0 stages. Settings of the layout before
the one training stack (``optim.steps``, ``optim.max_batch_seconds``, ``optim.seed``, ...) are refused
with the name to use instead (:data:`RENAMED_OPTIM_FIELDS`); configs such a version saved are read with
:func:`upgrade_saved_config`.

Sizing of the ``gpu`` presets (not measured here; no GPU on the development machine): a base
training step on 128 s of audio takes about 0.075 s on an H100 (sdpa, bf16), so a 192 s
pre-training micro-batch (quantiser and 100 negatives on top) is budgeted at about 0.15 s and
2500 steps at about 6-7 minutes; ``optim.time_limit_s`` stops a stage early, with a final checkpoint,
should the machine be slower.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from kd.core.config import CONFIG, parse_config, to_plain, with_config
from kd.training.config import (CheckpointConfig, MixedPrecision, OptimConfig, Schedule, check_checkpoint,
                                check_optim)

CONFIG_VERSION = 1

__all__ = ["CONFIG_VERSION", "RENAMED_OPTIM_FIELDS", "BatchConfig", "CTCConfig", "SSLConfig", "legacy_stage_config",
           "stage_config", "ssl_checkpoints", "ssl_optim", "upgrade_saved_config"]

# the wav2vec 2.0 stages' optimisation (Baevski et al. 2020): AdamW, warmup then cosine decay to 5 % of the peak
SSL_OPTIM_DEFAULTS: dict[str, Any] = {
    "lr": 5e-4, "schedule": Schedule.WARMUP_COSINE, "warmup_steps": 100, "min_lr_ratio": 0.05,
    "weight_decay": 0.01, "decoupled_weight_decay": True, "betas": (0.9, 0.98), "eps": 1e-6, "clip_norm": 10.0,
    "max_steps": 1000,
}

# settings of the stages' optim section before it became kd.training.config.OptimConfig -> where they went
RENAMED_OPTIM_FIELDS = {"steps": "optim.max_steps", "max_batch_seconds": "data.max_seconds",
                        "max_utterances": "data.max_utterances", "num_workers": "data.num_workers", "seed": "seed"}


def ssl_optim(**fields: Any) -> OptimConfig:
    """An :class:`OptimConfig` with the wav2vec 2.0 stages' defaults (:data:`SSL_OPTIM_DEFAULTS`), ``fields`` over them."""
    return OptimConfig(**{**SSL_OPTIM_DEFAULTS, **fields})


def ssl_checkpoints(**fields: Any) -> CheckpointConfig:
    """The stages' checkpoints: for resuming only (no dev set ranks them), so the newest one is kept and
    none is written at epoch ends (an epoch of a small corpus is a few steps); ``every_steps`` (0: only after
    the last step) bounds the work a killed stage loses."""
    return CheckpointConfig(**{"every_steps": 0, "at_epoch_end": False, "keep_last": 1, "average_best": 1,
                               **fields})


@dataclass(frozen=True)
class BatchConfig:
    """Micro-batches of a stage (the fields of ``TrainConfig.data`` that a stage given its data dirs needs)."""

    max_seconds: float = 60.0  # padded audio per micro-batch (utterances x longest), seconds
    max_utterances: int = 64  # utterances per micro-batch at most
    num_workers: int = 0  # DataLoader processes reading audio

    def __post_init__(self) -> None:
        _positive(self, "max_seconds", "max_utterances")
        if self.num_workers < 0:
            _fail("BatchConfig.num_workers", self.num_workers, "an integer >= 0")


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


def check_training_sections(config: Any) -> None:
    """Check a stage config's version and its ``optim`` and ``checkpoint`` sections (``OptimConfig`` checks nothing itself),
    naming fields as ``SSLConfig.optim.lr``."""
    name = type(config).__name__
    if config.version != CONFIG_VERSION:
        raise ValueError(f"{name}.version: this code reads version {CONFIG_VERSION}, found {config.version!r}")
    check_optim(config.optim, lambda f, value, expected: _fail(f"{name}.optim.{f}", value, expected))
    check_checkpoint(config.checkpoint, lambda f, value, expected: _fail(f"{name}.checkpoint.{f}", value, expected))


def _reject_renamed(name: str, data: Mapping[str, Any]) -> None:
    """A clear error for an optim setting of the layout before the one training stack."""
    optim = data.get("optim") if isinstance(data, Mapping) else None
    if isinstance(optim, Mapping):
        for old, new in RENAMED_OPTIM_FIELDS.items():
            if old in optim:
                raise ValueError(f"{name}.optim.{old}: this setting is now {new} (the stages share the optimisation "
                                 f"section of kd.training.config.OptimConfig); set {new} instead")


T = typing.TypeVar("T")


def stage_config(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """A stage config read from a mapping by :func:`kd.core.config.parse_config`: a section given in part
    (``optim: {lr: 1e-4}``) keeps the other fields of the stage's default; a setting of the layout before
    the one training stack is refused with the name to use instead. ``where`` names the config in errors
    (default: the class's name; a recipe's section: ``layer_distill``)."""
    _reject_renamed(where or cls.__name__, data)
    return parse_config(cls, data, where)


def upgrade_saved_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stage config as a version before the one training stack saved it (``optim`` with ``steps``,
    ``max_batch_seconds``, ``seed``, ...) in today's layout, for ``from_dict``; today's layout is
    returned unchanged. The old ``optim`` was AdamW with warmup and cosine decay, which it keeps."""
    data = copy.deepcopy(dict(data))
    optim = data.get("optim")
    if not isinstance(optim, Mapping) or "steps" not in optim:
        return data
    optim = dict(optim)
    batches = {new.split(".")[1]: optim.pop(old) for old, new in RENAMED_OPTIM_FIELDS.items()
               if new.startswith("data.") and old in optim}
    if "seed" in optim:
        data["seed"] = optim.pop("seed")
    optim["max_steps"] = optim.pop("steps")
    data["optim"] = {**optim, "schedule": Schedule.WARMUP_COSINE.value, "decoupled_weight_decay": True}
    data["data"] = batches
    return data


def legacy_stage_config(config: Any) -> dict[str, Any] | None:
    """``config.to_dict()`` as a version before the one training stack wrote it, or None where the
    config has settings that version did not have (another schedule, Adam, a number of epochs).

    A stage that such a version finished recorded that form in its completion marker: comparing it
    keeps the finished stage finished (and its model in place) instead of training it again.
    Checkpoint settings, the fused kernel and TF32 leave what a stage learns as it was and are left out.
    """
    o = config.optim
    if (o.schedule is not Schedule.WARMUP_COSINE or not o.decoupled_weight_decay or o.max_epochs is not None
            or o.max_steps is None):
        return None
    if config.deterministic:
        return None
    data = to_plain(config)
    data.pop("checkpoint")
    data.pop("deterministic")
    batches, seed = data.pop("data"), data.pop("seed")
    optim = data["optim"]
    for name in ("schedule", "decoupled_weight_decay", "max_epochs", "fused", "tf32"):
        optim.pop(name)
    optim["steps"] = optim.pop("max_steps")
    data["optim"] = {**optim, "max_batch_seconds": batches["max_seconds"], "max_utterances": batches["max_utterances"],
                     "num_workers": batches["num_workers"], "seed": seed}
    return data


@dataclass(frozen=True)
@with_config(CONFIG)
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
    # optimizer steps whose checkpoints are kept, each with a Hugging Face folder
    # (checkpoints/step-N/model/, listed by kd.ssl.common.list_stage_checkpoints) for the learning dynamics
    checkpoint_steps: tuple[int, ...] = ()
    optim: OptimConfig = field(default_factory=ssl_optim)
    data: BatchConfig = field(default_factory=BatchConfig)
    checkpoint: CheckpointConfig = field(default_factory=ssl_checkpoints)
    seed: int = 0  # python/numpy/torch seed (initial weights, masks, negatives, dropout, batch order)
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on a CPU)
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
        check_training_sections(self)
        steps, last = list(self.checkpoint_steps), self.optim.max_steps
        if steps != sorted(set(steps)) or any(s < 1 or (last is not None and s > last) for s in steps):
            _fail("SSLConfig.checkpoint_steps", self.checkpoint_steps,
                  f"strictly increasing steps in 1..optim.max_steps ({last})")

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
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SSLConfig":
        return stage_config(cls, data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SSLConfig":
        if name not in SSL_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(SSL_PRESETS)}, found {name!r}")
        return dataclasses.replace(SSL_PRESETS[name], **overrides)


@dataclass(frozen=True)
@with_config(CONFIG)
class CTCConfig:
    """Fine-tuning a pre-trained encoder with a character CTC head (greedy decoding for scoring)."""

    name: str = "custom"
    freeze_feature_encoder: bool = True  # the conv stack keeps its pre-trained weights (as in wav2vec 2.0)
    mask_prob: float = 0.05  # SpecAugment-style time masking of the encoder input during fine-tuning
    mask_length: int = 10
    layerdrop: float = 0.05
    dropout: float = 0.1  # dropout before the output layer
    eval_batch_seconds: float = 120.0  # padded audio per decoding batch
    optim: OptimConfig = field(default_factory=lambda: ssl_optim(lr=5e-5, warmup_steps=500))
    data: BatchConfig = field(default_factory=BatchConfig)
    checkpoint: CheckpointConfig = field(default_factory=ssl_checkpoints)
    seed: int = 0  # python/numpy/torch seed (head initialisation, masks, dropout, batch order)
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on a CPU)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _fraction(self, "mask_prob", "layerdrop", "dropout", upper_open=True)
        _positive(self, "mask_length", "eval_batch_seconds")
        check_training_sections(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CTCConfig":
        return stage_config(cls, data)

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
        optim=ssl_optim(max_steps=4, lr=1e-3, warmup_steps=1), data=BatchConfig(max_seconds=20.0),
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
        optim=ssl_optim(max_steps=1000, lr=5e-4, warmup_steps=100), data=BatchConfig(max_seconds=30.0),
        checkpoint=ssl_checkpoints(every_steps=250),
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
        optim=ssl_optim(max_steps=2500, lr=5e-4, warmup_steps=250, mixed_precision=MixedPrecision.BF16,
                        time_limit_s=480.0),
        data=BatchConfig(max_seconds=192.0, max_utterances=96, num_workers=8), checkpoint=ssl_checkpoints(every_steps=500),
    ),
}

CTC_PRESETS: dict[str, CTCConfig] = {
    # random tiny conv features are poor, so the tiny preset trains them too
    "tiny": CTCConfig(name="tiny", freeze_feature_encoder=False, mask_prob=0.0, layerdrop=0.0, dropout=0.0,
                      eval_batch_seconds=30.0,
                      optim=ssl_optim(max_steps=120, lr=5e-3, warmup_steps=5, min_lr_ratio=1.0, weight_decay=0.0),
                      data=BatchConfig(max_seconds=30.0)),
    # a 2-core CPU: leaves the blank-only plateau after 300-400 updates and keeps learning (about 40
    # minutes on one thread for the 4 x 192 cpu model). The conv feature encoder is trained too: with
    # it frozen (a pre-training that collapsed leaves it poor) or with fewer updates the outputs stay
    # blank (recipes/w2v2_compress/README.md)
    "cpu": CTCConfig(name="cpu", freeze_feature_encoder=False, mask_prob=0.0, layerdrop=0.0,
                     optim=ssl_optim(max_steps=1500, lr=1e-3, warmup_steps=100, min_lr_ratio=0.5),
                     data=BatchConfig(max_seconds=30.0), checkpoint=ssl_checkpoints(every_steps=250)),
    "gpu": CTCConfig(name="gpu", eval_batch_seconds=400.0,
                     optim=ssl_optim(max_steps=4000, lr=3e-4, warmup_steps=400, mixed_precision=MixedPrecision.BF16,
                                     time_limit_s=480.0),
                     data=BatchConfig(max_seconds=160.0, max_utterances=96, num_workers=8),
                     checkpoint=ssl_checkpoints(every_steps=500)),
}
