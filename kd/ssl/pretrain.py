"""Self-supervised wav2vec 2.0 pre-training of a teacher on unlabelled audio (Baevski et al. 2020).

The model is Hugging Face's ``Wav2Vec2ForPreTraining`` built from an :class:`SSLConfig` (random
initialisation). Per micro-batch:

1. spans of ``mask_length`` frames of the feature-encoder output are masked (``mask_prob`` is an
   upper bound on the masked fraction; at least ``min_masks`` spans per utterance, padding never
   masked) with transformers' ``_compute_mask_indices``;
2. ``num_negatives`` distractors per masked frame are drawn uniformly from the other masked frames
   of the same utterance (``_sample_negative_indices``);
3. the model returns the contrastive loss L_m (summed over masked frames) and the diversity loss
   L_d = (G V - perplexity) / (G V), times the number of masked frames; we divide both by the
   number of masked frames and add the paper's L2 penalty on the feature-encoder output
   L_f = mean over valid frames and channels of its squared activations, so the optimised loss
   is L_m (per masked frame) + alpha * L_d + beta * L_f;
4. the gradient into the feature encoder is scaled by ``feature_grad_mult`` (0.1 in the paper) and
   its learning rate by ``feature_lr_scale`` (1 by default; under Adam only the second slows it);
5. the Gumbel-softmax temperature of update s is max(gumbel_min, gumbel_max * gumbel_decay^(s-1)).

Output folder::

    ssl_config.json     the SSLConfig
    log.csv             per update (kd.training.engine's columns: step, epoch, lr, loss, grad_norm, ...,
                        audio_s_per_s, steps_per_s): contrastive, chance (the contrastive loss of a
                        model that cannot tell targets apart: :func:`contrastive_chance`), diversity,
                        feature_penalty, perplexity, frame_perplexity (:func:`frame_perplexity`: how
                        random each frame's drawn code is), neighbour_codes and neighbour_codes_chance
                        (:func:`neighbour_codes`: whether the codes carry structure in time),
                        masked_frames, utterances, temperature
    curves.png          the learning curves (:func:`kd.analyze.figures.plot_pretraining_curves`)
    checkpoints/        resumable checkpoints (kd.training.checkpoint): the newest, every
                        checkpoint.every_steps, and those at config.checkpoint_steps, each of these
                        with a Hugging Face folder step-N/model/ (learning dynamics; listed by
                        kd.ssl.common.list_stage_checkpoints)
    model/              the final model (Wav2Vec2ForPreTraining.from_pretrained loads it)
                        each model folder with preprocessor_config.json: raw waveforms, or normalised
                        per utterance under ``normalize_waveforms`` (kd.models.hf_processor)
    .done.json          completion marker: a re-run with the same config and data skips the stage;
                        holds the run's outcome (:func:`pretraining_outcome`: learning, at chance or
                        collapsed), also returned as the result's ``metrics`` and logged

Codebook collapse (perplexity near G, contrastive loss near 0 because every negative equals its
positive and is masked out) shows in the log; it is the usual failure of small-batch runs. The
``chance`` column tells it from learning: collapse lowers the chance level with the loss, learning
takes the loss below it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from kd.analyze.figures import plot_pretraining_curves
from kd.core.io import MARKER_NAME, mark_done, read_csv_log, write_json
from kd.data.batching import attention_mask
from kd.models.hf_processor import InputSpec, normalize_waveforms, write_input_spec
from kd.ssl.common import (MODEL_SUBDIR, StageResult, list_stage_checkpoints, load_pooled, prepare_stage_dir,
                           run_stage, save_pretrained_atomic, stage_accelerator, stage_done, stage_lock)
from kd.ssl.config import SSLConfig, legacy_stage_config, upgrade_saved_config
from kd.training.engine import build_optimizer

__all__ = ["FeatureTap", "QuantizerTap", "build_pretraining_model", "contrastive_chance", "conv_output_frames",
           "feature_penalty", "finished_config", "frame_perplexity", "neighbour_codes", "pretrain",
           "pretraining_outcome", "pretraining_param_groups", "same_training", "sample_masks"]

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
LOG_FILE = "log.csv"
CONFIG_FILE = "ssl_config.json"
CURVES_FILE = "curves.png"
OUTCOME_WINDOW = 20  # updates at the end of a run that pretraining_outcome reads
CHANCE_MARGIN = 0.05  # nats below the chance level that count as learning
COLLAPSE_PERPLEXITY = 1.5  # pooled perplexity per group at or below which the codebook has collapsed


def conv_output_frames(samples: torch.Tensor | int, kernels: Sequence[int], strides: Sequence[int]):
    """Frames the feature encoder makes from ``samples`` (no padding in its convolutions)."""
    for k, s in zip(kernels, strides):
        samples = (samples - k) // s + 1
    return samples


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class FeatureTap:
    """Forward hook on the conv feature encoder: scales the gradient flowing into it by ``scale``
    and keeps its (scaled) output ``[B, C, T]`` for the L2 feature penalty."""

    def __init__(self, scale: float):
        self.scale, self.output = scale, None

    def __call__(self, _module, _inputs, output: torch.Tensor) -> torch.Tensor:
        self.output = _GradScale.apply(output, self.scale) if self.scale < 1.0 else output
        return self.output


class QuantizerTap:
    """Forward hook on the quantiser's ``weight_proj``: keeps its output, the code logits ``[B, T, G * V]``
    (detached: only read for :func:`frame_perplexity`)."""

    def __init__(self):
        self.logits = None

    def __call__(self, _module, _inputs, output: torch.Tensor) -> None:
        self.logits = output.detach()


def build_pretraining_model(config: SSLConfig):
    """A randomly initialised ``Wav2Vec2ForPreTraining`` with a :class:`FeatureTap` on its feature encoder
    (``model.feature_tap``) and a :class:`QuantizerTap` on its quantiser (``model.quantizer_tap``);
    hooks, not saved with the model."""
    from transformers import Wav2Vec2ForPreTraining

    model = Wav2Vec2ForPreTraining(config.to_wav2vec2_config())
    model.feature_tap = FeatureTap(config.feature_grad_mult)
    model.wav2vec2.feature_extractor.register_forward_hook(model.feature_tap)
    model.quantizer_tap = QuantizerTap()
    model.quantizer.weight_proj.register_forward_hook(model.quantizer_tap)
    return model


def pretraining_param_groups(model, config: SSLConfig) -> list[dict]:
    """Optimizer groups of a pre-training model: the conv feature encoder at ``config.feature_lr_scale``
    times the learning rate (``lr_scale``, read by the training loop), everything else at 1."""
    encoder = list(model.wav2vec2.feature_extractor.parameters())
    ids = {id(p) for p in encoder}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": encoder, "lr_scale": config.feature_lr_scale}]


def _input_convention(config: SSLConfig):
    """A writer of the input convention of pre-training into a model folder (:mod:`kd.models.hf_processor`): raw
    waveforms, or each utterance at zero mean and unit variance (``config.normalize_waveforms``), so
    that fine-tuning and analysis feed the model what it was trained on."""

    def write(folder: Path) -> None:
        write_input_spec(folder, InputSpec(normalize=config.normalize_waveforms))

    return write


def feature_penalty(features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean squared activation of the feature encoder over valid frames.

    features: [B, C, T]; frames: [B] valid frames per utterance.
    """
    valid = torch.arange(features.shape[-1], device=features.device)[None, :] < frames.to(features.device)[:, None]
    per_frame = features.float().pow(2).mean(1)  # [B, T]
    return torch.where(valid, per_frame, torch.zeros((), device=features.device)).sum() / valid.sum()


