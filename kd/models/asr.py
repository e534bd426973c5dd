"""Hybrid CTC/attention Transformer ASR built from ESPnet's components, plus an uncertainty head.

Token-id conventions (ESPnet's):
    0        <blank>  (CTC blank; never a target)
    1..V-2   real tokens (ESPnet token lists put <unk> at 1)
    V-1      <sos/eos> (one symbol for both; it starts the decoder input and ends the target)
    -1       padding of `text` (ESPnet's ignore_id)

Teacher-forcing alignment: for a transcript y_1..y_L the decoder reads <sos> y_1 .. y_L and
predicts y_1 .. y_L <eos>, so logits, variances, targets and the token mask all have L + 1
positions per utterance; position i holds the distribution over the token that follows the
first i transcript tokens, and the last real position predicts <eos>.

ESPnet is imported only when a model is built, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import yaml
from torch import Tensor, nn

from kd.core.config import CONFIG, parse_config, with_config
from kd.core.io import load_yaml
from kd.models.uncertainty import AleatoricMode, UncertaintyHead, aleatoric_nll

__all__ = [
    "AsrConfig",
    "AsrModel",
    "AsrOutput",
    "FeatureNorm",
    "InputLayer",
    "IGNORE_ID",
    "SPECAUG_FIELDS",
    "build_asr_model",
    "default_token_list",
]

IGNORE_ID = -1
BLANK_SYMBOL = "<blank>"
SOS_EOS_SYMBOL = "<sos/eos>"


class InputLayer(enum.Enum):
    """Convolutional subsampling in front of the encoder (ESPnet `input_layer`)."""

    CONV2D = "conv2d"  # time / 4
    CONV2D6 = "conv2d6"  # time / 6
    CONV2D8 = "conv2d8"  # time / 8


class PositionalEncoding(enum.Enum):
    """How the encoder adds positions to the subsampled features (ESPnet's ``pos_enc_layer_type`` names)."""

    # x * sqrt(d_model) + PE (ESPnet's PositionalEncoding, Vaswani et al.): the residual stream starts
    # at sqrt(d_model) times the features' scale, so that with pre-LN blocks it stays dominated by the
    # input and every layer's output looks alike (docs/measurements.md, 2026-12-07)
    ABS = "abs_pos"
    # x + alpha * PE with a learnt alpha (ESPnet's ScaledPositionalEncoding, Li et al. 2019): no sqrt(d) gain
    SCALED_ABS = "scaled_abs_pos"


class FeatureNorm(enum.Enum):
    """Per-utterance normalisation of the log-mel features (ESPnet's UtteranceMVN)."""

    NONE = "none"
    UTTERANCE_MEAN = "utterance_mean"
    UTTERANCE_MEAN_VAR = "utterance_mean_var"


SPECAUG_FIELDS = ("specaug_freq_masks", "specaug_freq_width", "specaug_time_masks", "specaug_time_ratio",
                   "specaug_time_warp")

_ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "input_layer": InputLayer,
    "feature_norm": FeatureNorm,
    "aleatoric_mode": AleatoricMode,
    "pos_enc": PositionalEncoding,
}

# name -> fields that differ from the dataclass defaults (the defaults are the teacher)
_PRESETS: dict[str, dict[str, Any]] = {
    "teacher": {},
    "base": {"encoder_layers": 6, "decoder_layers": 3, "ffn_units": 1024},
    "small": {
        "d_model": 144,
        "attention_heads": 4,
        "encoder_layers": 4,
        "decoder_layers": 2,
        "ffn_units": 576,
    },
    "tiny": {
        "d_model": 64,
        "attention_heads": 2,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "ffn_units": 128,
        "num_noise_samples": 4,
    },
}


