"""The input convention of a Hugging Face speech checkpoint folder: read it, apply it.

The writing side (a derived model keeps its teacher's convention) is in ``kd.models.hf_processor``.

A wav2vec 2.0 / HuBERT / WavLM folder as the Hub serves it holds, beside ``config.json`` and the
weights, its processor's files: ``preprocessor_config.json`` (the feature extractor: sampling
rate, ``do_normalize``, ``return_attention_mask``) and, for CTC models, the tokenizer's
``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` (newer versions of
``transformers`` save the feature extractor's settings inside ``processor_config.json``). Most published
checkpoints were trained on normalised waveforms (``do_normalize: true``): each utterance is
scaled to zero mean and unit variance over its own samples before the model sees it. Feeding
such a model raw waveforms changes every activation, so whatever in this toolkit runs a folder's
model (analysis capture, ``kd compare``, layer distillation, CTC fine-tuning, ``kd eval``)
prepares the waveforms as the folder says, and whatever writes a model derived from a folder
(``kd compress``, layer distillation, CTC fine-tuning) writes the same convention with it.

Convention (the feature extractor's formula, applied to a padded batch)::

    y = (x - mean(x[:n])) / sqrt(var(x[:n]) + 1e-7)   over an utterance's n valid samples
    y[n:] = 0                                         padding stays zero

with ``var`` the population variance. A folder without ``preprocessor_config.json`` is read as
raw 16 kHz waveforms, the input the toolkit's own self-supervised stages train on (they write
``do_normalize: false`` explicitly). Only 16 kHz models are accepted: every data path of the
toolkit reads audio at 16 kHz. Normalising each utterance over its own samples keeps a padded
batch equal to its utterances run one by one (for layer-norm feature encoders; group-norm ones
are run one utterance at a time anyway).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PREPROCESSOR_FILE", "PROCESSOR_FILE", "InputSpec", "normalize_waveforms", "read_input_spec"]

PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # newer processors: the feature extractor's settings inside
SAMPLE_RATE = 16000
EPSILON = 1e-7  # the feature extractor's variance floor


@dataclass(frozen=True)
class InputSpec:
    """How a model's waveforms are prepared: ``normalize`` per utterance or fed raw, at ``sampling_rate``."""

    normalize: bool = False
    sampling_rate: int = SAMPLE_RATE

    def prepare(self, speech: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``speech`` [B, S] with ``lengths`` [B] valid samples, prepared for the model."""
        return normalize_waveforms(speech, lengths) if self.normalize else speech


def normalize_waveforms(speech: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each utterance's valid samples; padding set to 0.

    speech: [B, S] float; lengths: [B] valid samples (1..S). Statistics are taken in float64
    and the result has ``speech``'s dtype. A constant utterance becomes zeros.
    """
    if speech.dim() != 2 or lengths.shape != speech.shape[:1]:
        raise ValueError(f"speech, lengths: expected [batch, samples] and [batch], found {tuple(speech.shape)} and "
                         f"{tuple(lengths.shape)}")
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > speech.shape[1]):
        raise ValueError(f"lengths: expected values in 1..{speech.shape[1]} (the padded length), found "
                         f"{lengths.tolist()}")
    valid = (torch.arange(speech.shape[1], device=speech.device)[None, :] < lengths[:, None].to(speech.device))
    x = speech.double() * valid
    n = lengths.to(device=speech.device, dtype=torch.float64)[:, None]
    mean = x.sum(1, keepdim=True) / n
    var = ((x - mean) * valid).pow(2).sum(1, keepdim=True) / n
    return ((x - mean) / torch.sqrt(var + EPSILON) * valid).to(speech.dtype)


def read_input_spec(model_dir: str | os.PathLike) -> InputSpec:
    """The input convention of a checkpoint folder, from its ``preprocessor_config.json`` if any
    (else from the ``feature_extractor`` part of ``processor_config.json``, as newer versions of
    ``transformers`` save a processor).

    Raises ``ValueError`` naming the file for unreadable JSON, a ``do_normalize`` that is not a
    boolean, or a sampling rate other than 16 kHz.
    """
    path = Path(model_dir) / PREPROCESSOR_FILE
    combined = Path(model_dir) / PROCESSOR_FILE
    if not path.is_file() and not combined.is_file():
        return InputSpec()
    if not path.is_file():
        path = combined
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if path == combined:
        data = data.get("feature_extractor")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: feature_extractor: expected the feature extractor's settings, found {data!r}")
    normalize = data.get("do_normalize", True)  # the feature extractor's default
    if not isinstance(normalize, bool):
        raise ValueError(f"{path}: do_normalize: expected true or false, found {normalize!r}")
    rate = data.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE or isinstance(rate, bool):
        raise ValueError(f"{path}: sampling_rate: expected {SAMPLE_RATE} (the toolkit reads audio at 16 kHz), "
                         f"found {rate!r}")
    return InputSpec(normalize=normalize, sampling_rate=SAMPLE_RATE)
