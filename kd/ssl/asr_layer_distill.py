"""Layer-to-layer distillation of an ESPnet hybrid CTC/attention student (``kd.models.asr.AsrModel``).

The loss, the prediction heads and the config are those of the wav2vec 2.0 students
(:mod:`kd.ssl.layer_distill`, DistilHuBERT, Chang et al. 2022): one linear head per entry of the plan's
layer map (``plan.teacher_to_student()``: teacher encoder layer t -> student encoder layer s) maps the
output of student layer s to a prediction p of the output h of teacher layer t, and per mapped teacher
layer, over the valid frames f of the batch,

    L_t = mean_f [ (1/D) * ||h_f - p_f||_1  -  lambda * log sigmoid(cos(h_f, p_f)) ]

(:func:`kd.ssl.layer_distill.layer_distill_loss`; the total sums L_t over mapped layers, or averages it
with ``average_layers``). Only the encoder is distilled: the decoder and the CTC layer are carried along
unchanged, for the fine-tuning that follows.

Which layers are paired: for a student built from the teacher's layers
(:func:`kd.compression.asr.asr_student`) with the default layer map, student layer s is paired with
``keep_layers[s]``, the teacher layer it was copied from. A shared student (every layer kept, blocks
sharing one set of weights) keeps the teacher's depth, so student layer s is paired with teacher layer s
whatever weights it shares; the share group's one set of weights is trained by the losses of all its
layers. A plan's explicit ``layer_map`` overrides both.

Hidden states (:meth:`kd.models.asr.AsrModel.encode_layers`): "layer t" is the output of encoder layer
t, counted from 0, before the final layer norm of a pre-LN encoder (the states ``kd analyze`` compares and
the plans are made from). Teacher and student share the front end and the convolutional subsampling
(the student's are copies), so their frames match one to one; frames past an utterance's length are
padding and take no part in the loss.

The teacher is frozen: run in eval mode under ``torch.no_grad`` (its mode is restored afterwards). The
student trains with its dropout and without SpecAugment (restored before saving: the saved model's config
still asks for it, for the fine-tuning). ``freeze_feature_encoder`` keeps the student's convolutional
subsampling (``espnet.encoder.embed``) as it is. The run is a stage of the toolkit's one training stack
(:mod:`kd.training.engine`, plumbing in :mod:`kd.ssl.common`): resumable checkpoints, exact resume with
``deterministic`` on a CPU, a lock per stage folder, and a completion marker that skips a finished stage
with the same settings. Outputs::

    student/            the distilled student, a model dir (kd.models.model_dir): the model.init_from of
                        a fine-tuning run
    heads.safetensors   prediction heads ("<teacher layer>.weight", "<teacher layer>.bias")
    heads.json          layer map and widths of the heads
    log.csv             per update (kd.training.engine's columns: step, epoch, lr, loss, grad_norm, ...,
                        audio_s_per_s, steps_per_s): l1_<t>, cos_<t> (mean cosine similarity)
    checkpoints/        resumable checkpoints (kd.training.checkpoint) of the student and the heads
    .done.json          completion marker
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from kd.plan import CompressionPlan
from kd.ssl.common import (StageResult, load_pooled, model_digest, prepare_stage_dir, run_stage, stage_accelerator,
                           stage_done, stage_lock)
from kd.ssl.layer_distill import (HEADS_FILE, LOG_FILE, STUDENT_DIR, LayerDistillConfig, PredictionHeads,
                                  finish_stage, layer_distill_loss, skipped_result)
from kd.training.engine import build_optimizer

__all__ = ["AsrLayerPredictor", "distill_asr_layers", "distill_asr_plan", "teacher_layer_outputs"]

FEATURE_ENCODER = "espnet.encoder.embed"  # the convolutional subsampling: what freeze_feature_encoder keeps


class AsrLayerPredictor(nn.Module):
    """The trained part: a student ``AsrModel`` and the heads that predict teacher layers from its layers
    (one module for accelerate and its checkpoints)."""

    def __init__(self, student: nn.Module, heads: PredictionHeads):
        super().__init__()
        self.student, self.heads = student, heads

    def forward(self, speech: torch.Tensor,
                speech_lengths: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """speech: ``[B, S]`` waveforms; speech_lengths: ``[B]``. Returns teacher layer -> prediction
        ``[B, T, D_t]``, and the valid frames ``[B]``."""
        hidden, frames = self.student.encode_layers(speech, speech_lengths)
        return self.heads(hidden[1:]), frames


def teacher_layer_outputs(teacher: nn.Module, speech: torch.Tensor, speech_lengths: torch.Tensor,
                          layers: Sequence[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The outputs ``[B, T, D_t]`` of the teacher's encoder ``layers`` (as the heads' keys count them) under
    ``torch.no_grad``, and the valid frames ``[B]``. The caller puts the teacher in eval mode."""
    with torch.no_grad():
        hidden, frames = teacher.encode_layers(speech, speech_lengths)
    return {t: hidden[t + 1] for t in layers}, frames


