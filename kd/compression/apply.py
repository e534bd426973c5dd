"""``kd compress``: a saved plan applied to a model folder on disk, the student saved beside its
teacher's processor files (see :mod:`kd.plan.from_report` for the plan from an analysis report)."""

from __future__ import annotations

import os
from pathlib import Path

from kd.plan import CompressionPlan

__all__ = ["compress_model_dir"]


def compress_model_dir(model_dir: str | os.PathLike, plan_path: str | os.PathLike, out_dir: str | os.PathLike,
                       *, decoder_plan_path: str | os.PathLike | None = None) -> Path:
    """``kd compress``: apply a saved plan to a model folder and save the student.

    - A Hugging Face checkpoint folder (``config.json``): a pruned-only student is a standard
      checkpoint (plain ``from_pretrained`` loads it); one with sharing or attention reuse is
      saved in the toolkit's format (``kd.load_student``). The checkpoint's processor files
      (``preprocessor_config.json``, a CTC model's vocabulary) are copied beside it, so the
      student is prepared and decoded as the teacher is (``kd eval``, ``kd analyze``).
    - A toolkit ASR model dir (``config.yaml``, see :mod:`kd.models.model_dir`): the plan applies to the
      encoder, ``decoder_plan_path`` (optional) to the decoder (:func:`kd.compression.asr.asr_student`);
      the student is a model dir that ``kd eval`` reads and training starts from
      (``model.init_from``).
    """
    from kd.models.model_dir import CONFIG_NAME

    if (Path(model_dir) / CONFIG_NAME).is_file() and not (Path(model_dir) / "config.json").is_file():
        from kd.compression.asr import asr_student
        from kd.models.model_dir import load_model_dir, save_model_dir

        teacher, tokenizer = load_model_dir(model_dir)
        decoder = CompressionPlan.load(decoder_plan_path) if decoder_plan_path is not None else None
        student = asr_student(teacher, CompressionPlan.load(plan_path), decoder)
        save_model_dir(student, tokenizer, out_dir)
        return Path(out_dir)
    if decoder_plan_path is not None:
        raise ValueError(f"--decoder-plan: only for kd ASR model dirs; {model_dir} is a Hugging Face checkpoint")
    from transformers import AutoConfig

    import transformers
    from kd.compression import compress, save_student
    from kd.models.hf_processor import copy_processor_files

    plan = CompressionPlan.load(plan_path)
    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, arch, None) or transformers.AutoModel
    teacher = cls.from_pretrained(model_dir)
    student = compress(teacher, plan)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # the student takes the teacher's input convention and vocabulary; copied before the student
    # file that marks a finished save
    copy_processor_files(model_dir, out_dir)
    return save_student(student, plan, out_dir)