def contrastive_chance(quantized: torch.Tensor, mask: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Contrastive loss of a model that cannot tell a target from its distractors, per masked frame.

    A negative equal to its positive is taken out of the softmax (its logit is set to -inf), so a
    masked frame whose K negatives hold n distinct from the positive scores ln(1 + n) when all
    candidates get the same logit. The mean of that over masked frames is the chance level the
    logged contrastive loss should be read against: a loss below it is learning, while a loss
    that falls only because the chance level falls is codebook collapse (n -> 0 as the codes
    become equal).

    quantized: [B, T, D] projected quantised targets; mask: [B, T] bool masked frames;
    negatives: [B, T, K] indices into the flattened [B * T] frames. Returns a 0-d float tensor.
    """
    b, t, d = quantized.shape
    mask = mask.to(quantized.device)
    flat = quantized.detach().reshape(b * t, d)
    positives = flat[mask.flatten()]  # [M, D]
    drawn = flat[negatives.to(quantized.device)[mask].flatten()].view(positives.shape[0], -1, d)  # [M, K, D]
    distinct = (drawn != positives[:, None, :]).any(-1).sum(-1)  # [M]
    return torch.log1p(distinct.double()).mean().float()


def frame_perplexity(logits: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """How many codes one masked frame's quantiser chooses among, summed over the G groups.

    In training the quantiser draws each frame's code with the hard Gumbel-softmax, that is
    argmax(logits + Gumbel noise): a sample from softmax(logits) whatever the temperature. Per
    group this is exp of the mean (over masked frames) entropy of softmax(logits), in nats; the
    sum over groups is G when every frame's code is certain and G x V when every draw is uniform.
    Read against the logged ``perplexity`` (the same measure of the codes' distribution pooled over
    frames): a frame perplexity near it means each frame's code is drawn at random from the codes
    in use, so the contrastive targets cannot be predicted.

    logits: [B, T, G * V] code logits (the quantiser's ``weight_proj`` output); mask: [B, T] bool
    masked frames. Returns a 0-d float tensor.
    """
    b, t, gv = logits.shape
    if gv % groups:
        raise ValueError(f"logits: last dimension {gv} is not a multiple of groups={groups}")
    mask = mask.to(logits.device)
    if not mask.any():
        raise ValueError("mask: no masked frame")
    logp = torch.log_softmax(logits.detach().double()[mask].view(-1, groups, gv // groups), dim=-1)  # [M, G, V]
    entropy = -(logp.exp() * logp).sum(-1)  # [M, G]
    return entropy.mean(0).exp().sum().float()


def neighbour_codes(logits: torch.Tensor, frames: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often two neighbouring frames of an utterance get the same code, and how often by chance.

    The contrastive task asks the context network to tell a masked frame's code from codes of
    other frames of its utterance, which it can learn only if the codes carry structure in time:
    a frame's code should say something about its neighbours'. Per group, ``agreement`` is the
    fraction of pairs of adjacent real frames (padding left out) whose most likely codes (argmax
    of the quantiser's logits) are the same; ``chance`` is that fraction if each utterance's codes
    were drawn independently from their frequencies in it (sum over codes of the squared
    frequency, averaged with the same weight, adjacent pairs, per utterance). Both are means over
    the G groups. Agreement near chance: the codes change from frame to frame like noise, and the
    targets cannot be predicted from context (a random feature encoder gives such codes;
    recipes/w2v2_compress/README.md).

    logits: [B, T, G * V] code logits (the quantiser's ``weight_proj`` output); frames: [B] real
    frames per utterance. Returns two 0-d float tensors, ``(agreement, chance)``.
    """
    b, t, gv = logits.shape
    if gv % groups:
        raise ValueError(f"logits: last dimension {gv} is not a multiple of groups={groups}")
    frames = frames.to(logits.device)
    if frames.shape != (b,) or frames.min().item() < 0 or frames.max().item() > t:
        raise ValueError(f"frames: expected {b} counts in [0, {t}], found {frames.tolist()}")
    pairs = (frames - 1).clamp(min=0)  # [B] adjacent pairs per utterance
    if pairs.sum().item() == 0:
        raise ValueError(f"frames: no utterance has two frames ({frames.tolist()})")
    codes = logits.detach().view(b, t, groups, gv // groups).argmax(-1)  # [B, T, G]
    valid = torch.arange(t, device=logits.device)[None, :] < frames[:, None]  # [B, T]
    pair_valid = valid[:, 1:] & valid[:, :-1]  # [B, T - 1]
    same = (codes[:, 1:] == codes[:, :-1]) & pair_valid[..., None]  # [B, T - 1, G]
    agreement = same.double().sum() / (pairs.sum() * groups)
    counts = torch.zeros(b, groups, gv // groups, dtype=torch.float64, device=logits.device)
    counts.scatter_add_(2, codes.transpose(1, 2), valid[:, None, :].expand(b, groups, t).double())  # [B, G, V]
    freq = counts / frames.clamp(min=1)[:, None, None]
    per_utterance = freq.pow(2).sum(-1).mean(-1)  # [B]
    chance = (per_utterance * pairs).sum() / pairs.sum()
    return agreement.float(), chance.float()


def pretraining_outcome(log_csv: str | os.PathLike, *, groups: int, codebook_size: int,
                        window: int = OUTCOME_WINDOW) -> dict[str, Any]:
    """What the last updates of a pre-training run say about it, read from its ``log.csv``.

    Means over the last ``window`` updates (all of them in a shorter run) of the contrastive loss,
    its chance level (:func:`contrastive_chance`), ``below_chance`` = chance - contrastive (nats),
    the pooled and per-frame (:func:`frame_perplexity`) codebook perplexities and, in logs that have
    them, how often neighbouring frames share their code and how often by chance
    (:func:`neighbour_codes`), with a ``state``:

    - ``"collapsed"``: the pooled perplexity is at most 1.5 per group (one code per group nearly
      always), so the loss is low because the negatives equal their positive;
    - ``"at chance"``: less than 0.05 nats below chance, the context network does not tell its
      targets from the distractors (the model has not learned, or has unlearned, the task);
    - ``"learning"``: otherwise.

    ``message`` says it in a line. Raises ValueError naming the file for an empty log or one without
    the columns (logs from before the chance level was logged).
    """
    if window < 1:
        raise ValueError(f"window: expected at least 1 update, found {window}")
    rows = read_csv_log(log_csv)
    if not rows:
        raise ValueError(f"{log_csv}: expected at least one logged update, found none")
    columns = ("contrastive", "chance", "perplexity", "frame_perplexity")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{log_csv}: column(s) {missing} missing (columns: {sorted(rows[0])})")
    neighbours = ("neighbour_codes", "neighbour_codes_chance")
    if all(c in rows[0] for c in neighbours):  # logged since 2026-12-03
        columns += neighbours
    last = rows[-window:]
    mean = {c: sum(r[c] for r in last) / len(last) for c in columns}
    below = mean["chance"] - mean["contrastive"]
    if mean["perplexity"] <= COLLAPSE_PERPLEXITY * groups:
        state = "collapsed"
    elif below < CHANCE_MARGIN:
        state = "at chance"
    else:
        state = "learning"
    side = f"{below:.3f} nats below" if below >= 0 else f"{-below:.3f} nats above"
    message = (f"{state}: over the last {len(last)} updates the contrastive loss is {mean['contrastive']:.3f} "
               f"against a chance level of {mean['chance']:.3f} ({side}), codebook "
               f"perplexity {mean['perplexity']:.1f} of {codebook_size} ({mean['frame_perplexity']:.1f} per frame)")
    if "neighbour_codes" in mean:
        message += (f"; neighbouring frames share their code {100 * mean['neighbour_codes']:.1f}% of the time "
                    f"({100 * mean['neighbour_codes_chance']:.1f}% by chance)")
    return {"state": state, "updates": len(last), "below_chance": below, **mean, "message": message}


def sample_masks(speech_lengths: torch.Tensor, num_samples: int,
                 config: SSLConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked frames and negative indices for one padded batch.

    speech_lengths: [B] samples per utterance; num_samples: padded length S.
    Returns ``mask_time_indices`` [B, T] bool and ``sampled_negative_indices`` [B, T, K] int64
    (indices into the flattened [B * T] frames; rows of unmasked frames are 0 and unused).
    """
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    frames = conv_output_frames(speech_lengths.cpu(), config.conv_kernel, config.conv_stride)  # [B]
    total = int(conv_output_frames(num_samples, config.conv_kernel, config.conv_stride))
    short = (frames < config.mask_length + 1).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"speech_lengths: utterance(s) {short} give fewer than mask_length + 1 = "
                         f"{config.mask_length + 1} frames ({frames.tolist()}); drop such utterances first")
    frame_mask = (torch.arange(total)[None, :] < frames[:, None]).long()  # [B, T]
    mask = _compute_mask_indices((len(frames), total), config.mask_prob, config.mask_length,
                                 attention_mask=frame_mask, min_masks=config.min_masks)
    negatives = _sample_negative_indices((len(frames), total), config.num_negatives, mask_time_indices=mask)
    return torch.from_numpy(mask), torch.from_numpy(negatives).long()


def finished_config(run_dir: str | os.PathLike) -> SSLConfig | None:
    """The :class:`SSLConfig` of a finished pre-training run in ``run_dir`` (its completion marker and
    ``ssl_config.json`` present), or None; for reusing another recipe's run only when its settings match
    (:func:`same_training`). A config saved before the one training stack is read in today's layout
    (:func:`kd.ssl.config.upgrade_saved_config`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER_NAME).is_file() or not (run_dir / CONFIG_FILE).is_file():
        return None
    saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    try:
        return SSLConfig.from_dict(upgrade_saved_config(saved))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{run_dir / CONFIG_FILE}: {e}") from None


def _stage_key(config: SSLConfig, data_dirs: Sequence[str | os.PathLike]) -> dict:
    return {"stage": "ssl-pretrain", "config": config.to_dict(),
            "data_dirs": [str(Path(d).resolve()) for d in data_dirs]}


def _legacy_stage_key(config: SSLConfig, data_dirs: Sequence[str | os.PathLike]) -> dict | None:
    """The key a version before the one training stack recorded for this stage (None: no such key)."""
    legacy = legacy_stage_config(config)
    return None if legacy is None else {**_stage_key(config, data_dirs), "config": legacy}


def same_training(a: SSLConfig, b: SSLConfig) -> bool:
    """Whether two configs train the same model: equal up to their checkpoint settings (how often a
    resumable checkpoint is written changes nothing of what is learnt)."""
    return dataclasses.replace(a, checkpoint=b.checkpoint) == b


def pretrain(config: SSLConfig, data_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
             progress: bool = True) -> StageResult:
    """Pre-train a wav2vec 2.0 model on the audio of ``data_dirs`` (transcripts unused).

    A finished stage (same config and data dirs) is skipped. An unfinished one with the same settings
    (``optim.max_steps``, ``optim.time_limit_s`` and the checkpoint settings may differ) resumes exactly
    from its newest checkpoint; otherwise what an earlier attempt left in ``out_dir`` (checkpoints,
    temporary folders, log, model) is removed first and the run starts from scratch. Returns a
    :class:`StageResult` whose ``model_dir`` is ``out_dir/model``.
    """
    if not isinstance(config, SSLConfig):
        raise TypeError(f"config: expected an SSLConfig, found {type(config).__name__}")
    out_dir = Path(out_dir)
    key, legacy = _stage_key(config, data_dirs), _legacy_stage_key(config, data_dirs)
    if stage_done(out_dir, key, legacy):
        info = json.loads((out_dir / MARKER_NAME).read_text(encoding="utf-8"))
        return StageResult(out_dir, out_dir / MODEL_DIR, info.get("steps", 0), 0.0, skipped=True,
                           stopped_early=info.get("stopped_early", False), metrics=info.get("outcome", {}))
    accelerator = stage_accelerator(config, find_unused_parameters=config.layerdrop > 0)
    with stage_lock(out_dir, accelerator, config):
        return _pretrain(config, data_dirs, out_dir, key, accelerator, progress)


def _pretrain(config: SSLConfig, data_dirs, out_dir: Path, key: dict, accelerator, progress: bool) -> StageResult:
    main = accelerator.is_main_process
    prepare_stage_dir(out_dir, key, [MODEL_DIR, LOG_FILE, CONFIG_FILE, CURVES_FILE], accelerator)
    if main:
        write_json(out_dir / CONFIG_FILE, config.to_dict())

    dataset = load_pooled(data_dirs)
    durations = dataset.durations()
    samples = torch.tensor([round(d * 16000) for d in durations])
    keep = (conv_output_frames(samples, config.conv_kernel, config.conv_stride) > config.mask_length).nonzero()
    keep = keep.flatten().tolist()
    if not keep:
        raise ValueError(f"data_dirs: no utterance is long enough to mask ({config.mask_length + 1} frames needed)")
    if len(keep) < len(durations) and main:
        logger.warning("pretrain: %d of %d utterances are too short to mask (fewer than %d frames) and are left out",
                       len(durations) - len(keep), len(durations), config.mask_length + 1)

    model = build_pretraining_model(config)
    optimizer = build_optimizer(pretraining_param_groups(model, config), config.optim, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    device = accelerator.device

    def compute(batch):
        mask, negatives = sample_masks(batch.speech_lengths, batch.speech.shape[1], config)  # on the host
        batch = batch.to(device)
        speech = (normalize_waveforms(batch.speech, batch.speech_lengths) if config.normalize_waveforms
                  else batch.speech)
        out = model(speech, attention_mask=attention_mask(batch.speech_lengths, batch.speech.shape[1]),
                    mask_time_indices=mask.to(device), sampled_negative_indices=negatives.to(device))
        n = mask.sum().item()
        frames = conv_output_frames(batch.speech_lengths, config.conv_kernel, config.conv_stride)
        penalty = feature_penalty(inner.feature_tap.output, frames)
        inner.feature_tap.output = None  # do not keep this batch's graph alive
        loss = out.loss / n + config.feature_penalty_weight * penalty  # L_m + alpha * L_d + beta * L_f per frame
        chance = contrastive_chance(out.projected_quantized_states, mask, negatives)
        drawn = frame_perplexity(inner.quantizer_tap.logits, mask, config.num_codevector_groups)
        agreement, agreement_chance = neighbour_codes(inner.quantizer_tap.logits, frames,
                                                      config.num_codevector_groups)
        inner.quantizer_tap.logits = None
        return loss, {"loss": loss.detach(), "contrastive": out.contrastive_loss.detach() / n, "chance": chance,
                      "diversity": out.diversity_loss.detach() / n, "feature_penalty": penalty.detach(),
                      "perplexity": out.codevector_perplexity.detach(), "frame_perplexity": drawn,
                      "neighbour_codes": agreement, "neighbour_codes_chance": agreement_chance,
                      "masked_frames": float(n),
                      "utterances": float(len(batch.utts))}

    def before_update(step: int) -> dict[str, float]:
        temperature = config.gumbel_temperature(step - 1)
        inner.set_gumbel_temperature(temperature)
        return {"temperature": temperature}

    def model_folder(checkpoint: Path, step: int) -> None:
        """At ``checkpoint_steps``: the model as a Hugging Face folder inside the checkpoint, for the
        learning dynamics (:func:`kd.ssl.common.list_stage_checkpoints`)."""
        if step in config.checkpoint_steps:
            inner.save_pretrained(checkpoint / MODEL_SUBDIR)
            _input_convention(config)(checkpoint / MODEL_SUBDIR)

    result = run_stage(accelerator, model, optimizer, config, torch.utils.data.Subset(dataset, keep),
                       [durations[i] for i in keep], compute, out_dir, log_file=LOG_FILE, d_model=config.hidden_size,
                       before_update=before_update, save_steps=config.checkpoint_steps,
                       checkpoint_files=model_folder, desc="ssl pretrain", progress=progress)
    accelerator.wait_for_everyone()
    outcome: dict[str, Any] = {}
    if main:
        save_pretrained_atomic(inner, out_dir / MODEL_DIR, extra=_input_convention(config))
        plot_pretraining_curves(out_dir / LOG_FILE, out_dir / CURVES_FILE, codebook_size=config.codebook_size)
        outcome = pretraining_outcome(out_dir / LOG_FILE, groups=config.num_codevector_groups,
                                      codebook_size=config.codebook_size)
        (logger.info if outcome["state"] == "learning" else logger.warning)("pretrain: %s", outcome["message"])
        mark_done(out_dir, key, steps=result.steps, stopped_early=result.stopped_early,
                  seconds=round(result.seconds, 3), checkpoints=[s for s, _ in list_stage_checkpoints(out_dir)],
                  outcome=outcome, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    accelerator.wait_for_everyone()
    return StageResult(out_dir, out_dir / MODEL_DIR, result.steps, result.seconds, stopped_early=result.stopped_early,
                       metrics=outcome, resumed_from=result.resumed_from)
