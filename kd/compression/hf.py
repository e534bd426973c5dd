"""Apply compression plans to Hugging Face wav2vec 2.0, HuBERT and WavLM models.

Supported: ``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ``Wav2Vec2ForPreTraining``, ``HubertModel``,
``HubertForCTC``, ``WavLMModel``, ``WavLMForCTC``, with the post-norm encoder and the pre-norm
("stable layer norm") encoder alike. The Transformer layers are ``model.base_model.encoder.layers``.

- Pruning keeps the planned layers, re-indexed, and sets ``config.num_hidden_layers``, so the
  student saves with ``save_pretrained`` and loads with plain ``from_pretrained``.
- WavLM keeps its relative-position embedding table in the first layer only (the others receive
  the ungated bias from it). When teacher layer 0 is dropped, the student's first layer gets a copy
  of teacher layer 0's table, so every kept layer sees exactly the bias it saw in the teacher.
- Attention reuse swaps the ``attention`` submodule of leaders and followers. wav2vec 2.0 and
  HuBERT leaders follow ``config._attn_implementation`` as transformers does: with ``"sdpa"``
  (the default) a leader runs the fused kernel and publishes its ``Q``, ``K`` and mask, and its
  followers run the fused kernel on them with their own values (no ``[B, H, T, T]`` tensor in
  memory); with ``"eager"``, or when ``output_attentions=True`` asks for the maps, a leader
  publishes its probabilities and its followers multiply them with their values
  (:mod:`kd.compression.reuse`). WavLM leaders are always eager (transformers' WavLM attention
  is too). With reuse, the ``attentions`` returned for ``output_attentions=True`` are per head for
  every layer (Hugging Face's WavLM returns head averages) and a follower reports its leader's map.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from kd.compression.reuse import AttentionStore, LeaderScores, attach_store, attend, check_probs, replace_child

logger = logging.getLogger(__name__)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[B, T, H * d]`` -> ``[B, H, T, d]``."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d]`` -> ``[B, T, H * d]``."""
    x = x.transpose(1, 2).contiguous()
    return x.reshape(*x.shape[:2], -1).contiguous()


def _check_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The encoder's prepared mask, which must be the eager or sdpa form ``[B, 1, T, T]`` (or None)."""
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 4):
        raise TypeError(f"attention reuse supports the 'eager' and 'sdpa' attention implementations, whose masks "
                        f"are [batch, 1, frames, frames] tensors; found {type(mask).__name__} "
                        f"{tuple(getattr(mask, 'shape', ()))}. Load the model with attn_implementation='eager'.")
    return mask


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The encoder's prepared mask as an additive bias ``[B, 1, T, T]`` (eager) from eager or sdpa form."""
    if _check_mask(mask) is None:
        return None
    if mask.dtype == torch.bool:  # sdpa form: True = attend
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


class LeaderAttention(nn.Module):
    """wav2vec 2.0 / HuBERT self-attention that also publishes its attention for its followers.

    Same parameters (names and tensors) as the attention it replaces. Eager (``config`` says
    ``"eager"``, or the maps are asked for): the same order of operations as Hugging Face's eager
    path, so outputs match it exactly, and the probabilities are published. Otherwise the fused
    kernel, as Hugging Face's ``"sdpa"`` path, and :class:`~kd.compression.reuse.LeaderScores`
    are published.
    """

    def __init__(self, source: nn.Module, store: AttentionStore, index: int):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (source.q_proj, source.k_proj, source.v_proj,
                                                                 source.out_proj)
        self.head_dim, self.scaling, self.dropout = source.head_dim, source.scaling, source.dropout
        self.config = getattr(source, "config", None)  # read at each forward, as transformers does
        self.store, self.index = store, index

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = False, **kwargs):
        """``hidden_states``: ``[B, T, D]``; returns ``([B, T, D], probs [B, H, T, T] or None)``."""
        q = _split_heads(self.q_proj(hidden_states), self.head_dim)  # [B, H, T, d]
        k = _split_heads(self.k_proj(hidden_states), self.head_dim)
        v = _split_heads(self.v_proj(hidden_states), self.head_dim)
        if not output_attentions and getattr(self.config, "_attn_implementation", "eager") != "eager":
            scores = LeaderScores(q, k, _check_mask(attention_mask), self.scaling)
            self.store.put(self.index, scores)
            return self.out_proj(_merge_heads(attend(scores, v, dropout=self.dropout, training=self.training))), None
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # [B, H, T, T]
        mask = _additive_mask(attention_mask, scores.dtype)
        if mask is not None:
            scores = scores + mask
        probs = F.softmax(scores, dim=-1)
        self.store.put(self.index, probs)
        out = torch.matmul(F.dropout(probs, p=self.dropout, training=self.training), v)
        return self.out_proj(_merge_heads(out)), probs


