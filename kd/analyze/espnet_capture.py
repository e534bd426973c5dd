"""Layer-wise capture adapters for the toolkit's own models (see ``analysis.capture``).

:class:`EspnetEncoderCapture` makes an ESPnet hybrid CTC/attention model (``kd.models.asr``)
satisfy ``analysis.capture.LayerwiseModel``: layer 0 is the subsampled input embedding
(conv2d subsampling + positional encoding), layer ``l`` the output of encoder block ``l``
(before the final layer norm), both from :meth:`kd.models.asr.AsrModel.encode_layers`; attention
maps are each block's self-attention probabilities.
"""

from __future__ import annotations

import torch

from analysis.capture import LayerOutputs

# frame hop of the toolkit's ESPnet frontend (10 ms) times the subsampling factor
_SUBSAMPLING = {"conv2d": 4, "conv2d6": 6, "conv2d8": 8}


class EspnetEncoderCapture:
    """Per-layer activations of an ``AsrModel``'s ESPnet Transformer encoder.

    ESPnet's subsampling and utterance normalisation see padding, so utterances are run
    one at a time (``batch_consistent = False``).
    """

    batch_consistent = False

    def __init__(self, asr_model: torch.nn.Module, *, hop_seconds: float = 0.01):
        self.model = asr_model.eval()
        encoder = asr_model.espnet.encoder
        self.encoder = encoder
        self.num_layers = len(encoder.encoders) + 1
        layer_type = getattr(asr_model.config, "input_layer", "conv2d")
        factor = _SUBSAMPLING.get(getattr(layer_type, "value", str(layer_type)), 4)
        self.frame_rate = 1.0 / (hop_seconds * factor)

    @torch.no_grad()
    def extract(self, speech: torch.Tensor, lengths: torch.Tensor, *, attentions: bool = False) -> LayerOutputs:
        hidden, frames = self.model.encode_layers(speech, lengths)
        att = [layer.self_attn.attn.detach() for layer in self.encoder.encoders] if attentions else None
        return LayerOutputs(hidden=hidden, lengths=frames, attentions=att)
