"""Joint CTC/attention beam search over a batch of utterances.

Every output step advances the K hypotheses of all B utterances together: one decoder call on
B * K prefixes (with the decoder's per-layer cache, reordered by the chosen beams) and one
vectorised CTC prefix-score update. The scores, pruning and stopping rules are those of
ESPnet's ``BatchBeamSearch`` as :func:`kd.evaluation.decode.build_beam_search` assembles it, so that the
two searches return the same hypotheses (see "Differences" below). The score of a hypothesis
y for encoder output x is (Watanabe et al. 2017)

    (1 - ctc_weight) * log p_att(y | x) + ctc_weight * log p_ctc(y... | x) + penalty * |y|

where p_ctc(y... | x) is the CTC prefix probability: the probability that the CTC output of
x starts with y, or, for a hypothesis ending in <eos>, the probability of y as the whole output.

One step, per running hypothesis h (prefix g, score s):
  1. full scores over the vocabulary, w_full = (1 - ctc_weight) * log p_att(c | g, x) + penalty;
  2. pre-beam: the int(1.5 * K) best tokens c by w_full (ESPnet's ``pre_beam_score_key="full"``);
     every token when that is not fewer than the vocabulary or when ctc_weight is 1 (ESPnet
     then runs no pre-beam). Only these candidates get a CTC prefix score, plus <eos> (scored by
     the full-sequence CTC probability) and the blank (log 0, it is never an output token);
     the other tokens get log 0 = -1e10, so that they are chosen only when nothing else is left;
  3. total: s + w_full + ctc_weight * (log p_ctc(g c...) - log p_ctc(g...));
  4. the K best (h, c) pairs of the utterance over all its running hypotheses become the new
     beam; pairs with c = <eos> end (kept once the prefix has at least ``minlen`` tokens) and
     leave the beam, which then holds fewer than K running hypotheses.
The search of an utterance stops when no running hypothesis is left, after ``maxlen`` steps
(the running hypotheses then end with an <eos> that adds no score) or, when maxlenratio is 0,
by ESPnet's end detection (Watanabe et al. 2017, eq. 50): the best ended hypotheses of each of
the last M = 3 lengths all score more than 10 below the best ended hypothesis. The result is
the ended hypothesis with the best score (or score / (|y| + 1) with ``normalize_length``).

CTC prefix probability (Watanabe et al. 2017, Algorithm 2), log domain. For a prefix g, r_t^n(g)
and r_t^b(g) are the probabilities of the first t + 1 frames emitting g with the last frame a
non-blank (n) or a blank (b). Appending c to g:

    phi_t = r_t^b(g)                     if c is the last token of g (a blank must separate them)
            r_t^n(g) + r_t^b(g)          otherwise
    r_t^n(gc) = (r_{t-1}^n(gc) + phi_{t-1}) * p_t(c)
    r_t^b(gc) = (r_{t-1}^n(gc) + r_{t-1}^b(gc)) * p_t(blank)
    p_ctc(gc... | x) = sum_t phi_{t-1} * p_t(c)                      (t from max(|g|, 1))
    p_ctc(g | x)     = r_{T-1}^n(g) + r_{T-1}^b(g)                    (the score of <eos>)

with r_0^n(c) = p_0(c) for the first token and r_t^b(<sos>) = prod_{u <= t} p_u(blank).

Differences from ESPnet's search. Scores agree up to float rounding: matrix products on B * K
rows instead of one utterance's rows, and padded frames (log 0 for tokens, 0 for the blank,
adding exactly nothing) may round differently, so a near tie between two hypotheses can break
the other way; ties between exactly equal scores may also be broken differently by ``topk``.
Such ties are the rule among hypotheses that CTC cannot emit (more tokens than the frames
allow, forced by a large minlenratio; or tokens outside the pre-beam when fewer than K
candidates are left): they score ctc_weight * -1e10, where float32 keeps no digit of the
attention score, so either search may pick any of them.
The decoder attends over the padded encoder output with a mask (ESPnet decodes one unpadded
utterance), which gives the same attention weights. No language model is fused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["BeamHypothesis", "batched_beam_search", "ctc_prefix_step"]

LOGZERO = -1e10  # log 0 of the CTC prefix scorer: finite, so that score differences stay finite
PRE_BEAM_RATIO = 1.5  # candidates scored by CTC per hypothesis: int(1.5 * beam_size)
END_DETECT_LENGTHS = 3  # M of the end detection
END_DETECT_MARGIN = -10.0  # D_end: a length has ended when its best is this far below the best


@dataclass(frozen=True)
class BeamHypothesis:
    """The best ended hypothesis of an utterance."""

    tokens: tuple[int, ...]  # output tokens, <sos> and the final <eos> excluded
    score: float  # accumulated weighted score (log domain)


@dataclass(frozen=True)
class _Limits:
    """Per-utterance length bounds, in output steps."""

    maxlen: int
    minlen: int


def _limits(frames: int, maxlenratio: float, minlenratio: float) -> _Limits:
    if maxlenratio == 0:
        maxlen = frames
    elif maxlenratio < 0:
        maxlen = -int(maxlenratio)
    else:
        maxlen = max(1, int(maxlenratio * frames))
    minlen = -int(minlenratio) if minlenratio < 0 else int(minlenratio * frames)
    return _Limits(maxlen, minlen)


def ctc_prefix_step(x: Tensor, r_prev: Tensor, last: Tensor, candidates: Tensor, prefix_len: int,
                    end_frames: Tensor, *, blank: int, eos: int) -> tuple[Tensor, Tensor]:
    """CTC prefix log-probabilities of every running prefix extended by each candidate token.

    Args:
        x: CTC log posteriors per hypothesis `[T, N, V]`; frames past an utterance's end hold
            LOGZERO for every token and 0 for the blank.
        r_prev: forward variables of the prefixes `[T, 2, N]` (index 0: log r^n, 1: log r^b).
        last: last token of each prefix `[N]` (<sos> for the empty prefix).
        candidates: tokens to score per prefix `[N, P]`.
        prefix_len: tokens in every prefix, <sos> excluded.
        end_frames: last valid frame of each hypothesis' utterance `[N]`.
        blank: the CTC blank id.
        eos: the <eos> id.

    Returns:
        log p_ctc of each extension `[N, V]` (LOGZERO for tokens outside the candidates, except
        <eos>: the full-sequence probability of the prefix), and the forward variables of the
        extensions by candidates `[T, 2, N, P]`.
    """
    frames, n_hyps, _ = x.shape
    n_cand = candidates.size(1)
    x_cand = torch.gather(x, 2, candidates.unsqueeze(0).expand(frames, n_hyps, n_cand))  # [T, N, P]
    x_blank = x[:, :, blank].unsqueeze(2).expand(frames, n_hyps, n_cand)  # [T, N, P]
    x_both = torch.stack((x_cand, x_blank), dim=1)  # [T, 2, N, P]

    r_sum = torch.logsumexp(r_prev, dim=1)  # [T, N]: prefix emitted by frame t, either ending
    repeat = (candidates == last.unsqueeze(1)).unsqueeze(0)  # [1, N, P]
    phi = torch.where(repeat, r_prev[:, 1].unsqueeze(2), r_sum.unsqueeze(2))  # [T, N, P]

    r = torch.full((frames, 2, n_hyps, n_cand), LOGZERO, dtype=x.dtype, device=x.device)
    if prefix_len == 0:
        r[0, 0] = x_cand[0]  # the first token may start at frame 0
    start = max(prefix_len, 1)  # a prefix of n tokens needs n frames before the new token's frame
    for t in range(start, frames):
        prev = r[t - 1]  # [2, N, P]
        # rows: (r^n_{t-1}, phi_{t-1}) -> r^n_t; (r^n_{t-1}, r^b_{t-1}) -> r^b_t
        pairs = torch.stack((prev[0], phi[t - 1], prev[0], prev[1])).view(2, 2, n_hyps, n_cand)
        r[t] = torch.logsumexp(pairs, dim=1) + x_both[t]

    # the new token is first emitted at frame t (t >= start), or already at frame start - 1
    first = phi[start - 1 : frames - 1] + x_cand[start:]  # [T - start, N, P]
    psi_cand = torch.logsumexp(torch.cat((first, r[min(start, frames) - 1, 0].unsqueeze(0))), dim=0)  # [N, P]
    psi = torch.full((n_hyps, x.size(2)), LOGZERO, dtype=x.dtype, device=x.device)  # [N, V]
    psi.scatter_(1, candidates, psi_cand)
    rows = torch.arange(n_hyps, device=x.device)
    psi[:, eos] = r_sum[end_frames, rows]
    psi[:, blank] = LOGZERO
    return psi, r


def _check_inputs(decoder: Any, ctc: Any, encoded: Sequence[Tensor], beam_size: int, ctc_weight: float,
                  vocab_size: int) -> None:
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected a positive int, found {beam_size!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size: expected an int >= 2, found {vocab_size!r}")
    if beam_size > vocab_size:  # the first step has one hypothesis, so vocab_size candidates
        raise ValueError(f"beam_size: expected at most vocab_size = {vocab_size}, found {beam_size}")
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight: expected a value in [0, 1], found {ctc_weight!r}")
    if ctc_weight > 0.0 and ctc is None:
        raise ValueError(f"ctc: expected a CTC module for ctc_weight={ctc_weight}, found None")
    if ctc_weight < 1.0 and decoder is None:
        raise ValueError(f"decoder: expected an attention decoder for ctc_weight={ctc_weight}, found None")
    for i, enc in enumerate(encoded):
        if not isinstance(enc, Tensor) or enc.dim() != 2:
            found = tuple(enc.shape) if isinstance(enc, Tensor) else type(enc).__name__
            raise ValueError(f"encoded[{i}]: expected a tensor [frames, d_model], found {found}")
        if enc.size(1) != encoded[0].size(1) or enc.dtype != encoded[0].dtype or enc.device != encoded[0].device:
            raise ValueError(f"encoded[{i}]: expected d_model {encoded[0].size(1)}, {encoded[0].dtype} on "
                             f"{encoded[0].device} like encoded[0], found {enc.size(1)}, {enc.dtype} on {enc.device}")


@torch.no_grad()
def batched_beam_search(decoder: Any, ctc: Any, encoded: Sequence[Tensor], *, vocab_size: int, sos: int, eos: int,
                        blank: int = 0, beam_size: int = 10, ctc_weight: float = 0.3, penalty: float = 0.0,
                        maxlenratio: float = 0.0, minlenratio: float = 0.0,
                        normalize_length: bool = False) -> list[BeamHypothesis | None]:
    """Joint CTC/attention beam search of several utterances at once.

    Args:
        decoder: an ESPnet ``TransformerDecoder`` (``forward_one_step`` with a per-layer cache);
            unused when ctc_weight is 1.
        ctc: an ESPnet ``CTC`` (``log_softmax``); unused when ctc_weight is 0.
        encoded: encoder output per utterance `[frames_i, d_model]`.
        vocab_size: V, the size of the decoder's and the CTC's output.
        sos, eos: the start and end symbols (one id in ESPnet models).
        blank: the CTC blank id.
        beam_size: K, hypotheses kept per utterance.
        ctc_weight: weight of the CTC prefix score; the decoder gets 1 - ctc_weight.
        penalty: score added per output token.
        maxlenratio: max output tokens = ratio * frames; 0: frames, with end detection;
            < 0: -ratio tokens.
        minlenratio: min output tokens = ratio * frames; < 0: -ratio tokens. When nothing ends,
            the utterance is searched again with minlenratio - 0.1 while minlenratio >= 0.1.
        normalize_length: pick the best ended hypothesis by score / (tokens + 1).

    Returns:
        The best hypothesis per utterance, None where no hypothesis ended.
    """
    _check_inputs(decoder, ctc, encoded, beam_size, ctc_weight, vocab_size)
    out: list[BeamHypothesis | None] = [None] * len(encoded)
    todo = list(range(len(encoded)))
    ratio = minlenratio
    while todo:
        found = _search([encoded[i] for i in todo], decoder, ctc, vocab_size=vocab_size, sos=sos, eos=eos,
                        blank=blank, beam_size=beam_size, ctc_weight=ctc_weight, penalty=penalty,
                        maxlenratio=maxlenratio, minlenratio=ratio, normalize_length=normalize_length)
        for i, hyp in zip(todo, found):
            out[i] = hyp
        if ratio < 0.1:  # ESPnet gives up below 0.1 (and for a fixed minimum, ratio < 0)
            break
        todo = [i for i in todo if out[i] is None]
        ratio = max(0.0, ratio - 0.1)
    return out


class _Ended:
    """Ended hypotheses of one utterance: the best by the ranking key, and what end detection needs."""

    def __init__(self, normalize_length: bool):
        self.normalize_length = normalize_length
        self.best: BeamHypothesis | None = None
        self.best_key = -math.inf
        self.best_score = -math.inf  # end detection ranks by the raw score
        self.best_by_length: dict[int, float] = {}  # <sos> + tokens + <eos> -> best score

    def add(self, tokens: tuple[int, ...], score: float) -> None:
        seq_len = len(tokens) + 2
        key = score / (seq_len - 1) if self.normalize_length else score
        if self.best is None or key > self.best_key:  # the first of equal keys wins, as in a stable sort
            self.best, self.best_key = BeamHypothesis(tokens, score), key
        self.best_score = max(self.best_score, score)
        self.best_by_length[seq_len] = max(self.best_by_length.get(seq_len, -math.inf), score)

    def end_detected(self, step: int) -> bool:
        """True when, for each of the last M lengths, hypotheses ended far below the best."""
        if self.best is None:
            return False
        for m in range(END_DETECT_LENGTHS):
            best = self.best_by_length.get(step - m)
            if best is None or not best - self.best_score < END_DETECT_MARGIN:
                return False
        return True


def _search(encoded: list[Tensor], decoder: Any, ctc: Any, *, vocab_size: int, sos: int, eos: int, blank: int,
            beam_size: int, ctc_weight: float, penalty: float, maxlenratio: float, minlenratio: float,
            normalize_length: bool) -> list[BeamHypothesis | None]:
    n_utt, k, n_vocab = len(encoded), beam_size, vocab_size
    limits = [_limits(enc.size(0), maxlenratio, minlenratio) for enc in encoded]
    ended = [_Ended(normalize_length) for _ in encoded]
    # utterances still searched; one without frames has nothing to attend to and ends nothing
    active = [b for b in range(n_utt) if limits[b].maxlen > 0 and encoded[b].size(0) > 0]
    if not active:
        return [None] * n_utt
    device, dtype = encoded[0].device, encoded[0].dtype
    use_att, use_ctc = ctc_weight < 1.0, ctc_weight > 0.0
    pre_beam = int(PRE_BEAM_RATIO * k)
    n_cand = pre_beam if use_att and pre_beam < n_vocab else n_vocab  # ESPnet's do_pre_beam
    frames = torch.tensor([enc.size(0) for enc in encoded], device=device)  # [B]
    t_max = int(frames.max())

    # per-utterance tensors, rows = utterances in `active` order; expanded to B * K rows
    def rows_of(t: Tensor) -> Tensor:
        return t.repeat_interleave(k, dim=0)

    sel = torch.tensor(active, device=device)
    memory = memory_mask = x_ctc = end_frames = None
    if use_att:
        memory = torch.zeros(n_utt, t_max, encoded[0].size(1), dtype=dtype, device=device)  # [B, T, D]
        for b, enc in enumerate(encoded):
            memory[b, : enc.size(0)] = enc
        memory_mask = (torch.arange(t_max, device=device) < frames.unsqueeze(1)).unsqueeze(1)  # [B, 1, T]
        memory, memory_mask = rows_of(memory[sel]), rows_of(memory_mask[sel])  # [N, T, D], [N, 1, T]
    if use_ctc:
        # log posteriors per utterance (as ESPnet computes them), padded frames emit only blanks
        x_ctc = torch.full((t_max, n_utt, n_vocab), LOGZERO, dtype=dtype, device=device)  # [T, B, V]
        x_ctc[:, :, blank] = 0.0
        for b, enc in enumerate(encoded):
            logp = ctc.log_softmax(enc.unsqueeze(0))[0]  # [T_b, V]
            if logp.size(-1) != n_vocab:
                raise ValueError(f"ctc: expected {n_vocab} outputs (vocab_size), found {logp.size(-1)}")
            x_ctc[: enc.size(0), b] = logp
        x_ctc = x_ctc[:, sel].repeat_interleave(k, dim=1)  # [T, N, V]
        end_frames = rows_of(frames[sel] - 1)  # [N]

    n_rows = len(active) * k
    ys = torch.full((n_rows, 1), sos, dtype=torch.long, device=device)  # [N, L]: <sos> + prefix
    # one running hypothesis per utterance at the start: the others score -inf and are never chosen
    score = torch.full((len(active), k), -math.inf, dtype=dtype, device=device)  # [B, K]
    score[:, 0] = 0.0
    cache = None  # decoder: per layer [N, L, D]
    psi_prev = torch.zeros(n_rows, dtype=dtype, device=device)  # [N]: log p_ctc(prefix...)
    r_prev = None
    if use_ctc:
        r_prev = torch.full((t_max, 2, n_rows), LOGZERO, dtype=dtype, device=device)  # [T, 2, N]
        r_prev[:, 1] = torch.cumsum(x_ctc[:, :, blank], dim=0)  # only blanks so far

    step = 0
    while active:
        n_act, n_rows = len(active), len(active) * k
        weighted = torch.zeros(n_rows, n_vocab, dtype=dtype, device=device)  # [N, V]
        if use_att:
            causal = torch.ones(step + 1, step + 1, dtype=torch.bool, device=device).tril().unsqueeze(0)  # [1, L, L]
            logp, cache = decoder.forward_one_step(ys, causal, memory, memory_mask, cache=cache)  # [N, V]
            if logp.size(-1) != n_vocab:
                raise ValueError(f"decoder: expected {n_vocab} outputs (vocab_size), found {logp.size(-1)}")
            weighted += (1.0 - ctc_weight) * logp
        if penalty != 0:
            weighted += penalty  # ESPnet's LengthBonus: penalty * 1 for every token
        if use_ctc:
            if n_cand < n_vocab:
                candidates = torch.topk(weighted, n_cand, dim=-1)[1]  # [N, P]
            else:
                candidates = torch.arange(n_vocab, device=device).expand(n_rows, n_vocab)  # [N, V]
            psi, r = ctc_prefix_step(x_ctc, r_prev, ys[:, -1], candidates, step, end_frames, blank=blank, eos=eos)
            weighted += ctc_weight * (psi - psi_prev.unsqueeze(1))
        weighted += score.view(n_rows, 1)

        top_score, top_id = weighted.view(n_act, k * n_vocab).topk(k, dim=1)  # [B, K]
        parent = top_id.div(n_vocab, rounding_mode="floor") + (torch.arange(n_act, device=device) * k).unsqueeze(1)
        parent, token = parent.view(-1), (top_id % n_vocab).view(-1)  # [N]: row of the prefix, new token
        ys = torch.cat((ys[parent], token.unsqueeze(1)), dim=1)  # [N, L + 1]
        if use_att:
            cache = [c[parent] for c in cache]
        if use_ctc:
            # ESPnet's state of a token outside the candidates is the last candidate's (index -1)
            match = candidates[parent] == token.unsqueeze(1)  # [N, P]
            slot = torch.where(match.any(1), match.int().argmax(1), torch.full_like(token, n_cand - 1))
            r_prev = r[:, :, parent, slot]  # [T, 2, N]
            psi_prev = psi[parent, token]

        # ended hypotheses: <eos> chosen, or every running one at the last step (<eos> appended)
        top_score = top_score.view(-1)
        running = top_score > -math.inf  # [N]
        is_eos = token == eos
        last_step = torch.tensor([step == limits[b].maxlen - 1 for b in active], device=device)
        ends = running & (is_eos | rows_of(last_step))
        if bool(ends.any()):
            for row in torch.nonzero(ends).view(-1).tolist():
                b = active[row // k]
                if step >= limits[b].minlen:
                    # at the last step <eos> is appended even after a chosen <eos>, as ESPnet does
                    seq = ys[row, 1:] if bool(last_step[row // k]) else ys[row, 1:-1]
                    ended[b].add(tuple(seq.tolist()), float(top_score[row]))
        running &= ~ends
        score = torch.where(running, top_score, -math.inf).view(n_act, k)

        keep = []
        alive = running.view(n_act, k).any(1).tolist()
        for j, b in enumerate(active):
            done = not alive[j] or step == limits[b].maxlen - 1
            done = done or (maxlenratio == 0 and ended[b].end_detected(step))
            if not done:
                keep.append(j)
        if len(keep) < n_act:  # drop finished utterances from every row tensor
            active = [active[j] for j in keep]
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            rows = (idx.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)  # [N']
            ys, score = ys[rows], score[idx]
            if use_att:
                cache = [c[rows] for c in cache]
                memory, memory_mask = memory[rows], memory_mask[rows]
            if use_ctc:
                x_ctc, r_prev = x_ctc[:, rows], r_prev[:, :, rows]
                psi_prev, end_frames = psi_prev[rows], end_frames[rows]
        step += 1
    return [e.best for e in ended]