def _check_models(teacher: nn.Module, student: nn.Module, plan: CompressionPlan) -> None:
    from kd.models.asr import AsrModel

    for name, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, AsrModel):
            raise TypeError(f"{name}: expected a kd.models.asr.AsrModel, found {type(model).__name__}")
    plan.validate(teacher.config.encoder_layers)
    if student.config.encoder_layers != plan.num_student_layers:
        raise ValueError(f"student: expected {plan.num_student_layers} encoder layers (the plan keeps "
                         f"{list(plan.keep_layers)}), found {student.config.encoder_layers}")
    for field in ("sample_rate", "hop_length", "input_layer"):
        if getattr(teacher.config, field) != getattr(student.config, field):
            raise ValueError(f"student: expected the teacher's {field} ({getattr(teacher.config, field)!r}) so that "
                             f"their frames match, found {getattr(student.config, field)!r}")


def _frozen(student: nn.Module, freeze_feature_encoder: bool) -> list[nn.Parameter]:
    """The parameters that get no gradient: those outside the encoder (decoder, CTC layer, uncertainty head:
    the loss does not reach them) and, with ``freeze_feature_encoder``, the convolutional subsampling."""
    kept = ("espnet.encoder.",)
    return [p for name, p in student.named_parameters() if p.requires_grad
            and (not name.startswith(kept) or (freeze_feature_encoder and name.startswith(FEATURE_ENCODER + ".")))]


def distill_asr_layers(teacher: nn.Module, student: nn.Module, plan: CompressionPlan, tokenizer: Any,
                       data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                       config: LayerDistillConfig, *, progress: bool = True) -> StageResult:
    """Train ``student``'s encoder (in place) to predict ``teacher``'s encoder layers as
    ``plan.teacher_to_student()`` pairs them (see the module docstring).

    Args:
        teacher, student: :class:`kd.models.asr.AsrModel`; the student has ``plan.num_student_layers``
            encoder layers and the teacher's front end and subsampling.
        plan: the plan the student was built by (its layer map pairs the layers).
        tokenizer: the student's token inventory, saved with it (``kd.models.model_dir``).
        data_dirs: training audio (data dirs, pooled; the transcripts are not used).
        out_dir: the stage folder (module docstring).
        config: optimiser, batches, checkpoints, ``cos_weight``, ``seed``, ...

    A finished stage (same config, plan, data and initial weights) is skipped, leaving ``student``
    untouched: load the result from ``StageResult.model_dir`` with :func:`kd.models.model_dir.load_model_dir`.
    An unfinished one with the same settings resumes from its newest checkpoint.
    """
    if not isinstance(config, LayerDistillConfig):
        raise TypeError(f"config: expected a LayerDistillConfig, found {type(config).__name__}")
    if not isinstance(plan, CompressionPlan):
        raise TypeError(f"plan: expected a CompressionPlan, found {type(plan).__name__}")
    _check_models(teacher, student, plan)
    out_dir = Path(out_dir)
    key = {"stage": "asr-layer-distill", "config": config.to_dict(), "plan": plan.to_dict(),
           "data_dirs": [str(Path(d).resolve()) for d in data_dirs], "teacher": model_digest(teacher),
           "student": model_digest(student)}
    if stage_done(out_dir, key, None):
        return skipped_result(out_dir)
    accelerator = stage_accelerator(config)
    with stage_lock(out_dir, accelerator, config):
        return _distill(teacher, student, plan, tokenizer, data_dirs, out_dir, config, key, accelerator, progress)


