"""Capture per-layer activations (and attention maps) from speech encoders.

Anything that satisfies :class:`LayerwiseModel` can be analysed: Hugging Face wav2vec 2.0 /
HuBERT / WavLM / data2vec-audio models through :class:`HFSpeechEncoder`, and any other model
(an ESPnet encoder, a student) through a small adapter with the same method.

Layer 0 is the input to the first Transformer layer (the feature projection output with
positional information, as Hugging Face returns it); layer ``l`` >= 1 is the output of
Transformer layer ``l``. Attention maps are those of Transformer layers 1..L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import torch


@dataclass
class LayerOutputs:
    """One padded batch of activations."""

    hidden: list[torch.Tensor]  # per layer, [B, T, D]
    lengths: torch.Tensor  # [B] valid frames per utterance
    attentions: list[torch.Tensor] | None = None  # per Transformer layer, [B, H, T, T]


@dataclass
class UtteranceActivations:
    """One utterance, padding removed."""

    utt: str
    hidden: list[torch.Tensor]  # per layer, [T, D]
    attentions: list[torch.Tensor] | None  # per Transformer layer, [H, T, T]


class LayerwiseModel(Protocol):
    """What the analyses need from a model."""

    frame_rate: float  # frames per second of the layer outputs
    num_layers: int  # number of hidden-state layers returned (Transformer layers + 1)
    batch_consistent: bool  # False if padding changes the outputs (then utterances go one by one)

    def extract(self, speech: torch.Tensor, lengths: torch.Tensor, *, attentions: bool = False) -> LayerOutputs:
        """speech: [B, samples] float32 at 16 kHz; lengths: [B]."""
        ...


class HFSpeechEncoder:
    """Adapter for Hugging Face wav2vec2-family models (base, ForCTC, ForPreTraining).

    The model must run with eager attention for attention maps (sdpa returns none).
    Models whose feature extractor uses group normalisation over time
    (``feat_extract_norm == "group"``, e.g. wav2vec 2.0 base) are not batch-consistent:
    padding changes the normalisation statistics, so they are run one utterance at a time.
    ``normalize``: scale each utterance to zero mean and unit variance first, as the
    checkpoint's feature extractor does when its ``do_normalize`` is set
    (:mod:`analysis.hf_input`; :func:`load_hf_encoder` reads it from the folder).
    """

    def __init__(self, model: torch.nn.Module, *, normalize: bool = False):
        self.model = model.eval()
        self.normalize = normalize
        config = model.config
        self.frame_rate = 16000.0 / float(torch.tensor(config.conv_stride).prod())
        self.num_layers = int(config.num_hidden_layers) + 1
        self.batch_consistent = getattr(config, "feat_extract_norm", "layer") != "group"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _base(self) -> torch.nn.Module:
        for name in ("wav2vec2", "hubert", "wavlm", "data2vec_audio"):
            if hasattr(self.model, name):
                return getattr(self.model, name)
        return self.model

    @torch.no_grad()
    def extract(self, speech: torch.Tensor, lengths: torch.Tensor, *, attentions: bool = False) -> LayerOutputs:
        base = self._base()
        mask = (torch.arange(speech.shape[1], device=speech.device)[None, :] < lengths[:, None]).long()
        if self.normalize:
            from analysis.hf_input import normalize_waveforms

            speech = normalize_waveforms(speech, lengths)
        out = base(speech, attention_mask=mask, output_hidden_states=True, output_attentions=attentions)
        frames = base._get_feat_extract_output_lengths(lengths).long()
        att = list(out.attentions) if attentions else None
        if attentions and not att:
            raise ValueError("The model returned no attention maps; load it with attn_implementation='eager'")
        return LayerOutputs(hidden=list(out.hidden_states), lengths=frames, attentions=att)


def load_hf_encoder(model_dir: str, *, device: str | torch.device = "cpu") -> HFSpeechEncoder:
    """Load a local Hugging Face checkpoint folder with eager attention and its input convention."""
    from transformers import AutoConfig, AutoModel

    from analysis.hf_input import read_input_spec

    spec = read_input_spec(model_dir)

    config = AutoConfig.from_pretrained(model_dir)
    arch = (config.architectures or [""])[0]
    if arch.endswith("ForCTC") or arch.endswith("ForPreTraining"):
        import transformers

        model = getattr(transformers, arch).from_pretrained(model_dir, attn_implementation="eager")
    else:
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    return HFSpeechEncoder(model.to(device), normalize=spec.normalize)


def _windowed(model: LayerwiseModel, utt: str, speech: torch.Tensor, window: int,
              min_tail: int = 8000) -> UtteranceActivations:
    """Run one long utterance ``[samples]`` in consecutive windows of ``window`` samples.

    Each window is run on its own (no context across window edges) and the frames are
    concatenated; attention maps are not kept (they would be block-diagonal). A model that
    normalises its input (``HFSpeechEncoder.normalize``) normalises each window on its own. Memory then
    grows with the window, not with the utterance. A model's frame count per window can be
    one less than window / hop, so frame times drift by up to one frame per window; a tail
    shorter than ``min_tail`` samples is dropped.
    """
    pieces: list[list[torch.Tensor]] = []
    for start in range(0, speech.shape[0], window):
        chunk = speech[start: start + window]
        if chunk.shape[0] < min_tail and pieces:  # too short for the model's convolutions
            break
        out = model.extract(chunk[None], torch.tensor([chunk.shape[0]], device=chunk.device), attentions=False)
        n = int(out.lengths[0])
        pieces.append([h[0, :n].float() for h in out.hidden])
    hidden = [torch.cat([p[layer] for p in pieces]) for layer in range(len(pieces[0]))]
    return UtteranceActivations(utt, hidden, None)


def iter_activations(model: LayerwiseModel, batches: Iterable[tuple[list[str], torch.Tensor, torch.Tensor]], *,
                     attentions: bool = False, device: str | torch.device | None = None,
                     max_seconds: float | None = None, sample_rate: int = 16000) -> Iterator[UtteranceActivations]:
    """Run ``model`` over ``(utts, speech [B, S], lengths [B])`` batches; yield utterances with padding removed.

    Batches are split into single utterances for models that are not batch-consistent.
    Utterances longer than ``max_seconds`` are run in windows of that length (see
    :func:`_windowed`; their ``attentions`` are None). Activations stay on ``device`` (the
    model's device by default) so that streaming statistics can be accumulated there.
    """
    window = int(max_seconds * sample_rate) if max_seconds else None
    for utts, speech, lengths in batches:
        if window is not None and int(lengths.max()) > window:
            long = [i for i in range(len(utts)) if int(lengths[i]) > window]
            for i in long:
                wave = speech[i, : int(lengths[i])]
                yield _windowed(model, utts[i], wave.to(device) if device is not None else wave, window)
            keep = [i for i in range(len(utts)) if i not in long]
            if not keep:
                continue
            utts = [utts[i] for i in keep]
            speech, lengths = speech[keep][:, : int(lengths[keep].max())], lengths[keep]
        groups = [(utts, speech, lengths)]
        if not model.batch_consistent and len(utts) > 1:
            groups = [([u], speech[i: i + 1, : int(lengths[i])], lengths[i: i + 1]) for i, u in enumerate(utts)]
        for g_utts, g_speech, g_lengths in groups:
            if device is not None:
                g_speech, g_lengths = g_speech.to(device), g_lengths.to(device)
            out = model.extract(g_speech, g_lengths, attentions=attentions)
            for i, utt in enumerate(g_utts):
                n = int(out.lengths[i])
                hidden = [h[i, :n].float() for h in out.hidden]
                att = [a[i, :, :n, :n].float() for a in out.attentions] if out.attentions is not None else None
                yield UtteranceActivations(utt, hidden, att)
