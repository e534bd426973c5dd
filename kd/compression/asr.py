"""Students of the toolkit's hybrid CTC/attention ASR models, built from a teacher's layers.

:func:`asr_student` applies one :class:`~kd.plan.CompressionPlan` to the encoder and another
(optional) to the decoder of a :class:`kd.models.asr.AsrModel`: the kept layers are copied in
plan order, and the plans' share groups become the student's ``encoder_share_groups`` /
``decoder_share_groups`` (ALBERT-style: one set of weights per group, the group leader's teacher
layer). Everything outside the layer stacks (front end, convolutional subsampling, embeddings,
output layers, CTC, the uncertainty head) is copied unchanged. The student is an ordinary
``AsrModel`` described completely by its ``AsrConfig``, so it trains, saves
(:func:`kd.models.model_dir.save_model_dir`), evaluates and is analysed like any other model, and a
training run starts from it with ``model.init_from: STUDENT_MODEL_DIR``.

Attention reuse changes the forward computation in a way an ``AsrConfig`` does not describe;
for an inference-time reuse student use :func:`kd.compress` on the model instead.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from kd.plan import CompressionPlan

__all__ = ["asr_student"]

_ENCODER = re.compile(r"^espnet\.encoder\.encoders\.(\d+)\.(.*)$")
_DECODER = re.compile(r"^espnet\.decoder\.decoders\.(\d+)\.(.*)$")


def _source_layers(plan: CompressionPlan) -> list[int]:
    """Teacher layer whose weights each student layer gets: its own, or its share leader's."""
    leaders = plan.share_leaders()  # student follower -> student leader
    return [plan.keep_layers[leaders.get(s, s)] for s in range(plan.num_student_layers)]


def asr_student(teacher: Any, encoder: CompressionPlan, decoder: CompressionPlan | None = None) -> Any:
    """A new ``AsrModel`` with the teacher's layers chosen by the plans (the teacher is untouched).

    Args:
        teacher: a :class:`kd.models.asr.AsrModel`.
        encoder: plan over the teacher's encoder layers (keep, share groups).
        decoder: plan over its decoder layers; None keeps every decoder layer.

    Raises:
        TypeError: for a teacher that is not an ``AsrModel`` or plans of the wrong type.
        ValueError: for a plan that does not fit the teacher's depth or asks for attention reuse.
    """
    from kd.models.asr import AsrModel, build_asr_model

    if not isinstance(teacher, AsrModel):
        raise TypeError(f"teacher: expected a kd.models.asr.AsrModel, found {type(teacher).__name__}")
    config = teacher.config
    if decoder is None:
        decoder = CompressionPlan(keep_layers=list(range(config.decoder_layers)))
    for name, plan, depth in (("encoder", encoder, config.encoder_layers), ("decoder", decoder, config.decoder_layers)):
        if not isinstance(plan, CompressionPlan):
            raise TypeError(f"{name} plan: expected a CompressionPlan, found {type(plan).__name__}")
        plan.validate(depth)
        if plan.has_attention_reuse:
            raise ValueError(f"{name} plan: attention reuse is not part of a trainable AsrModel student; "
                             "apply it with kd.compress(model, plan) for inference")
    student_config = dataclasses.replace(
        config,
        encoder_layers=encoder.num_student_layers,
        decoder_layers=decoder.num_student_layers,
        encoder_share_groups=tuple(g for g in encoder.share_groups if len(g) > 1),
        decoder_share_groups=tuple(g for g in decoder.share_groups if len(g) > 1),
    )
    student = build_asr_model(student_config, list(teacher.espnet.token_list))
    source = {"encoder": _source_layers(encoder), "decoder": _source_layers(decoder)}
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        for part, pattern in (("encoder", _ENCODER), ("decoder", _DECODER)):
            match = pattern.match(key)
            if match:
                layer, rest = int(match.group(1)), match.group(2)
                key_in_teacher = f"espnet.{part}.{part}s.{source[part][layer]}.{rest}"
                break
        else:
            key_in_teacher = key
        state[key] = teacher_state[key_in_teacher].detach().clone()
    student.load_state_dict(state)
    student.train(teacher.training)
    return student