def _distill(teacher: nn.Module, student: nn.Module, plan: CompressionPlan, tokenizer: Any, data_dirs,
             out_dir: Path, config: LayerDistillConfig, key: dict, accelerator, progress: bool) -> StageResult:
    from kd.models.model_dir import save_model_dir

    prepare_stage_dir(out_dir, key, [STUDENT_DIR, HEADS_FILE, "heads.json", LOG_FILE], accelerator)
    dataset = load_pooled(data_dirs)
    device = accelerator.device
    specaug = student.espnet.specaug
    student.espnet.specaug = None  # the targets are the teacher's states of the clean input
    teacher_was_training = teacher.training
    teacher.eval().to(device)
    student.to(device)
    frozen = _frozen(student, config.freeze_feature_encoder)
    for p in frozen:  # no gradient, no optimiser state, no part in the clipped norm
        p.requires_grad_(False)
    width_t, width_s = teacher.config.d_model, student.config.d_model
    heads = PredictionHeads(plan.teacher_to_student(), width_s, width_t, identity_init=config.identity_init)
    module = AsrLayerPredictor(student, heads)
    optimizer = build_optimizer(module.parameters(), config.optim, device)
    module, optimizer = accelerator.prepare(module, optimizer)

    def compute(batch):
        batch = batch.to(device)
        with accelerator.autocast():
            targets, frames_t = teacher_layer_outputs(teacher, batch.speech, batch.speech_lengths,
                                                      list(heads.layer_map))
            predictions, frames = module(batch.speech, batch.speech_lengths)
        if not torch.equal(frames, frames_t):
            raise ValueError(f"teacher and student make different numbers of frames ({frames_t.tolist()} and "
                             f"{frames.tolist()}); the student must keep the teacher's front end and subsampling")
        width = next(iter(predictions.values())).shape[1]
        frame_mask = torch.arange(width, device=device)[None, :] < frames[:, None]  # [B, T], True at valid frames
        loss = layer_distill_loss(predictions, targets, frame_mask, cos_weight=config.cos_weight,
                                  average_layers=config.average_layers)
        return loss.total, loss.log_numbers()

    try:
        result = run_stage(accelerator, module, optimizer, config, dataset, dataset.durations(), compute, out_dir,
                           log_file=LOG_FILE, d_model=width_s, desc="layer distill", progress=progress)
    finally:
        student.espnet.specaug = specaug
        for p in frozen:
            p.requires_grad_(True)
        teacher.train(teacher_was_training)
    return finish_stage(out_dir, key, result, accelerator,
                        lambda folder: save_model_dir(student.eval(), tokenizer, folder), heads, width_s, width_t)


def distill_asr_plan(teacher_dir: str | os.PathLike, plan: CompressionPlan | str | os.PathLike,
                     data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, config: LayerDistillConfig,
                     *, student_dir: str | os.PathLike | None = None, progress: bool = True) -> StageResult:
    """:func:`distill_asr_layers` from folders: the teacher loaded from the model dir ``teacher_dir``, the
    student from the model dir ``student_dir`` or, without one, built by
    :func:`kd.compression.asr.asr_student` (every decoder layer kept).

    ``plan``: a :class:`CompressionPlan` or its JSON file. Takes and returns only picklable values, so
    recipes can distil several students side by side on worker processes (:mod:`kd.recipes.parallel`).
    """
    from kd.compression.asr import asr_student
    from kd.models.model_dir import load_model_dir

    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    teacher, tokenizer = load_model_dir(teacher_dir)
    if student_dir is None:
        student = asr_student(teacher, plan)
    else:
        student, student_tokens = load_model_dir(student_dir)
        if list(student_tokens.tokens) != list(tokenizer.tokens):
            raise ValueError(f"student_dir: expected the token inventory of the teacher ({teacher_dir}), found "
                             f"another one in {student_dir}")
        tokenizer = student_tokens
    return distill_asr_layers(teacher, student, plan, tokenizer, data_dirs, out_dir, config, progress=progress)
