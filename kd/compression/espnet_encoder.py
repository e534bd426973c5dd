"""Apply compression plans to ESPnet Transformer encoders.

Supported: ``espnet2.asr.encoder.transformer_encoder.TransformerEncoder`` itself, an
``ESPnetASRModel`` whose ``encoder`` is one, and this project's ``kd.models.asr.AsrModel``
(its ``config.encoder_layers`` is updated). The layers are ``encoder.encoders`` (a
``MultiSequential`` of ``EncoderLayer``); their self-attention is ``layer.self_attn``.

- Pruning keeps the planned blocks in a new ``MultiSequential`` with the same LayerDrop rate and
  renumbers ``interctc_layer_idx`` (an intermediate-CTC tap on a dropped layer is an error).
- Attention reuse: ESPnet's ``MultiHeadedAttention`` keeps its softmax output (before dropout,
  padded keys zeroed) in ``self.attn`` after each forward on its default path. A leader keeps its
  module, switched to that path (flash attention and SDPA off), and a forward hook publishes
  ``self.attn``. A follower's module is replaced by one with only ``linear_v`` and ``linear_out``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Sequence

import torch
from torch import nn

from kd.compression.reuse import AttentionStore, attach_store, check_probs, replace_child

logger = logging.getLogger(__name__)


class _PublishAttention:
    """Forward hook on a leader's ``MultiHeadedAttention``: put ``module.attn`` in the store."""

    def __init__(self, store: AttentionStore, index: int) -> None:
        self.store, self.index = store, index

    def __call__(self, module: nn.Module, args, output) -> None:
        if module.attn is None:
            raise RuntimeError(f"student layer {self.index}: the attention module kept no probabilities "
                               "(self.attn is None); it must run ESPnet's default attention path")
        self.store.put(self.index, module.attn)  # [B, H, T1, T2]


class EspnetFollowerAttention(nn.Module):
    """Takes the leader's probabilities; computes only ``linear_v`` and ``linear_out``.

    Keeps ESPnet's convention of leaving the probabilities used in ``self.attn``.
    """

    def __init__(self, source: nn.Module, store: AttentionStore, index: int, leader: int):
        super().__init__()
        self.h, self.d_k = source.h, source.d_k
        self.linear_v, self.linear_out, self.dropout = source.linear_v, source.linear_out, source.dropout
        self.store, self.index, self.leader = store, index, leader
        self.attn: torch.Tensor | None = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                expand_kv: bool = False) -> torch.Tensor:
        """``value``: ``[B, T2, D]``; ``query``, ``key`` and ``mask`` are unused (the leader's
        probabilities ``[B, H, T1, T2]`` already hold them). Returns ``[B, T1, D]``."""
        batch = value.size(0)
        v = self.linear_v(value).view(batch, -1, self.h, self.d_k).transpose(1, 2)  # [B, H, T2, d_k]
        probs = self.store.get(self.leader, self.index)
        check_probs(probs, v, self.index, self.leader)
        self.attn = probs
        x = torch.matmul(self.dropout(probs), v)  # [B, H, T1, d_k]
        return self.linear_out(x.transpose(1, 2).contiguous().view(batch, -1, self.h * self.d_k))


class EspnetEncoderAdapter:
    """Layer access, pruning and attention reuse for a TransformerEncoder at ``encoder_path``."""

    def __init__(self, encoder_path: str = ""):
        self.encoder_path = encoder_path  # submodule path of the encoder ("" = the model is the encoder)

    def encoder(self, model: nn.Module) -> nn.Module:
        from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

        encoder = model.get_submodule(self.encoder_path)
        if not isinstance(encoder, TransformerEncoder):
            raise TypeError(f"{type(model).__name__}.{self.encoder_path}: expected an ESPnet TransformerEncoder, "
                            f"found {type(encoder).__name__} (only Transformer encoders are supported)")
        return encoder

    def layers(self, model: nn.Module) -> Sequence[nn.Module]:
        return self.encoder(model).encoders

    def copy_pruned(self, model: nn.Module, keep: Sequence[int]) -> nn.Module:
        teacher_layers = self.layers(model)
        kept = set(keep)
        # dropped layers are never copied: the deepcopy memo maps them to cheap placeholders
        memo = {id(layer): nn.Identity() for i, layer in enumerate(teacher_layers) if i not in kept}
        student = copy.deepcopy(model, memo)
        encoder = self.encoder(student)
        old = encoder.encoders
        # MultiSequential applies LayerDrop when in training mode, so the mode must carry over
        encoder.encoders = type(old)(*[old[i] for i in keep], layer_drop_rate=old.layer_drop_rate).train(old.training)
        if encoder.interctc_layer_idx:
            # interctc index j taps the output of layer j - 1 (counted from 1)
            position = {t: s for s, t in enumerate(keep)}
            dropped = [j for j in encoder.interctc_layer_idx if j - 1 not in position]
            if dropped:
                raise ValueError(f"interctc_layer_idx {list(encoder.interctc_layer_idx)} taps teacher layer(s) "
                                 f"{dropped} (counted from 1), which the plan drops")
            encoder.interctc_layer_idx = [position[j - 1] + 1 for j in encoder.interctc_layer_idx]
        return student

    def install_reuse(self, model: nn.Module, groups: Sequence[Sequence[int]]) -> None:
        from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention

        encoder = self.encoder(model)
        if encoder.encoders.layer_drop_rate > 0:
            logger.warning("attention reuse: setting the encoder's layer_drop_rate from %s to 0 (a dropped leader "
                           "would leave its followers without attention probabilities)",
                           encoder.encoders.layer_drop_rate)
            encoder.encoders.layer_drop_rate = 0.0
        store = attach_store(encoder)
        layers = encoder.encoders
        for group in groups:
            for index in group:
                if type(layers[index].self_attn) is not MultiHeadedAttention:
                    raise TypeError(f"student layer {index}: expected ESPnet's MultiHeadedAttention to set up "
                                    f"attention reuse, found {type(layers[index].self_attn).__name__}")
            leader = layers[group[0]]
            leader.stochastic_depth_rate = 0.0  # a skipped leader would publish nothing
            attention = leader.self_attn
            attention.use_flash_attn = False  # both other paths leave self.attn unset
            attention.use_sdpa = False
            attention.register_forward_hook(_PublishAttention(store, group[0]))
            for follower in group[1:]:
                replace_child(layers[follower], "self_attn",
                              EspnetFollowerAttention(layers[follower].self_attn, store, follower, group[0]))


class AsrModelAdapter(EspnetEncoderAdapter):
    """``kd.models.asr.AsrModel``: the ESPnet model is ``.espnet``; the depth also lives in its config."""

    def __init__(self) -> None:
        super().__init__("espnet.encoder")

    def copy_pruned(self, model: nn.Module, keep: Sequence[int]) -> nn.Module:
        student = super().copy_pruned(model, keep)
        student.config = dataclasses.replace(student.config, encoder_layers=len(keep))
        return student


ADAPTERS = {"encoder": EspnetEncoderAdapter(""), "espnet_model": EspnetEncoderAdapter("encoder"),
            "asr_model": AsrModelAdapter()}
