"""Attention reuse across layers: shared machinery for every model family.

A *leader* layer computes its attention as usual and puts what defines its attention map in an
:class:`AttentionStore`; each *follower* layer takes it from the store and computes only its own
value and output projections, skipping the query/key projections (the reuse of Audio ALBERT's
analysis, Chi et al. 2021, made into a real compute saving). What is stored takes one of two forms:

- the probabilities ``softmax(QK^T / sqrt(d) + mask)`` ``[B, H, T, T]`` (eager attention; needed
  when the maps are returned, ``output_attentions``): a follower multiplies them with its values
  and also skips ``QK^T`` and the softmax;
- :class:`LeaderScores`, the leader's scaled-dot-product inputs ``(Q, K, mask)`` (fused
  attention, ``F.scaled_dot_product_attention``): a follower calls the fused kernel with the
  leader's ``Q`` and ``K`` and its own ``V``. The map is recomputed inside the kernel, never
  written to memory; that costs the ``QK^T`` product again but is faster than materialising
  ``[B, H, T, T]`` probabilities once the batch or the sequence is long. Same function, same
  outputs up to floating-point rounding; attention dropout is drawn independently per layer in
  both forms.

The store belongs to one model. Forward hooks on the module that runs the layers empty it before
and after each forward, so a follower never sees probabilities left over from another input.
The hooks are small callable objects rather than closures so that ``copy.deepcopy`` of a
student gives the copy its own store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LeaderScores:
    """A leader's inputs to ``F.scaled_dot_product_attention``, which define its attention map."""

    query: torch.Tensor  # [B, H, T, d]
    key: torch.Tensor  # [B, H, T', d]
    mask: torch.Tensor | None  # bool (True = attend) or additive float, broadcastable to [B, H, T, T']
    scale: float  # the softmax temperature 1 / sqrt(d), applied inside the kernel


Attention = torch.Tensor | LeaderScores  # probabilities [B, H, T, T'] or LeaderScores


class AttentionStore:
    """Leader attention (probabilities or :class:`LeaderScores`) of the current forward, by student layer."""

    def __init__(self) -> None:
        self._probs: dict[int, Attention] = {}

    def put(self, leader: int, probs: Attention) -> None:
        """``probs``: ``[batch, heads, query_frames, key_frames]`` before attention dropout, or the
        leader's :class:`LeaderScores`."""
        self._probs[leader] = probs

    def get(self, leader: int, follower: int) -> Attention:
        probs = self._probs.get(leader)
        if probs is None:
            raise RuntimeError(
                f"student layer {follower} reuses the attention of layer {leader}, which did not run in this "
                "forward. Attention reuse needs the leader to run first in the same forward: LayerDrop must be "
                "off and gradient checkpointing (which re-runs layers one by one) is not supported.")
        return probs

    def clear(self) -> None:
        self._probs.clear()

    def __len__(self) -> int:
        return len(self._probs)


class _ClearStore:
    """Forward pre-hook and forward hook that empty an :class:`AttentionStore`."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, *args) -> None:
        self.store.clear()


def attach_store(runner: nn.Module) -> AttentionStore:
    """A new store, emptied before and after every forward of ``runner`` (the layer stack's owner)."""
    store = AttentionStore()
    runner.register_forward_pre_hook(_ClearStore(store))
    runner.register_forward_hook(_ClearStore(store))
    return store


def check_probs(probs: Attention, value: torch.Tensor, follower: int, leader: int) -> None:
    """Shapes must agree: ``probs`` ``[B, H, T, T']`` (or keys ``[B, H, T', d]``), ``value`` ``[B, H, T', d_head]``."""
    if isinstance(probs, LeaderScores):
        key = probs.key
        if key.shape[:2] != value.shape[:2] or key.shape[-2] != value.shape[-2]:
            raise RuntimeError(f"student layer {follower}: leader {leader} stored keys of shape {tuple(key.shape)}, "
                               f"which do not fit values of shape {tuple(value.shape)} "
                               "(expected [batch, heads, frames, d_head] for the same batch)")
        return
    if probs.shape[0] != value.shape[0] or probs.shape[1] != value.shape[1] or probs.shape[-1] != value.shape[-2]:
        raise RuntimeError(f"student layer {follower}: leader {leader} stored attention of shape "
                           f"{tuple(probs.shape)}, which does not fit values of shape {tuple(value.shape)} "
                           "(expected [batch, heads, frames, frames] for the same batch)")


def attend(probs: Attention, value: torch.Tensor, *, dropout: float, training: bool) -> torch.Tensor:
    """A follower's context ``[B, H, T, d]`` from its leader's attention and its own ``value``."""
    if isinstance(probs, LeaderScores):
        return F.scaled_dot_product_attention(probs.query, probs.key, value, attn_mask=probs.mask,
                                              dropout_p=dropout if training else 0.0, scale=probs.scale)
    return torch.matmul(F.dropout(probs, p=dropout, training=training), value)


def move_hooks(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the forward hooks registered on ``old`` (the module it replaces).

    Hooks that record outputs (Hugging Face's ``output_attentions`` capture, user probes) then
    keep working after the attention module of a layer is swapped.
    """
    for name in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        getattr(new, name).update(getattr(old, name))


def replace_child(parent: nn.Module, name: str, new: nn.Module) -> None:
    """Swap ``parent.<name>`` for ``new``, which takes over the old module's mode and hooks."""
    old = getattr(parent, name)
    new.train(old.training)
    move_hooks(old, new)
    setattr(parent, name, new)


def tie_parameters(leader: nn.Module, follower: nn.Module, *, leader_index: int, follower_index: int) -> int:
    """Make ``follower`` use ``leader``'s parameters wherever both have one of the same name.

    Parameters only the follower has (WavLM's relative-position table in the first layer) stay
    its own. Returns the number of parameter elements the follower no longer owns.
    """
    leader_params = dict(leader.named_parameters())
    saved = 0
    for name, param in list(follower.named_parameters()):
        shared = leader_params.get(name)
        if shared is None:
            continue
        if shared.shape != param.shape:
            raise ValueError(f"share group: student layer {follower_index} parameter {name} has shape "
                             f"{tuple(param.shape)} but leader {leader_index} has {tuple(shared.shape)}")
        owner_path, _, leaf = name.rpartition(".")
        owner = follower.get_submodule(owner_path) if owner_path else follower
        setattr(owner, leaf, shared)
        saved += param.numel()
    return saved


def self_attention_flops(batch: int, frames: int, dim: int, heads: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of one self-attention over ``frames`` frames, by part.

    A follower skips ``q_proj``, ``k_proj`` and ``scores`` (``QK^T``); ``follower_saving`` is their sum.
    Softmax, bias and masking are not counted.
    """
    d_head = dim // heads
    projection = 2 * batch * frames * dim * dim
    product = 2 * batch * heads * frames * frames * d_head
    return {"q_proj": projection, "k_proj": projection, "v_proj": projection, "out_proj": projection,
            "scores": product, "context": product, "follower_saving": 2 * projection + product}