class FollowerAttention(nn.Module):
    """Self-attention that takes its leader's attention: only value and output projections."""

    def __init__(self, source: nn.Module, store: AttentionStore, index: int, leader: int):
        super().__init__()
        self.v_proj, self.out_proj = source.v_proj, source.out_proj
        self.head_dim, self.dropout = source.head_dim, source.dropout
        self.store, self.index, self.leader = store, index, leader

    def attend(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = _split_heads(self.v_proj(hidden_states), self.head_dim)  # [B, H, T, d]
        probs = self.store.get(self.leader, self.index)  # [B, H, T, T] or LeaderScores
        check_probs(probs, v, self.index, self.leader)
        out = attend(probs, v, dropout=self.dropout, training=self.training)
        return self.out_proj(_merge_heads(out)), None if isinstance(probs, LeaderScores) else probs

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """``hidden_states``: ``[B, T, D]``; the mask is already in the leader's probabilities."""
        return self.attend(hidden_states)


class WavLMLeaderAttention(WavLMAttention):
    """WavLM attention (gated relative position bias) that publishes per-head probabilities.

    Position-bias computation and gating are the parent's; only the attention product is done
    here, per head, where the parent's ``F.multi_head_attention_forward`` averages the maps.
    """

    def __init__(self, source: WavLMAttention, store: AttentionStore, index: int):
        nn.Module.__init__(self)  # take the source's submodules instead of building new ones
        for name in ("embed_dim", "num_heads", "dropout", "head_dim", "scaling", "num_buckets", "max_distance"):
            setattr(self, name, getattr(source, name))
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (source.q_proj, source.k_proj, source.v_proj,
                                                                 source.out_proj)
        self.gru_rel_pos_const, self.gru_rel_pos_linear = source.gru_rel_pos_const, source.gru_rel_pos_linear
        if hasattr(source, "rel_attn_embed"):  # first layer only
            self.rel_attn_embed = source.rel_attn_embed
        self.store, self.index = store, index

    def torch_multi_head_self_attention(self, hidden_states, attention_mask, gated_position_bias):
        """``hidden_states`` ``[B, T, D]``, ``attention_mask`` ``[B, T]`` (1 = frame),
        ``gated_position_bias`` ``[B * H, T, T]``; returns ``([B, T, D], probs [B, H, T, T])``."""
        bsz, frames, _ = hidden_states.shape
        q = _split_heads(self.q_proj(hidden_states), self.head_dim) * self.scaling  # [B, H, T, d]
        k = _split_heads(self.k_proj(hidden_states), self.head_dim)
        v = _split_heads(self.v_proj(hidden_states), self.head_dim)
        scores = gated_position_bias.view(bsz, self.num_heads, frames, frames) + torch.matmul(q, k.transpose(2, 3))
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
        probs = F.softmax(scores, dim=-1)
        self.store.put(self.index, probs)
        out = torch.matmul(F.dropout(probs, p=self.dropout, training=self.training), v)
        return self.out_proj(_merge_heads(out)), probs


class WavLMFollowerAttention(FollowerAttention):
    """WavLM follower: no query/key projections and no position-bias gating; passes the bias on."""

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, position_bias=None, index: int = 0, **kwargs):
        if position_bias is None:
            raise RuntimeError(f"student layer {self.index}: expected the relative position bias from the first "
                               "layer, found None")
        out, probs = self.attend(hidden_states)
        return out, probs, position_bias


