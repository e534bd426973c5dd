"""Attention redundancy between layers and attention diagonality.

Redundancy follows Audio ALBERT (Chi et al., 2021): the Jensen-Shannon divergence (JSD)
between the attention distributions of two layers, per query row over unpadded keys,
averaged over the query rows of an utterance and then over utterances. Logarithms are base
2, so every value lies in [0, 1] bits (0: identical rows, 1: rows with disjoint support).

Diagonality follows the locality analysis of Shim et al. (2022): the attention mass that a
query puts on keys within ``band`` frames of itself, averaged the same way.

Padding convention. Attention arrives as ``[batch, heads, time, time]`` with ``lengths``
``[batch]``; only the first ``lengths[b]`` query rows and keys of utterance ``b`` count.
By default nothing is renormalised: the model is expected to have masked the padded keys,
and every unpadded row must already sum to 1 over the unpadded keys (within ``atol``), which
is the same as checking that the mass on padded keys is ~0; a ``ValueError`` names the
utterance otherwise. Models that do not mask padded keys (e.g. wav2vec 2.0 checkpoints that
take no attention mask) can pass ``renormalize=True`` to rescale each unpadded row over the
unpadded keys instead.

Head conventions. ``per_head``: head h of layer a against head h of layer b (index-aligned,
which is what reusing a leader layer's attention substitutes). ``head_averaged``: the mean
over heads of the per-head JSD. ``head_mean_attention``: the JSD between the head-averaged
attention distributions of the two layers (never larger than ``head_averaged``, by the
convexity of the JSD).

Inputs. Attention maps may be torch tensors or NumPy arrays; like the metrics of
``analysis.similarity``, a NumPy array is converted to a float64 tensor (so it is computed in
float64 whatever its dtype), and a tensor keeps its dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

_LN2 = math.log(2.0)


def _as_attention(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """``x`` as a tensor: a NumPy array becomes a float64 CPU tensor, a tensor is returned as is."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor or numpy.ndarray, found {type(x).__name__}")
    return x


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 inputs stay float64; everything else is computed in float32 (the per-element
    # JSD terms below are non-negative, so float32 sums lose no precision to cancellation)
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _default_atol(dtype: torch.dtype) -> float:
    # a row rounded entry by entry to `dtype` sums to 1 within eps / 2
    return max(1e-4, 2.0 * torch.finfo(dtype).eps)


def _jsd_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD in bits of each row of ``p`` and ``q`` (``[..., keys]`` each) -> ``[...]``.

    Uses JSD = 1/2 sum_j [p_j log2(2 p_j / s_j) + q_j log2(2 q_j / s_j)], s = p + q; each
    element's term is >= 0 (log-sum inequality), and 0 log 0 = 0 exactly (``xlogy``).
    """
    s = (p + q).clamp_min(torch.finfo(p.dtype).tiny)
    terms = torch.xlogy(p, 2.0 * p / s) + torch.xlogy(q, 2.0 * q / s)
    return (0.5 / _LN2 * terms.sum(dim=-1)).clamp(0.0, 1.0)


def _check_values(x: torch.Tensor, name: str) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"Expected {name} to be a floating-point tensor, found dtype {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError(f"Expected {name} to hold probabilities, found NaN values")
    if (x < 0).any():
        raise ValueError(
            f"Expected {name} to hold probabilities, found negative values (min {x.min().item():.3g})"
        )


def _check_rows_sum_to_one(row_sums: torch.Tensor, atol: float, where: str) -> None:
    deviation = (row_sums - 1.0).abs().max().item() if row_sums.numel() else 0.0
    if deviation > atol:
        raise ValueError(
            f"Expected attention rows of {where} to sum to 1 within {atol:g}, found a row "
            f"off by {deviation:.3g} (rows must be softmax outputs over unpadded keys; "
            "pass renormalize=True if the model leaves mass on padded keys)"
        )


def attention_jsd(p: torch.Tensor | np.ndarray, q: torch.Tensor | np.ndarray, *, atol: float | None = None) -> float:
    """Mean Jensen-Shannon divergence in bits between two row-stochastic attention maps.

    Args:
        p: ``[..., queries, keys]`` attention probabilities, each row summing to 1.
        q: same shape as ``p``.
        atol: tolerance on the row sums; by default ``max(1e-4, 2 eps(dtype))``.

    Returns:
        The JSD of each query row (log base 2, in [0, 1]), averaged over rows and over all
        leading dimensions.
    """
    p, q = _as_attention(p, "p"), _as_attention(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"Expected p and q of the same shape, found {tuple(p.shape)} and {tuple(q.shape)}")
    if p.dim() < 2 or p.shape[-1] == 0 or p.shape[-2] == 0:
        raise ValueError(f"Expected p and q of shape [..., queries, keys], found {tuple(p.shape)}")
    for name, x in (("p", p), ("q", q)):
        _check_values(x, name)
        tol = _default_atol(x.dtype) if atol is None else atol
        _check_rows_sum_to_one(x.sum(dim=-1, dtype=torch.float64), tol, name)
    dtype = torch.promote_types(_compute_dtype(p), _compute_dtype(q))
    q = q.to(device=p.device)
    return _jsd_rows(p.to(dtype), q.to(dtype)).to(torch.float64).mean().item()


def _check_batch(attn: torch.Tensor, name: str) -> None:
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"Expected {name} of shape [batch, heads, time, time], found {tuple(attn.shape)}")


def _resolve_lengths(lengths: torch.Tensor | None, batch: int, time: int) -> list[int]:
    if lengths is None:
        return [time] * batch
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"Expected lengths of shape [{batch}], found {tuple(lengths.shape)}")
    values = [int(v) for v in lengths.tolist()]
    for b, n in enumerate(values):
        if not 1 <= n <= time:
            raise ValueError(f"Expected lengths[{b}] in [1, {time}], found {n}")
    return values


def _utterance_block(
    attn: torch.Tensor, b: int, n: int, *, renormalize: bool, atol: float | None, where: str
) -> torch.Tensor:
    """Unpadded ``[heads, n, n]`` block of utterance ``b``, validated, in the compute dtype."""
    block = attn[b, :, :n, :n].to(_compute_dtype(attn))
    _check_values(block, where)
    row_sums = block.sum(dim=-1, dtype=torch.float64)
    if renormalize:
        if (row_sums <= 0).any():
            raise ValueError(f"Expected every unpadded row of {where} to put mass on unpadded keys, found a zero row")
        return block / row_sums.unsqueeze(-1).to(block.dtype)
    tol = _default_atol(attn.dtype) if atol is None else atol
    _check_rows_sum_to_one(row_sums, tol, where)
    return block


def _band_mass(block: torch.Tensor, band: int) -> torch.Tensor:
    """Mean over query rows of the mass within ``band`` of the diagonal: ``[h, n, n] -> [h]``."""
    n = block.shape[-1]
    total = torch.zeros(block.shape[:-2], dtype=torch.float64, device=block.device)
    for offset in range(-min(band, n - 1), min(band, n - 1) + 1):
        total += block.diagonal(offset, dim1=-2, dim2=-1).sum(dim=-1, dtype=torch.float64)
    return total / n


def utterance_attention_jsd(
    p: torch.Tensor | np.ndarray,
    q: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray | None = None,
    *,
    renormalize: bool = False,
    atol: float | None = None,
) -> torch.Tensor:
    """Per-utterance, per-head JSD between two layers' attention maps over unpadded frames.

    Args:
        p: ``[batch, heads, time, time]`` attention probabilities of one layer.
        q: same shape, another layer (head h is compared with head h).
        lengths: ``[batch]`` unpadded lengths in frames; ``None`` means no padding.
        renormalize: rescale unpadded rows over unpadded keys instead of checking that the
            mass on padded keys is ~0.
        atol: tolerance on row sums (see ``attention_jsd``).

    Returns:
        ``[batch, heads]`` float64: mean over the utterance's unpadded query rows of the JSD
        in bits.
    """
    p, q = _as_attention(p, "p"), _as_attention(q, "q")
    _check_batch(p, "p")
    if p.shape != q.shape:
        raise ValueError(f"Expected p and q of the same shape, found {tuple(p.shape)} and {tuple(q.shape)}")
    out = torch.empty(p.shape[:2], dtype=torch.float64, device=p.device)
    for b, n in enumerate(_resolve_lengths(lengths, p.shape[0], p.shape[-1])):
        bp = _utterance_block(p, b, n, renormalize=renormalize, atol=atol, where=f"p, utterance {b}")
        bq = _utterance_block(q, b, n, renormalize=renormalize, atol=atol, where=f"q, utterance {b}")
        out[b] = _jsd_rows(bp, bq.to(device=bp.device, dtype=bp.dtype)).to(torch.float64).mean(dim=-1)
    return out


def utterance_head_mean_attention_jsd(
    p: torch.Tensor | np.ndarray,
    q: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray | None = None,
    *,
    renormalize: bool = False,
    atol: float | None = None,
) -> torch.Tensor:
    """Per-utterance JSD between the head-averaged attention maps of two layers.

    Args: as ``utterance_attention_jsd``.

    Returns:
        ``[batch]`` float64: mean over unpadded query rows of JSD(mean_h p_h, mean_h q_h) in bits.
    """
    p, q = _as_attention(p, "p"), _as_attention(q, "q")
    _check_batch(p, "p")
    if p.shape != q.shape:
        raise ValueError(f"Expected p and q of the same shape, found {tuple(p.shape)} and {tuple(q.shape)}")
    out = torch.empty(p.shape[0], dtype=torch.float64, device=p.device)
    for b, n in enumerate(_resolve_lengths(lengths, p.shape[0], p.shape[-1])):
        bp = _utterance_block(p, b, n, renormalize=renormalize, atol=atol, where=f"p, utterance {b}").mean(dim=0)
        bq = _utterance_block(q, b, n, renormalize=renormalize, atol=atol, where=f"q, utterance {b}").mean(dim=0)
        out[b] = _jsd_rows(bp, bq.to(device=bp.device, dtype=bp.dtype)).to(torch.float64).mean()
    return out


def diagonality(
    attn: torch.Tensor | np.ndarray,
    lengths: torch.Tensor | np.ndarray | None = None,
    *,
    band: int = 2,
    renormalize: bool = False,
    atol: float | None = None,
) -> torch.Tensor:
    """Attention mass within ``band`` frames of the diagonal, per head.

    Args:
        attn: ``[batch, heads, time, time]`` attention probabilities of one layer.
        lengths: ``[batch]`` unpadded lengths in frames; ``None`` means no padding.
        band: half-width in frames; key j counts for query i when ``|i - j| <= band``.

    Returns:
        ``[heads]`` float64 in [0, 1]: mean over unpadded query rows, then over utterances.
        An identity map scores 1; a uniform map over n keys scores the fraction of (i, j)
        pairs within the band.
    """
    attn = _as_attention(attn, "attn")
    _check_batch(attn, "attn")
    if band < 0:
        raise ValueError(f"Expected band >= 0 frames, found {band}")
    sizes = _resolve_lengths(lengths, attn.shape[0], attn.shape[-1])
    total = torch.zeros(attn.shape[1], dtype=torch.float64, device=attn.device)
    for b, n in enumerate(sizes):
        block = _utterance_block(attn, b, n, renormalize=renormalize, atol=atol, where=f"attn, utterance {b}")
        total += _band_mass(block, band)
    return total / len(sizes)


@dataclass(frozen=True)
class AttentionRedundancyResult:
    """All-pairs attention redundancy; JSD in bits, symmetric, zero diagonal.

    ``per_head``: ``[layers, layers, heads]``; ``head_averaged``: ``[layers, layers]`` mean
    over heads of ``per_head``; ``head_mean_attention``: ``[layers, layers]`` JSD between
    head-averaged maps; ``diagonality``: ``[layers, heads]`` band mass; ``band`` in frames.
    """

    per_head: torch.Tensor
    head_averaged: torch.Tensor
    head_mean_attention: torch.Tensor
    diagonality: torch.Tensor
    band: int
    num_utterances: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_head": self.per_head.tolist(),
            "head_averaged": self.head_averaged.tolist(),
            "head_mean_attention": self.head_mean_attention.tolist(),
            "diagonality": self.diagonality.tolist(),
            "band": self.band,
            "num_utterances": self.num_utterances,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttentionRedundancyResult":
        def tensor(key: str) -> torch.Tensor:
            return torch.tensor(data[key], dtype=torch.float64)

        return cls(
            per_head=tensor("per_head"),
            head_averaged=tensor("head_averaged"),
            head_mean_attention=tensor("head_mean_attention"),
            diagonality=tensor("diagonality"),
            band=int(data["band"]),
            num_utterances=int(data["num_utterances"]),
        )


class AttentionRedundancy:
    """Streaming JSD between every pair of layers, plus per-layer diagonality.

    Memory holds only float64 sums of size ``layers^2 x heads``, whatever the number of
    utterances; each ``update`` processes one batch utterance by utterance.

    Example::

        acc = AttentionRedundancy(num_layers=12, num_heads=12)
        for batch in loader:
            out = model(batch.waveform, attention_mask=batch.mask, output_attentions=True)
            acc.update(out.attentions, batch.frame_lengths)
        result = acc.result()
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        *,
        band: int = 2,
        renormalize: bool = False,
        atol: float | None = None,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"Expected num_layers >= 1, found {num_layers}")
        if num_heads < 1:
            raise ValueError(f"Expected num_heads >= 1, found {num_heads}")
        if band < 0:
            raise ValueError(f"Expected band >= 0 frames, found {band}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.band = band
        self.renormalize = renormalize
        self.atol = atol
        self._per_head = torch.zeros(num_layers, num_layers, num_heads, dtype=torch.float64)
        self._head_mean = torch.zeros(num_layers, num_layers, dtype=torch.float64)
        self._diag = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self._count = 0

    def update(
        self, attentions: Sequence[torch.Tensor | np.ndarray], lengths: torch.Tensor | np.ndarray | None = None
    ) -> None:
        """Add one batch.

        Args:
            attentions: one ``[batch, heads, time, time]`` tensor per layer (e.g. the
                ``attentions`` tuple of a Hugging Face model run with eager attention).
            lengths: ``[batch]`` unpadded lengths in frames; ``None`` means no padding.
        """
        if len(attentions) != self.num_layers:
            raise ValueError(f"Expected attentions for {self.num_layers} layers, found {len(attentions)}")
        attentions = [_as_attention(attn, f"attentions[{layer}]") for layer, attn in enumerate(attentions)]
        expected = tuple(attentions[0].shape)
        for layer, attn in enumerate(attentions):
            _check_batch(attn, f"attentions[{layer}]")
            if tuple(attn.shape) != expected:
                raise ValueError(
                    f"Expected every layer's attention of shape {expected}, found {tuple(attn.shape)} at layer {layer}"
                )
        if expected[1] != self.num_heads:
            raise ValueError(f"Expected {self.num_heads} heads, found {expected[1]}")
        sizes = _resolve_lengths(lengths, expected[0], expected[-1])
        per_head = torch.zeros_like(self._per_head)
        head_mean = torch.zeros_like(self._head_mean)
        diag = torch.zeros_like(self._diag)
        for b, n in enumerate(sizes):
            blocks = [
                _utterance_block(
                    attn, b, n, renormalize=self.renormalize, atol=self.atol, where=f"layer {layer}, utterance {b}"
                )
                for layer, attn in enumerate(attentions)
            ]
            dtype = blocks[0].dtype
            blocks = [x.to(device=blocks[0].device, dtype=dtype) for x in blocks]
            means = [x.mean(dim=0) for x in blocks]  # [n, n] each
            for a in range(self.num_layers):
                diag[a] += _band_mass(blocks[a], self.band).cpu()
                for c in range(a + 1, self.num_layers):
                    per_head[a, c] += _jsd_rows(blocks[a], blocks[c]).to(torch.float64).mean(dim=-1).cpu()
                    head_mean[a, c] += _jsd_rows(means[a], means[c]).to(torch.float64).mean().cpu()
        self._per_head += per_head + per_head.transpose(0, 1)
        self._head_mean += head_mean + head_mean.T
        self._diag += diag
        self._count += len(sizes)

    def update_utterance(self, attentions: Sequence[torch.Tensor | np.ndarray]) -> None:
        """Add one unpadded utterance: one ``[heads, time, time]`` tensor (or array) per layer."""
        attentions = [_as_attention(attn, f"attentions[{layer}]") for layer, attn in enumerate(attentions)]
        self.update([attn.unsqueeze(0) for attn in attentions])

    def result(self) -> AttentionRedundancyResult:
        """Means over all utterances seen so far."""
        if self._count == 0:
            raise ValueError("Expected at least one update before result(), found none")
        per_head = self._per_head / self._count
        return AttentionRedundancyResult(
            per_head=per_head,
            head_averaged=per_head.mean(dim=-1),
            head_mean_attention=self._head_mean / self._count,
            diagonality=self._diag / self._count,
            band=self.band,
            num_utterances=self._count,
        )
