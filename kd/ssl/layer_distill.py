"""Layer-to-layer distillation of a speech encoder (DistilHuBERT, Chang et al. 2022).

A student (typically ``compress(teacher, plan)``, initialised from teacher layers, or a smaller
randomly initialised model) gets one linear prediction head per entry of the plan's layer map
(``plan.teacher_to_student()``: teacher layer t -> student layer s); head t maps the output of
student layer s to a prediction of the output of teacher layer t. Per mapped teacher layer,
over the valid (unpadded) frames f of the batch:

    L_t = mean_f [ (1/D) * ||h_f - p_f||_1  -  lambda * log sigmoid(cos(h_f, p_f)) ]

with h the teacher's hidden state, p the head's prediction, D the teacher width and
lambda = ``cos_weight`` (1 in the paper). The loss is the sum over mapped layers, as in the
paper (``average_layers=True`` divides by their number). Frames are pooled over the batch
(every valid frame weighs the same).

Layer indices count Transformer layers from 0: "layer t" is ``hidden_states[t + 1]`` of Hugging
Face's output (``hidden_states[0]`` is the input to the first layer). In pre-LN
(stable-layer-norm) models the last entry includes the encoder's final layer norm.

The teacher is frozen: run in eval mode under ``torch.no_grad`` (its mode is restored afterwards;
its parameters are left as they are). The student is trained
without time masking and without layerdrop (its config is restored before saving). Outputs::

    student/            the student (kd.compression.save_student; load_student reads it;
                        finetune_ctc accepts it)
    heads.safetensors   prediction heads ("<teacher layer>.weight", "<teacher layer>.bias")
    heads.json          layer map and widths of the heads
    log.csv             per update (kd.training.engine's columns: step, epoch, lr, loss, grad_norm, ...,
                        audio_s_per_s, steps_per_s): l1_<t>, cos_<t> (mean cosine similarity)
    checkpoints/        resumable checkpoints (kd.training.checkpoint) of the student and the heads
    .done.json          completion marker
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd.core.config import CONFIG, to_plain, with_config
from kd.core.io import atomic_write_text, mark_done
from kd.data.batching import attention_mask
from kd.models.hf_processor import InputSpec, read_input_spec, write_input_spec
from kd.plan import CompressionPlan
from kd.ssl.common import (StageResult, load_pooled, model_digest, prepare_stage_dir, run_stage, stage_accelerator,
                           stage_done, stage_lock, write_folder_atomic)
from kd.ssl.config import (CONFIG_VERSION, BatchConfig, check_training_sections, legacy_stage_config, ssl_checkpoints,
                           ssl_optim, stage_config)
from kd.training.config import CheckpointConfig, MixedPrecision, OptimConfig
from kd.training.engine import build_optimizer

__all__ = ["LayerDistillConfig", "LayerDistillLoss", "PredictionHeads", "distill_layers", "distill_plan",
           "finish_stage", "layer_distill_loss", "skipped_result"]

STUDENT_DIR = "student"
HEADS_FILE = "heads.safetensors"
LOG_FILE = "log.csv"


@dataclass(frozen=True)
@with_config(CONFIG)
class LayerDistillConfig:
    """Options of :func:`distill_layers`."""

    name: str = "custom"
    cos_weight: float = 1.0  # lambda of the -log sigmoid(cos) term
    average_layers: bool = False  # False: sum over mapped layers (the paper); True: mean
    identity_init: bool = True  # heads start as the identity when widths match (a copied layer starts exact)
    freeze_feature_encoder: bool = False  # keep the student's conv stack fixed
    optim: OptimConfig = field(default_factory=lambda: ssl_optim(max_steps=2000, lr=2e-4, warmup_steps=200))
    data: BatchConfig = field(default_factory=BatchConfig)
    checkpoint: CheckpointConfig = field(default_factory=ssl_checkpoints)
    seed: int = 0  # python/numpy/torch seed (head initialisation, dropout, batch order)
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on a CPU)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not self.cos_weight >= 0:
            raise ValueError(f"LayerDistillConfig.cos_weight: expected a value >= 0, found {self.cos_weight!r}")
        check_training_sections(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerDistillConfig":
        return stage_config(cls, data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LayerDistillConfig":
        if name not in LAYER_DISTILL_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(LAYER_DISTILL_PRESETS)}, found {name!r}")
        return dataclasses.replace(LAYER_DISTILL_PRESETS[name], **overrides)


LAYER_DISTILL_PRESETS = {
    "tiny": LayerDistillConfig(name="tiny", optim=ssl_optim(max_steps=6, lr=2e-3, warmup_steps=1, weight_decay=0.0),
                               data=BatchConfig(max_seconds=20.0)),
    "cpu": LayerDistillConfig(name="cpu", optim=ssl_optim(max_steps=150, lr=5e-4, warmup_steps=15),
                              data=BatchConfig(max_seconds=30.0)),
    "gpu": LayerDistillConfig(name="gpu", optim=ssl_optim(max_steps=3000, lr=2e-4, warmup_steps=300,
                                                          mixed_precision=MixedPrecision.BF16, time_limit_s=480.0),
                              data=BatchConfig(max_seconds=160.0, max_utterances=96, num_workers=8),
                              checkpoint=ssl_checkpoints(every_steps=500)),
}


@dataclass
class LayerDistillLoss:
    total: torch.Tensor  # scalar
    per_layer: dict[int, torch.Tensor]  # teacher layer -> L_t
    l1: dict[int, torch.Tensor]  # teacher layer -> mean per-frame (1/D) L1 distance
    cos: dict[int, torch.Tensor]  # teacher layer -> mean cosine similarity

    def log_numbers(self) -> dict[str, Any]:
        """The numbers a stage's ``log.csv`` row holds: ``loss``, ``l1_<t>`` and ``cos_<t>`` per teacher layer."""
        return {"loss": self.total.detach(), **{f"l1_{t}": v for t, v in self.l1.items()},
                **{f"cos_{t}": v for t, v in self.cos.items()}}