def _share_groups(name: str, groups: Any, depth: int) -> tuple[tuple[int, ...], ...]:
    """Validate share groups (lists of layer indices) against ``depth`` layers; returns tuples."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (list, tuple)):
        raise ValueError(f"AsrConfig.{name}: expected a list of groups of layer indices, found {groups!r}")
    out, seen = [], {}
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, (list, tuple)) or len(group) < 2:
            raise ValueError(f"AsrConfig.{name}[{g}]: expected a list of at least 2 layer indices, found {group!r}")
        for i in group:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth:
                raise ValueError(f"AsrConfig.{name}[{g}]: expected layer indices in 0..{depth - 1}, found {i!r}")
            if i in seen:
                raise ValueError(f"AsrConfig.{name}[{g}]: layer {i} is already in group {seen[i]}; "
                                 "a layer belongs to at most one group")
            seen[i] = g
        out.append(tuple(group))
    return tuple(out)


@dataclass(frozen=True)
@with_config(CONFIG)
class AsrConfig:
    """Architecture, features and loss weights of one hybrid CTC/attention model."""

    vocab_size: int  # V, including <blank> (0) and <sos/eos> (V-1)
    d_model: int = 256  # attention dimension of encoder and decoder
    attention_heads: int = 4  # d_model must be divisible by it
    encoder_layers: int = 12
    decoder_layers: int = 6
    ffn_units: int = 2048  # position-wise feed-forward width, encoder and decoder
    dropout_rate: float = 0.1  # residual, feed-forward and positional-encoding dropout
    attention_dropout_rate: float = 0.0  # on attention probabilities (ESPnet default)
    input_layer: InputLayer = InputLayer.CONV2D
    ctc_weight: float = 0.3  # loss = w * CTC + (1 - w) * attention
    lsm_weight: float = 0.15  # label smoothing of the attention cross-entropy
    length_normalized_loss: bool = False  # ESPnet default: token sums divided by batch size
    sample_rate: int = 16000  # Hz of the input waveform
    n_fft: int = 512
    win_length: int = 400  # samples: 25 ms at 16 kHz
    hop_length: int = 160  # samples: 10 ms at 16 kHz
    n_mels: int = 80  # log-mel FBANK dimension
    feature_norm: FeatureNorm = FeatureNorm.UTTERANCE_MEAN
    uncertainty_head: bool = True  # teachers and students both carry one (docs/design.md §9)
    num_noise_samples: int = 10  # S in the sampled-softmax aleatoric loss
    aleatoric_mode: AleatoricMode = AleatoricMode.ADD
    # ALBERT-style cross-layer sharing: groups of layer indices (from 0) whose layers use one set
    # of weights, the first index's; a layer belongs to at most one group
    encoder_share_groups: tuple[tuple[int, ...], ...] = ()
    decoder_share_groups: tuple[tuple[int, ...], ...] = ()
    # SpecAugment (Park et al. 2019; ESPnet's SpecAug) on the normalised log-mel features, in
    # training only: masks of up to `specaug_freq_width` mel bands and of up to
    # `specaug_time_ratio` of the utterance's frames, and a time warp of up to
    # `specaug_time_warp` frames. All 0: off (the default)
    specaug_freq_masks: int = 0
    specaug_freq_width: int = 0
    specaug_time_masks: int = 0
    specaug_time_ratio: float = 0.0
    specaug_time_warp: int = 0
    pos_enc: PositionalEncoding = PositionalEncoding.ABS
    # layer norm before each encoder block's attention and feed-forward (pre-LN, ESPnet's default) or
    # after the residual sum (post-LN, Vaswani et al.): a post-LN block's output is normalised, so it
    # is not the running sum of the input embedding and every earlier block's update
    encoder_normalize_before: bool = True
    version: int = 1

    def __post_init__(self) -> None:
        for name, kind in _ENUM_FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise TypeError(f"AsrConfig.{name}: expected {kind.__name__}, found {value!r}")
        positive = (
            "d_model", "attention_heads", "encoder_layers", "decoder_layers", "ffn_units",
            "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "num_noise_samples",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AsrConfig.{name}: expected a positive int, found {value!r}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 3:
            raise ValueError(
                f"AsrConfig.vocab_size: expected an int >= 3 (<blank>, a token, <sos/eos>), "
                f"found {self.vocab_size!r}"
            )
        if self.d_model % self.attention_heads:
            raise ValueError(
                f"AsrConfig.d_model: expected a multiple of attention_heads="
                f"{self.attention_heads}, found {self.d_model}"
            )
        if self.win_length > self.n_fft:
            raise ValueError(
                f"AsrConfig.win_length: expected <= n_fft={self.n_fft}, found {self.win_length}"
            )
        for name in ("dropout_rate", "attention_dropout_rate", "lsm_weight", "ctc_weight"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"AsrConfig.{name}: expected a value in [0, 1), found {value!r}")
        for name, depth in (("encoder_share_groups", self.encoder_layers),
                            ("decoder_share_groups", self.decoder_layers)):
            object.__setattr__(self, name, _share_groups(name, getattr(self, name), depth))
        for name in ("specaug_freq_masks", "specaug_freq_width", "specaug_time_masks", "specaug_time_warp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"AsrConfig.{name}: expected an int >= 0, found {value!r}")
        if isinstance(self.specaug_time_ratio, bool) or not isinstance(self.specaug_time_ratio, (int, float)) \
                or not 0.0 <= self.specaug_time_ratio < 1.0:
            raise ValueError(f"AsrConfig.specaug_time_ratio: expected a value in [0, 1), "
                             f"found {self.specaug_time_ratio!r}")
        if (self.specaug_freq_masks > 0) != (self.specaug_freq_width > 0):
            raise ValueError("AsrConfig.specaug_freq_masks and specaug_freq_width: expected both 0 or both > 0, "
                             f"found {self.specaug_freq_masks} and {self.specaug_freq_width}")
        if (self.specaug_time_masks > 0) != (self.specaug_time_ratio > 0):
            raise ValueError("AsrConfig.specaug_time_masks and specaug_time_ratio: expected both 0 or both > 0, "
                             f"found {self.specaug_time_masks} and {self.specaug_time_ratio}")
        if self.specaug_freq_width > self.n_mels:
            raise ValueError(f"AsrConfig.specaug_freq_width: expected at most n_mels={self.n_mels}, "
                             f"found {self.specaug_freq_width}")
        if self.version != 1:
            raise ValueError(f"AsrConfig.version: expected 1, found {self.version!r}")

    @property
    def uses_specaug(self) -> bool:
        return bool(self.specaug_freq_masks or self.specaug_time_masks or self.specaug_time_warp)

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides: Any) -> "AsrConfig":
        """A named preset (`teacher`, `base`, `small`, `tiny`) with optional field overrides."""
        if name not in _PRESETS:
            raise ValueError(
                f"AsrConfig preset: expected one of {sorted(_PRESETS)}, found {name!r}"
            )
        return cls(vocab_size=vocab_size, **{**_PRESETS[name], **overrides})

    @classmethod
    def teacher(cls, vocab_size: int, **overrides: Any) -> "AsrConfig":
        """12 x 256 encoder, 6 x 256 decoder, FFN 2048 (27.5M parameters at V = 500)."""
        return cls.from_preset("teacher", vocab_size, **overrides)

    @classmethod
    def base(cls, vocab_size: int, **overrides: Any) -> "AsrConfig":
        """6 x 256 encoder, 3 x 256 decoder, FFN 1024."""
        return cls.from_preset("base", vocab_size, **overrides)

    @classmethod
    def small(cls, vocab_size: int, **overrides: Any) -> "AsrConfig":
        """4 x 144 encoder, 2 x 144 decoder, FFN 576."""
        return cls.from_preset("small", vocab_size, **overrides)

    @classmethod
    def tiny(cls, vocab_size: int, **overrides: Any) -> "AsrConfig":
        """2 x 64 encoder, 1 x 64 decoder, FFN 128: for tests on a CPU."""
        return cls.from_preset("tiny", vocab_size, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in _ENUM_FIELDS:
            out[name] = out[name].value
        for name in ("encoder_share_groups", "decoder_share_groups"):
            out[name] = [list(g) for g in out[name]]
        if not self.uses_specaug:  # written only when on, so that the configs (and digests) of
            for name in SPECAUG_FIELDS:  # models trained without it stay as they were
                del out[name]
        if self.pos_enc is PositionalEncoding.ABS:  # likewise: written only when not the default
            del out["pos_enc"]
        if self.encoder_normalize_before:
            del out["encoder_normalize_before"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AsrConfig":
        return parse_config(cls, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "AsrConfig":
        data = load_yaml(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"AsrConfig YAML: expected a mapping, found {type(data).__name__}")
        return cls.from_dict(data)


@dataclass(frozen=True)
class AsrOutput:
    """Everything one teacher-forced forward pass gives to training and to distillation.

    B = batch, L = longest transcript in the batch, V = vocabulary, D = d_model,
    T' = encoder frames after subsampling.
    """

    loss: Tensor  # scalar: ctc_weight * loss_ctc + (1 - ctc_weight) * attention branch
    loss_ctc: Tensor | None  # scalar CTC loss (None when ctc_weight = 0)
    loss_att: Tensor  # scalar label-smoothed CE on the mean logits (ESPnet's criterion)
    loss_aleatoric: Tensor | None  # scalar sampled-softmax loss (None without a head)
    acc: Tensor  # 0-dim: teacher-forced token accuracy of argmax(logits) over real positions
    logits: Tensor  # [B, L+1, V] mean decoder logits f
    decoder_hidden: Tensor  # [B, L+1, D] pre-logit states h (normalised last block output)
    variances: Tensor | None  # [B, L+1, V] sigma^2 from the uncertainty head
    targets: Tensor  # [B, L+1] transcript + <eos>, -1 at padding
    token_mask: Tensor  # [B, L+1] bool, True at real target positions
    ctc_log_probs: Tensor | None  # [B, T', V] CTC log posteriors (None when ctc_weight = 0)
    encoder_lengths: Tensor  # [B] valid encoder frames


def default_token_list(vocab_size: int) -> list[str]:
    """Placeholder symbols with ESPnet's layout: <blank>, <unk>, tokens, <sos/eos>."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size: expected >= 3, found {vocab_size}")
    middle = ["<unk>"] + [f"<token_{i}>" for i in range(2, vocab_size - 1)]
    return [BLANK_SYMBOL, *middle, SOS_EOS_SYMBOL]


