"""CTC fine-tuning of a pre-trained (or layer-distilled) encoder, greedy decoding and WER/CER.

Vocabulary: characters of the normalised training transcripts in the toolkit's layout
(:class:`kd.data.CharTokenizer`): ``0 <blank>, 1 <unk>, 2 <space>, letters..., last <sos/eos>``.
Hugging Face's CTC head uses ``config.pad_token_id`` as the CTC blank, so ``pad_token_id = 0``
(= ``<blank>``); label padding is -100; ``<sos/eos>`` is never a target (its logit is unused).
The model folder holds ``tokens.txt`` (one token a line, id = line number, readable by
``CharTokenizer.load``), ``vocab.json`` (token -> id) and ``preprocessor_config.json`` (16 kHz, attention mask on, and
the pre-trained folder's waveform normalisation: :mod:`kd.models.hf_processor`; the toolkit's own
pre-training uses raw waveforms). ``kd eval`` scores such a folder (:mod:`kd.evaluation.hf_ctc`).

Greedy decoding: argmax per frame over the valid frames, repeats merged, blanks (and ``<unk>``)
dropped. Scoring: jiwer WER and CER after :func:`kd.data.normalize_text` on both sides.

A student folder (``speechkd_student.json``) is fine-tuned with its structure (sharing, attention
reuse) and saved again as a student folder; a plain checkpoint folder gives a plain one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from kd.compression.io import load_speech_model
from kd.core.io import atomic_write_text, mark_done, write_json
from kd.data.batching import attention_mask
from kd.evaluation.hf_ctc import CTCTranscriber, greedy_ctc_decode  # noqa: F401 (greedy_ctc_decode: re-exported)
from kd.models.hf_processor import InputSpec, read_input_spec, write_input_spec
from kd.ssl.common import (StageResult, folder_fingerprint, load_pooled, pool_data_dirs, prepare_stage_dir, run_stage,
                           save_pretrained_atomic, stage_accelerator, stage_done, stage_lock, write_folder_atomic)
from kd.ssl.config import CTCConfig, legacy_stage_config
from kd.training.engine import build_optimizer

__all__ = ["build_ctc_model", "evaluate_ctc", "finetune_ctc", "greedy_ctc_decode", "score", "transcribe"]

MODEL_DIR = "model"
LOG_FILE = "log.csv"
RESULTS_FILE = "results.json"
CONFIG_FILE = "ctc_config.json"
TOKENS_FILE = "tokens.txt"
VOCAB_FILE = "vocab.json"
BLANK_ID = 0


def _ctc_class(base: torch.nn.Module) -> type:
    from transformers import HubertForCTC, HubertModel, Wav2Vec2ForCTC, Wav2Vec2Model, WavLMForCTC, WavLMModel

    for base_cls, ctc_cls in ((Wav2Vec2Model, Wav2Vec2ForCTC), (HubertModel, HubertForCTC), (WavLMModel, WavLMForCTC)):
        if isinstance(base, base_cls):
            return ctc_cls
    raise TypeError(f"expected a wav2vec 2.0, HuBERT or WavLM encoder, found {type(base).__name__}")


def build_ctc_model(source: torch.nn.Module, vocab_size: int, config: CTCConfig) -> torch.nn.Module:
    """A ``*ForCTC`` model whose encoder is ``source``'s (a base model or any model wrapping one).

    ``source`` is consumed: its encoder, with any sharing or attention reuse, becomes the new
    model's, and its config object is updated for CTC (vocabulary, blank id, masking, layerdrop).
    The output layer is newly initialised.
    """
    base = source.base_model
    ctc_cls = _ctc_class(base)
    base.config.update({"vocab_size": vocab_size, "pad_token_id": BLANK_ID, "bos_token_id": vocab_size - 1,
                        "eos_token_id": vocab_size - 1, "ctc_loss_reduction": "mean", "ctc_zero_infinity": True,
                        "mask_time_prob": config.mask_prob, "mask_time_length": config.mask_length,
                        "apply_spec_augment": config.mask_prob > 0 or base.config.mask_feature_prob > 0,
                        "layerdrop": config.layerdrop, "final_dropout": config.dropout, "architectures": None})
    model = ctc_cls(base.config)
    setattr(model, model.base_model_prefix, base)
    if config.freeze_feature_encoder:
        model.freeze_feature_encoder()
    # Hugging Face builds the mask embedding only when masking is on: keep the trained model's structure
    # equal to the one its saved config rebuilds (and leave no unused parameter for DDP)
    masking = config.mask_prob > 0 or base.config.mask_feature_prob > 0
    if not masking and hasattr(base, "masked_spec_embed"):
        del base.masked_spec_embed
    elif masking and not hasattr(base, "masked_spec_embed"):
        base.masked_spec_embed = torch.nn.Parameter(torch.empty(base.config.hidden_size).uniform_())
    return model


def score(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """WER and CER (jiwer) after ``normalize_text`` on both sides."""
    import jiwer

    from kd.data import normalize_text

    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"expected as many hypotheses as references (at least one), found {len(hypotheses)} "
                         f"and {len(references)}")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "utterances": len(refs)}


def transcribe(model: torch.nn.Module, tokenizer, dataset, *, max_batch_seconds: float = 120.0,
               device: str | torch.device | None = None,
               spec: InputSpec = InputSpec()) -> list[tuple[str, str, str]]:
    """Greedy transcripts of every utterance of ``dataset``: ``(utt, reference, hypothesis)`` in data order.

    ``model``: a ``*ForCTC`` model whose blank is id 0 of ``tokenizer`` (a ``CharTokenizer``);
    ``spec``: its input convention (:mod:`kd.models.hf_processor`).
    """
    if device is not None:
        model = model.to(device)
    unk = [i for i, t in enumerate(tokenizer.tokens) if t == "<unk>"]
    transcriber = CTCTranscriber(model, tokenizer.decode, blank=BLANK_ID, drop=unk, spec=spec)
    return transcriber.transcribe(dataset, max_batch_seconds=max_batch_seconds)


def _write_vocab(folder: Path, tokenizer, spec: InputSpec) -> None:
    tokenizer.save(folder / TOKENS_FILE)
    atomic_write_text(folder / VOCAB_FILE, json.dumps({t: i for i, t in enumerate(tokenizer.tokens)}, indent=1) + "\n")
    write_input_spec(folder, spec)


def _eval_name(path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    return f"{p.parent.name}/{p.name}"


def evaluate_ctc(model_dir: str | os.PathLike, data_dir: str | os.PathLike, *, device: str = "cpu",
                 max_batch_seconds: float = 120.0) -> dict[str, Any]:
    """WER/CER of a fine-tuned CTC model folder (``tokens.txt`` or a Hub ``vocab.json``) on one data dir."""
    rows = CTCTranscriber.from_folder(model_dir, device=device).transcribe(
        load_pooled([data_dir], argument="data_dir"), max_batch_seconds=max_batch_seconds)
    return score([r for _, r, _ in rows], [h for _, _, h in rows])


def finetune_ctc(pretrained_dir: str | os.PathLike, data_dirs: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike, config: CTCConfig, *, eval_dirs: Sequence[str | os.PathLike] = (),
                 progress: bool = True) -> StageResult:
    """Fine-tune the encoder in ``pretrained_dir`` with a character CTC head on ``data_dirs``.

    ``pretrained_dir``: a Hugging Face folder (e.g. ``pretrain(...).model_dir`` or a folder that
    :func:`kd.ssl.common.list_stage_checkpoints` lists) or a compressed-student folder. After training,
    every data dir in ``eval_dirs`` is decoded greedily and scored; ``results.json`` holds WER/CER per
    dir and ``decode/<domain>_<split>.txt`` the hypotheses. A finished stage is skipped on re-run; an
    unfinished one with the same settings resumes from its newest checkpoint (``checkpoints/``,
    :mod:`kd.training.checkpoint`).
    """
    if not isinstance(config, CTCConfig):
        raise TypeError(f"config: expected a CTCConfig, found {type(config).__name__}")
    pretrained_dir, out_dir = Path(pretrained_dir), Path(out_dir)
    if not pretrained_dir.is_dir():
        raise FileNotFoundError(f"pretrained_dir: expected a model folder, found no directory at {pretrained_dir}")
    key = {"stage": "ctc-finetune", "config": config.to_dict(), "pretrained": str(pretrained_dir.resolve()),
           "pretrained_files": folder_fingerprint(pretrained_dir),
           "data_dirs": [str(Path(d).resolve()) for d in data_dirs],
           "eval_dirs": [str(Path(d).resolve()) for d in eval_dirs]}
    legacy = legacy_stage_config(config)
    if stage_done(out_dir, key, None if legacy is None else {**key, "config": legacy}):
        results = json.loads((out_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        return StageResult(out_dir, out_dir / MODEL_DIR, results["steps"], 0.0, skipped=True,
                           stopped_early=results["stopped_early"], metrics=results["eval"])
    accelerator = stage_accelerator(config, find_unused_parameters=config.layerdrop > 0)
    with stage_lock(out_dir, accelerator, config):
        return _finetune(pretrained_dir, data_dirs, out_dir, config, eval_dirs, key, accelerator, progress)


def _finetune(pretrained_dir: Path, data_dirs, out_dir: Path, config: CTCConfig, eval_dirs, key: dict, accelerator,
              progress: bool) -> StageResult:
    from kd.compression.io import PLAN_FILE, STUDENT_FILE
    from kd.data import CharTokenizer
    from kd.data.batching import AudioDataset
    from kd.plan import CompressionPlan

    main = accelerator.is_main_process
    prepare_stage_dir(out_dir, key, [MODEL_DIR, LOG_FILE, RESULTS_FILE, CONFIG_FILE, "decode"], accelerator)
    if main:
        write_json(out_dir / CONFIG_FILE, config.to_dict())

    train = pool_data_dirs(data_dirs)
    tokenizer = CharTokenizer.from_texts(u.text for u in train.utterances)
    dataset = AudioDataset(train, tokenizer=tokenizer)
    is_student = (pretrained_dir / STUDENT_FILE).is_file()
    plan = CompressionPlan.load(pretrained_dir / PLAN_FILE) if is_student else None
    spec = read_input_spec(pretrained_dir)  # the encoder's input convention, kept by the fine-tuned model
    model = build_ctc_model(load_speech_model(pretrained_dir), tokenizer.vocab_size, config)
    d_model = model.config.hidden_size
    optimizer = build_optimizer(model.parameters(), config.optim, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    def compute(batch):
        batch = batch.to(device)
        labels = batch.tokens.masked_fill(batch.tokens < 0, -100)  # [B, L]
        out = model(spec.prepare(batch.speech, batch.speech_lengths),
                    attention_mask=attention_mask(batch.speech_lengths, batch.speech.shape[1]), labels=labels)
        return out.loss, {"loss": out.loss.detach(), "utterances": float(len(batch.utts))}

    result = run_stage(accelerator, model, optimizer, config, dataset, dataset.durations(), compute, out_dir,
                       log_file=LOG_FILE, d_model=d_model, desc="ctc finetune", progress=progress)
    accelerator.wait_for_everyone()
    metrics: dict[str, Any] = {}
    if main:
        inner = accelerator.unwrap_model(model)
        if plan is not None:
            from kd.compression import save_student

            write_folder_atomic(out_dir / MODEL_DIR,
                                lambda f: (save_student(inner, plan, f), _write_vocab(f, tokenizer, spec)))
        else:
            save_pretrained_atomic(inner, out_dir / MODEL_DIR, extra=lambda f: _write_vocab(f, tokenizer, spec))
        for path in eval_dirs:
            name = _eval_name(path)
            with accelerator.autocast():
                rows = transcribe(inner, tokenizer, load_pooled([path], argument="eval_dirs"),
                                  max_batch_seconds=config.eval_batch_seconds, device=accelerator.device, spec=spec)
            metrics[name] = score([r for _, r, _ in rows], [h for _, _, h in rows])
            atomic_write_text(out_dir / "decode" / f"{name.replace('/', '_')}.txt",
                              "".join(f"{u} {h}\n" for u, _, h in rows))
        write_json(out_dir / RESULTS_FILE, {"steps": result.steps, "stopped_early": result.stopped_early,
                                            "seconds": round(result.seconds, 3), "eval": metrics,
                                            "vocab_size": tokenizer.vocab_size})
        mark_done(out_dir, key, steps=result.steps, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    accelerator.wait_for_everyone()
    return StageResult(out_dir, out_dir / MODEL_DIR, result.steps, result.seconds,
                       stopped_early=result.stopped_early, metrics=metrics, resumed_from=result.resumed_from)