def layer_distill_loss(predictions: Mapping[int, torch.Tensor], targets: Mapping[int, torch.Tensor],
                       frame_mask: torch.Tensor, *, cos_weight: float = 1.0,
                       average_layers: bool = False) -> LayerDistillLoss:
    """DistilHuBERT's loss (see the module docstring), computed in float32.

    predictions, targets: teacher layer -> ``[B, T, D]`` (same keys); frame_mask: ``[B, T]`` bool,
    True at valid frames. Padded frames do not contribute, whatever they hold (even NaN).
    """
    if set(predictions) != set(targets) or not predictions:
        raise ValueError(f"expected predictions and targets for the same (non-empty) teacher layers, found "
                         f"{sorted(predictions)} and {sorted(targets)}")
    mask = frame_mask.bool()
    frames = mask.sum()
    if frames == 0:
        raise ValueError("frame_mask: expected at least one valid frame, found none")
    per_layer, l1s, coss = {}, {}, {}
    for t in sorted(predictions):
        p, h = predictions[t].float(), targets[t].float()
        if p.shape != h.shape or p.shape[:2] != mask.shape:
            raise ValueError(f"layer {t}: expected prediction and target [B, T, D] matching frame_mask "
                             f"{tuple(mask.shape)}, found {tuple(p.shape)} and {tuple(h.shape)}")
        l1 = (p - h).abs().mean(-1)  # [B, T]
        cos = F.cosine_similarity(p, h, dim=-1)  # [B, T]
        zero = torch.zeros((), device=l1.device)
        per_frame = torch.where(mask, l1 - cos_weight * F.logsigmoid(cos), zero)
        per_layer[t] = per_frame.sum() / frames
        l1s[t] = torch.where(mask, l1, zero).sum().detach() / frames
        coss[t] = torch.where(mask, cos, zero).sum().detach() / frames
    total = torch.stack(list(per_layer.values())).sum()
    if average_layers:
        total = total / len(per_layer)
    return LayerDistillLoss(total, per_layer, l1s, coss)