class HFAdapter:
    """Layer access, pruning and attention reuse for one Hugging Face family."""

    def __init__(self, attention_cls: type[nn.Module], relative_position_bias: bool):
        self.attention_cls = attention_cls
        self.relative_position_bias = relative_position_bias

    @staticmethod
    def _encoder(model: PreTrainedModel) -> nn.Module:
        return model.base_model.encoder

    def layers(self, model: PreTrainedModel) -> Sequence[nn.Module]:
        return self._encoder(model).layers

    def copy_pruned(self, model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
        teacher_layers = self.layers(model)
        # dropped layers are never copied: the deepcopy memo maps them to cheap placeholders
        kept = set(keep)
        memo = {id(layer): nn.Identity() for i, layer in enumerate(teacher_layers) if i not in kept}
        student = copy.deepcopy(model, memo)
        encoder = self._encoder(student)
        encoder.layers = nn.ModuleList([encoder.layers[i] for i in keep]).train(encoder.layers.training)
        if self.relative_position_bias and keep[0] != 0:
            encoder.layers[0].attention.rel_attn_embed = copy.deepcopy(teacher_layers[0].attention.rel_attn_embed)
        for config in {id(c): c for c in (student.config, student.base_model.config)}.values():
            config.num_hidden_layers = len(keep)
        return student

    def install_reuse(self, model: PreTrainedModel, groups: Sequence[Sequence[int]]) -> None:
        _install_output_capture(model)
        if model.config.layerdrop > 0:
            logger.warning("attention reuse: setting config.layerdrop from %s to 0 (a dropped leader would leave "
                           "its followers without attention probabilities)", model.config.layerdrop)
            model.config.layerdrop = 0.0
        encoder = self._encoder(model)
        store = attach_store(encoder)
        leader_cls = WavLMLeaderAttention if self.relative_position_bias else LeaderAttention
        follower_cls = WavLMFollowerAttention if self.relative_position_bias else FollowerAttention
        for group in groups:
            leader = group[0]
            replace_child(encoder.layers[leader], "attention",
                          leader_cls(self._source(encoder, leader), store, leader))
            for follower in group[1:]:
                replace_child(encoder.layers[follower], "attention",
                              follower_cls(self._source(encoder, follower), store, follower, leader))

    def _source(self, encoder: nn.Module, index: int) -> nn.Module:
        attention = encoder.layers[index].attention
        if type(attention) is not self.attention_cls:
            raise TypeError(f"student layer {index}: expected a {self.attention_cls.__name__} to set up attention "
                            f"reuse, found {type(attention).__name__} (is reuse already applied?)")
        return attention


def _install_output_capture(model: PreTrainedModel) -> None:
    """Install Hugging Face's output-recording hooks now, so the swapped modules inherit them.

    Best effort: the function is internal to transformers; without it ``output_attentions``
    misses the swapped layers, and nothing else changes.
    """
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # pragma: no cover - depends on the transformers version
        logger.warning("attention reuse: cannot pre-install transformers' output hooks; "
                       "output_attentions will miss leader and follower layers")
        return
    maybe_install_capturing_hooks(model)


def _adapters() -> dict[str, HFAdapter]:
    from transformers.models.hubert.modeling_hubert import HubertAttention
    from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Attention

    return {"wav2vec2": HFAdapter(Wav2Vec2Attention, False), "hubert": HFAdapter(HubertAttention, False),
            "wavlm": HFAdapter(WavLMAttention, True)}


ADAPTERS = _adapters()