class AsrModel(nn.Module):
    """ESPnet's ESPnetASRModel plus an optional uncertainty head on the decoder state.

    Args:
        config: the configuration the components were built from.
        espnet_model: an `espnet2.asr.espnet_model.ESPnetASRModel` (kept as `self.espnet`,
            usable as is by ESPnet's decoding code).
        uncertainty_head: the head, or None.
    """

    def __init__(
        self,
        config: AsrConfig,
        espnet_model: nn.Module,
        uncertainty_head: UncertaintyHead | None = None,
    ):
        super().__init__()
        if config.uncertainty_head != (uncertainty_head is not None):
            raise ValueError(
                f"uncertainty_head: config.uncertainty_head={config.uncertainty_head} but "
                f"a head was {'not ' if uncertainty_head is None else ''}given"
            )
        self.config = config
        self.espnet = espnet_model
        self.uncertainty = uncertainty_head

    @property
    def sos(self) -> int:
        return self.espnet.sos

    @property
    def eos(self) -> int:
        return self.espnet.eos

    @property
    def blank_id(self) -> int:
        return self.espnet.blank_id

    def encode(self, speech: Tensor, speech_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Frontend, normalisation and encoder.

        Args:
            speech: waveforms `[batch, samples]` at `config.sample_rate`.
            speech_lengths: valid samples `[batch]`.

        Returns:
            Encoder states `[batch, frames', d_model]` and their lengths `[batch]`.
        """
        return self.espnet.encode(speech, speech_lengths)

    def encode_layers(self, speech: Tensor, speech_lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        """:meth:`encode`, keeping the encoder's state after each of its stages.

        Args:
            speech: waveforms `[batch, samples]` at `config.sample_rate`.
            speech_lengths: valid samples `[batch]`.

        Returns:
            `hidden`: `encoder_layers + 1` tensors `[batch, frames', d_model]`, as Hugging Face's
            `hidden_states` count them: `hidden[0]` is the subsampled input embedding (convolutional
            subsampling and positional encoding), `hidden[l + 1]` the output of encoder layer `l`
            (before the final layer norm of a pre-LN encoder); and the valid frames `[batch]` of
            each utterance (frames past them are padding and hold anything).

        Gradients flow as in :meth:`encode` (the caller picks ``torch.no_grad``), and in training mode
        SpecAugment and dropout apply. ESPnet's subsampling and utterance normalisation see the
        padding, so an utterance's states depend slightly on the batch it is in.
        """
        encoder = self.espnet.encoder
        hidden: list[Tensor] = []
        masks: list[Tensor] = []

        def keep(_module, _inputs, output) -> None:
            xs, mask = output  # the embedding and every layer return (states, mask [batch, 1, frames'])
            hidden.append(xs[0] if isinstance(xs, tuple) else xs)  # (states, relative positions) for rel_pos
            masks.append(mask)

        handles = [encoder.embed.register_forward_hook(keep)]
        handles += [layer.register_forward_hook(keep) for layer in encoder.encoders]
        try:
            self.espnet.encode(speech, speech_lengths)
        finally:
            for handle in handles:
                handle.remove()
        assert len(hidden) == len(encoder.encoders) + 1, "every layer runs once per forward pass"
        return hidden, masks[0].squeeze(1).sum(-1).long()

    def forward(
        self,
        speech: Tensor,
        speech_lengths: Tensor,
        text: Tensor,
        text_lengths: Tensor,
        *,
        generator: torch.Generator | None = None,
        check: bool = True,
        espnet_losses: bool = False,
    ) -> AsrOutput:
        """Teacher-forced forward pass with ESPnet's losses.

        Args:
            speech: waveforms `[batch, samples]`.
            speech_lengths: valid samples `[batch]`.
            text: token ids `[batch, max_tokens]`, ids in 1..V-2, padded with -1.
            text_lengths: valid tokens `[batch]`.
            generator: optional random generator for the aleatoric noise samples.
            check: validate the batch (:meth:`check_batch`) and cut `text` to its longest
                transcript. Reading the values makes the host wait for an accelerator, so the
                training loop checks each batch on the host before moving it and passes
                `check=False`; `text` must then have exactly max(text_lengths) columns (as
                `kd.data.batching.collate` makes it).
            espnet_losses: compute the CTC and attention losses, the decoder inputs and the
                accuracy with ESPnet's own functions, which read values on the host once or
                twice per utterance (the reference; `kd.models.hybrid_losses` gives the same
                values without host reads and is the default).

        Returns:
            An `AsrOutput` (shapes documented there).
        """
        from kd.models.hybrid_losses import ctc_loss, label_smoothing_loss, sos_eos, token_accuracy

        espnet = self.espnet
        if check:
            self.check_batch(speech, speech_lengths, text, text_lengths)
            text = text[:, : int(text_lengths.max())]

        encoder_out, encoder_lengths = espnet.encode(speech, speech_lengths)

        loss_ctc, ctc_log_probs = None, None
        if espnet.ctc is not None:
            ctc_log_probs = espnet.ctc.log_softmax(encoder_out)
            if espnet_losses or espnet.ctc.dropout_rate > 0:  # (the CTC layer of build_asr_model has no dropout)
                loss_ctc = espnet.ctc(encoder_out, encoder_lengths, text, text_lengths)
            else:  # without dropout the loss uses the same log-probs as ctc_log_probs
                loss_ctc = ctc_loss(ctc_log_probs, encoder_lengths, text, text_lengths, blank=self.blank_id)

        if espnet_losses:
            from espnet.nets.pytorch_backend.nets_utils import th_accuracy
            from espnet.nets.pytorch_backend.transformer.add_sos_eos import add_sos_eos

            ys_in, targets = add_sos_eos(text, espnet.sos, espnet.eos, espnet.ignore_id)
        else:
            ys_in, targets = sos_eos(text, text_lengths, espnet.sos, espnet.eos, IGNORE_ID)
        (logits, hidden), _ = espnet.decoder(
            encoder_out, encoder_lengths, ys_in, text_lengths + 1, return_hs=True
        )
        if espnet_losses:
            loss_att = espnet.criterion_att(logits, targets)
            acc = torch.tensor(th_accuracy(logits.reshape(-1, logits.size(-1)), targets, ignore_label=IGNORE_ID))
        else:
            criterion = espnet.criterion_att
            loss_att = label_smoothing_loss(logits, targets, smoothing=criterion.smoothing,
                                            normalize_length=criterion.normalize_length, ignore_id=IGNORE_ID)
            acc = token_accuracy(logits.detach(), targets, IGNORE_ID)
        token_mask = targets != IGNORE_ID

        variances, loss_aleatoric = None, None
        attention_branch = loss_att
        if self.uncertainty is not None:
            variances = self.uncertainty(hidden)
            per_token = aleatoric_nll(
                logits,
                variances,
                targets,
                num_samples=self.config.num_noise_samples,
                ignore_id=IGNORE_ID,
                generator=generator,
            )
            # same normalisation as ESPnet's label-smoothing criterion
            denominator = token_mask.sum() if self.config.length_normalized_loss else logits.size(0)
            loss_aleatoric = per_token.sum() / denominator
            if self.config.aleatoric_mode is AleatoricMode.ADD:
                attention_branch = loss_att + loss_aleatoric
            else:
                attention_branch = loss_aleatoric

        if loss_ctc is None:
            loss = attention_branch
        else:
            weight = espnet.ctc_weight
            loss = weight * loss_ctc + (1.0 - weight) * attention_branch

        return AsrOutput(
            loss=loss,
            loss_ctc=loss_ctc,
            loss_att=loss_att,
            loss_aleatoric=loss_aleatoric,
            acc=acc,
            logits=logits,
            decoder_hidden=hidden,
            variances=variances,
            targets=targets,
            token_mask=token_mask,
            ctc_log_probs=ctc_log_probs,
            encoder_lengths=encoder_lengths,
        )

    def check_batch(
        self, speech: Tensor, speech_lengths: Tensor, text: Tensor, text_lengths: Tensor
    ) -> None:
        """Raise ValueError naming the field when a batch breaks the conventions of :meth:`forward`."""
        if speech.dim() != 2:
            raise ValueError(f"speech: expected [batch, samples], found {tuple(speech.shape)}")
        if text.dim() != 2:
            raise ValueError(f"text: expected [batch, tokens], found {tuple(text.shape)}")
        batch = speech.size(0)
        for name, tensor in (("speech_lengths", speech_lengths), ("text_lengths", text_lengths)):
            if tensor.shape != (batch,):
                raise ValueError(f"{name}: expected shape ({batch},), found {tuple(tensor.shape)}")
        if text.size(0) != batch:
            raise ValueError(f"text: expected batch size {batch}, found {text.size(0)}")
        if int(text_lengths.min()) < 1:
            raise ValueError(f"text_lengths: expected >= 1, found {text_lengths.tolist()}")
        if int(text_lengths.max()) > text.size(1):
            raise ValueError(f"text_lengths: expected at most the {text.size(1)} columns of text, "
                             f"found {text_lengths.tolist()}")
        padding = torch.arange(text.size(1), device=text.device) >= text_lengths.unsqueeze(1)
        misplaced = (text == IGNORE_ID) != padding
        if bool(misplaced.any()):
            row = int(misplaced.any(1).nonzero()[0, 0])
            raise ValueError(f"text: utterance {row} of the batch: expected its {int(text_lengths[row])} tokens "
                             f"(text_lengths) followed by -1 padding only, found {text[row].tolist()}")
        vocab = self.config.vocab_size
        real = text[text != IGNORE_ID]
        if real.numel() and (int(real.min()) < 1 or int(real.max()) > vocab - 2):
            raise ValueError(
                f"text: expected token ids in [1, {vocab - 2}] (0 is <blank>, {vocab - 1} is "
                f"<sos/eos>) or -1 padding, found ids in [{int(real.min())}, {int(real.max())}]"
            )


def build_asr_model(config: AsrConfig, token_list: list[str] | None = None) -> AsrModel:
    """Build the ESPnet components named by `config` and wrap them in an `AsrModel`.

    Args:
        config: the model configuration.
        token_list: V symbols with <blank> first and <sos/eos> last; placeholders when None.
    """
    from kd.core.quiet import espnet_imports

    espnet_imports()
    from espnet2.asr.ctc import CTC
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
    from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
    from espnet2.asr.espnet_model import ESPnetASRModel
    from espnet2.asr.frontend.default import DefaultFrontend
    from espnet2.layers.utterance_mvn import UtteranceMVN
    from espnet.nets.pytorch_backend.transformer.embedding import ScaledPositionalEncoding

    if token_list is None:
        token_list = default_token_list(config.vocab_size)
    token_list = list(token_list)  # ESPnetASRModel calls token_list.copy()
    if len(token_list) != config.vocab_size:
        raise ValueError(
            f"token_list: expected {config.vocab_size} symbols (config.vocab_size), "
            f"found {len(token_list)}"
        )
    if token_list[0] != BLANK_SYMBOL or token_list[-1] != SOS_EOS_SYMBOL:
        raise ValueError(
            f"token_list: expected {BLANK_SYMBOL!r} first and {SOS_EOS_SYMBOL!r} last, "
            f"found {token_list[0]!r} and {token_list[-1]!r}"
        )

    frontend = DefaultFrontend(
        fs=config.sample_rate,
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        frontend_conf=None,  # no WPE / beamformer stage
    )
    normalize = None
    if config.feature_norm is not FeatureNorm.NONE:
        normalize = UtteranceMVN(
            norm_means=True, norm_vars=config.feature_norm is FeatureNorm.UTTERANCE_MEAN_VAR
        )
    encoder = TransformerEncoder(
        input_size=config.n_mels,
        output_size=config.d_model,
        attention_heads=config.attention_heads,
        linear_units=config.ffn_units,
        num_blocks=config.encoder_layers,
        dropout_rate=config.dropout_rate,
        positional_dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
        input_layer=config.input_layer.value,
        normalize_before=config.encoder_normalize_before,
        use_flash_attn=False,  # flash attention would also drop the attention dropout
    )
    if config.pos_enc is PositionalEncoding.SCALED_ABS:
        # ESPnet's encoder gives its convolutional subsampling the default encoding whatever it is told:
        # the subsampling's last module is the encoding, replaced here
        encoder.embed.out[-1] = ScaledPositionalEncoding(config.d_model, config.dropout_rate)
    decoder = TransformerDecoder(
        vocab_size=config.vocab_size,
        encoder_output_size=config.d_model,
        attention_heads=config.attention_heads,
        linear_units=config.ffn_units,
        num_blocks=config.decoder_layers,
        dropout_rate=config.dropout_rate,
        positional_dropout_rate=config.dropout_rate,
        self_attention_dropout_rate=config.attention_dropout_rate,
        src_attention_dropout_rate=config.attention_dropout_rate,
        use_flash_attn=False,
    )
    ctc = CTC(odim=config.vocab_size, encoder_output_size=config.d_model)
    espnet_model = ESPnetASRModel(
        vocab_size=config.vocab_size,
        token_list=token_list,
        frontend=frontend,
        specaug=_specaug(config),
        normalize=normalize,
        preencoder=None,
        encoder=encoder,
        postencoder=None,
        decoder=decoder,
        ctc=ctc,
        joint_network=None,
        ctc_weight=config.ctc_weight,
        ignore_id=IGNORE_ID,
        lsm_weight=config.lsm_weight,
        length_normalized_loss=config.length_normalized_loss,
        report_cer=False,
        report_wer=False,
    )
    _tie_layers(encoder.encoders, config.encoder_share_groups)
    _tie_layers(decoder.decoders, config.decoder_share_groups)
    head = None
    if config.uncertainty_head:
        head = UncertaintyHead(config.d_model, config.vocab_size)
    return AsrModel(config, espnet_model, head)


def _specaug(config: AsrConfig) -> nn.Module | None:
    """ESPnet's SpecAug for the config's SpecAugment fields, or None when they are all 0.

    ESPnet applies it in `encode` to the normalised features, and only in training mode.
    """
    if not config.uses_specaug:
        return None
    from espnet2.asr.specaug.specaug import SpecAug

    return SpecAug(
        apply_time_warp=config.specaug_time_warp > 0,
        time_warp_window=max(config.specaug_time_warp, 1),
        apply_freq_mask=config.specaug_freq_masks > 0,
        freq_mask_width_range=(0, max(config.specaug_freq_width, 1)),
        num_freq_mask=max(config.specaug_freq_masks, 1),
        apply_time_mask=config.specaug_time_masks > 0,
        time_mask_width_ratio_range=(0.0, config.specaug_time_ratio or 0.05),
        num_time_mask=max(config.specaug_time_masks, 1),
    )


def _tie_layers(layers: nn.Module, groups: tuple[tuple[int, ...], ...]) -> None:
    """Make every layer of each group use its first layer's parameters (one set of weights)."""
    from kd.compression.reuse import tie_parameters

    for group in groups:
        for follower in group[1:]:
            tie_parameters(layers[group[0]], layers[follower], leader_index=group[0], follower_index=follower)