class PredictionHeads(nn.Module):
    """One linear head per mapped teacher layer: student layer output -> teacher layer output."""

    def __init__(self, layer_map: Mapping[int, int], student_dim: int, teacher_dim: int, *,
                 identity_init: bool = True):
        super().__init__()
        self.layer_map = dict(sorted(layer_map.items()))  # teacher layer -> student layer
        self.heads = nn.ModuleDict({str(t): nn.Linear(student_dim, teacher_dim) for t in self.layer_map})
        if identity_init and student_dim == teacher_dim:
            with torch.no_grad():
                for head in self.heads.values():
                    head.weight.copy_(torch.eye(teacher_dim))
                    head.bias.zero_()

    def forward(self, student_layers: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        """student_layers: per student layer ``[B, T, D_s]``; returns teacher layer -> ``[B, T, D_t]``."""
        return {t: self.heads[str(t)](student_layers[s]) for t, s in self.layer_map.items()}


class _StudentWithHeads(nn.Module):
    """The trained part: the student's encoder and the heads (one module for accelerate/DDP)."""

    def __init__(self, encoder: nn.Module, heads: PredictionHeads):
        super().__init__()
        self.encoder, self.heads = encoder, heads

    def forward(self, speech: torch.Tensor, mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """speech: [B, S]; mask: [B, S] (1 = sample)."""
        out = self.encoder(speech, attention_mask=mask, output_hidden_states=True)
        return self.heads(out.hidden_states[1:])


def _depth(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def skipped_result(out_dir: Path) -> StageResult:
    """The result of a layer-distillation stage found finished with the same settings (its completion marker)."""
    info = json.loads((out_dir / ".done.json").read_text(encoding="utf-8"))
    return StageResult(out_dir, out_dir / STUDENT_DIR, info["steps"], 0.0, skipped=True,
                       stopped_early=info["stopped_early"])


def finish_stage(out_dir: Path, key: dict, result: Any, accelerator, write_student: Callable[[Path], Any],
                 heads: PredictionHeads, student_dim: int, teacher_dim: int) -> StageResult:
    """Write a layer-distillation stage's outputs once its updates are done (the main process only): the
    student (``write_student(folder)`` into ``student/``, atomically), ``heads.safetensors`` (atomically;
    "<teacher layer>.weight", "<teacher layer>.bias"), ``heads.json`` (the layer map and the widths), and last
    the completion marker. ``result``: :func:`kd.ssl.common.run_stage`'s."""
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_folder_atomic(out_dir / STUDENT_DIR, write_student)
        tensors = {k.removeprefix("heads."): v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
        tmp = out_dir / f".tmp-{HEADS_FILE}"
        save_file(tensors, str(tmp))
        os.replace(tmp, out_dir / HEADS_FILE)
        atomic_write_text(out_dir / "heads.json", json.dumps(
            {"layer_map": {str(t): s for t, s in heads.layer_map.items()}, "student_dim": student_dim,
             "teacher_dim": teacher_dim}, indent=1) + "\n")
        mark_done(out_dir, key, steps=result.steps, stopped_early=result.stopped_early,
                  seconds=round(result.seconds, 3), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    accelerator.wait_for_everyone()
    return StageResult(out_dir, out_dir / STUDENT_DIR, result.steps, result.seconds, stopped_early=result.stopped_early,
                       resumed_from=result.resumed_from)


def distill_layers(teacher: nn.Module, student: nn.Module, plan: CompressionPlan,
                   data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   config: LayerDistillConfig, *, input_spec: InputSpec = InputSpec(),
                   progress: bool = True) -> StageResult:
    """Train ``student`` (in place) to predict ``teacher``'s layers as ``plan.teacher_to_student()`` maps them.

    teacher, student: Hugging Face wav2vec 2.0 / HuBERT / WavLM models (any head; their encoders
    are used) with the same feature encoder frame rate; the student has
    ``plan.num_student_layers`` Transformer layers. ``input_spec``: the teacher's input
    convention (:mod:`kd.models.hf_processor`), used for both models and saved with the student. A
    finished stage (same config, plan, data and initial weights) is skipped, leaving ``student`` untouched: load the result from
    ``StageResult.model_dir`` with :func:`kd.compression.load_student`. An unfinished one with the same settings
    resumes from its newest checkpoint (``checkpoints/``, :mod:`kd.training.checkpoint`).
    """
    if not isinstance(config, LayerDistillConfig):
        raise TypeError(f"config: expected a LayerDistillConfig, found {type(config).__name__}")
    if not isinstance(plan, CompressionPlan):
        raise TypeError(f"plan: expected a CompressionPlan, found {type(plan).__name__}")
    plan.validate(_depth(teacher))
    if _depth(student) != plan.num_student_layers:
        raise ValueError(f"student: expected {plan.num_student_layers} Transformer layers (the plan keeps "
                         f"{list(plan.keep_layers)}), found {_depth(student)}")
    out_dir = Path(out_dir)
    key = {"stage": "layer-distill", "config": config.to_dict(), "plan": plan.to_dict(),
           "input": dataclasses.asdict(input_spec),
           "data_dirs": [str(Path(d).resolve()) for d in data_dirs], "teacher": model_digest(teacher),
           "student": model_digest(student)}
    legacy = legacy_stage_config(config)
    if stage_done(out_dir, key, None if legacy is None else {**key, "config": legacy}):
        return skipped_result(out_dir)
    accelerator = stage_accelerator(config)
    with stage_lock(out_dir, accelerator, config):
        return _distill(teacher, student, plan, data_dirs, out_dir, config, input_spec, key, accelerator, progress)


def _distill(teacher: nn.Module, student: nn.Module, plan: CompressionPlan, data_dirs, out_dir: Path,
             config: LayerDistillConfig, input_spec: InputSpec, key: dict, accelerator, progress: bool) -> StageResult:
    from kd.compression import save_student

    prepare_stage_dir(out_dir, key, [STUDENT_DIR, HEADS_FILE, "heads.json", LOG_FILE], accelerator)

    dataset = load_pooled(data_dirs)
    t_base, s_base = teacher.base_model, student.base_model
    saved = {k: getattr(s_base.config, k) for k in ("apply_spec_augment", "layerdrop")}
    s_base.config.update({"apply_spec_augment": False, "layerdrop": 0.0})
    teacher_was_training = t_base.training
    t_base.eval().to(accelerator.device)
    student.to(accelerator.device)
    if config.freeze_feature_encoder:
        s_base.feature_extractor._freeze_parameters()
    heads = PredictionHeads(plan.teacher_to_student(), s_base.config.hidden_size, t_base.config.hidden_size,
                            identity_init=config.identity_init)
    module = _StudentWithHeads(s_base, heads)
    optimizer = build_optimizer(module.parameters(), config.optim, accelerator.device)
    module, optimizer = accelerator.prepare(module, optimizer)
    device = accelerator.device

    def compute(batch):
        batch = batch.to(device)
        mask = attention_mask(batch.speech_lengths, batch.speech.shape[1])
        speech = input_spec.prepare(batch.speech, batch.speech_lengths)
        with torch.no_grad(), accelerator.autocast():
            hidden = t_base(speech, attention_mask=mask, output_hidden_states=True).hidden_states
        predictions = module(speech, mask)
        frames = next(iter(predictions.values())).shape[1]
        if hidden[0].shape[1] != frames:
            raise ValueError(f"teacher and student make different numbers of frames ({hidden[0].shape[1]} and "
                             f"{frames}); their feature encoders must have the same strides")
        frame_mask = s_base._get_feature_vector_attention_mask(frames, mask)  # [B, T]
        loss = layer_distill_loss(predictions, {t: hidden[t + 1] for t in predictions}, frame_mask,
                                  cos_weight=config.cos_weight, average_layers=config.average_layers)
        return loss.total, loss.log_numbers()

    try:
        result = run_stage(accelerator, module, optimizer, config, dataset, dataset.durations(), compute, out_dir,
                           log_file=LOG_FILE, d_model=s_base.config.hidden_size, desc="layer distill",
                           progress=progress)
    finally:
        s_base.config.update(saved)
        t_base.train(teacher_was_training)
    return finish_stage(out_dir, key, result, accelerator,
                        lambda f: (save_student(student.eval(), plan, f), write_input_spec(f, input_spec)),
                        heads, s_base.config.hidden_size, t_base.config.hidden_size)


def distill_plan(teacher_dir: str | os.PathLike, plan: CompressionPlan | str | os.PathLike,
                 data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: LayerDistillConfig, *,
                 student_dir: str | os.PathLike | None = None, progress: bool = True) -> StageResult:
    """:func:`distill_layers` from folders: the teacher loaded from ``teacher_dir``, the student
    loaded from ``student_dir`` or, without one, built by ``kd.compress(teacher, plan)``.

    ``plan``: a :class:`CompressionPlan` or its JSON file. Takes and returns only picklable values,
    so recipes can run several plans side by side on worker processes (:mod:`kd.recipes.parallel`).
    """
    from kd.compression import compress
    from kd.compression.io import load_speech_model

    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    teacher = load_speech_model(teacher_dir)
    student = load_speech_model(student_dir) if student_dir is not None else compress(teacher, plan)
    return distill_layers(teacher, student, plan, data_dirs, out_dir, config, input_spec=read_input_spec(teacher_dir),
                          progress=progress)
