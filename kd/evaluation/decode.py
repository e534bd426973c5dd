"""Decoding of the hybrid CTC/attention model: CTC greedy and joint CTC/attention beam search.

The beam search is ESPnet's (``espnet.nets.beam_search.BeamSearch``, switched to
``BatchBeamSearch`` when every scorer can score hypotheses in a batch), assembled exactly as
``espnet2.bin.asr_inference.Speech2Text`` assembles it, so that a model exported with
:func:`kd.models.export_espnet.export_espnet` decodes to the same tokens through Speech2Text.
The score of a hypothesis y for encoder output x is (Watanabe et al. 2017, "Hybrid
CTC/Attention Architecture for End-to-End Speech Recognition")

    (1 - ctc_weight) * log p_att(y | x) + ctc_weight * log p_ctc(y | x)
        + lm_weight * log p_lm(y) + penalty * |y|

with the CTC term computed by the CTC prefix score. Texts are returned through
:func:`kd.data.normalize_text`, the normalisation WER and CER are scored on.

Utterances are encoded one by one by default, as Speech2Text does: in a padded batch the
STFT of a short utterance sees zeros instead of its reflected edge, and ESPnet's conv2d
subsampling gives it ceil(T / 2) frames per stage instead of (T - 1) // 2, so padded and
one-by-one encoding differ (``DecodeConfig.batched_encoder`` trades this for speed).

``DecodeConfig.batched_search`` replaces ESPnet's search, which advances one utterance's
hypotheses per step, by :func:`kd.evaluation.beam.batched_beam_search`, which advances those of the whole
batch together (same scores and stopping rules, so the same tokens up to float rounding; see
:mod:`kd.evaluation.beam`). The encoder outputs are the same either way.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor

from kd.core.config import CONFIG, parse_config, with_config
from kd.data.text import normalize_text

__all__ = [
    "DecodeConfig",
    "DecodeMethod",
    "build_beam_search",
    "ctc_greedy",
    "decode",
    "decode_ids",
    "encode_utterances",
]


class DecodeMethod(enum.Enum):
    CTC_GREEDY = "ctc_greedy"  # best path of the CTC posteriors, repeats merged, blanks dropped
    BEAM = "beam"  # joint CTC/attention beam search


@dataclass(frozen=True)
@with_config(CONFIG)
class DecodeConfig:
    """How hypotheses are searched. Defaults follow the hybrid model's training weights."""

    method: DecodeMethod = DecodeMethod.BEAM
    beam_size: int = 10  # hypotheses kept per step (the pre-beam keeps int(1.5 * beam_size))
    ctc_weight: float = 0.3  # weight of the CTC prefix score; 0 = attention only, 1 = CTC only
    lm_weight: float = 0.3  # weight of the language model (used only when decode() gets one)
    penalty: float = 0.0  # score added per output token (insertion bonus when > 0)
    maxlenratio: float = 0.0  # max tokens = ratio * encoder frames; 0: frames + end detection; < 0: -ratio tokens
    minlenratio: float = 0.0  # min tokens = ratio * encoder frames; < 0: -ratio tokens
    normalize_length: bool = False  # rank ended hypotheses by score / length instead of score
    batched_encoder: bool = False  # encode a padded batch at once (faster; not identical, see module doc)
    batched_search: bool = False  # beam search of the whole batch at once (kd.evaluation.beam; faster, no LM)
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.method, DecodeMethod):
            raise TypeError(f"DecodeConfig.method: expected DecodeMethod, found {self.method!r}")
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int) or self.beam_size < 1:
            raise ValueError(f"DecodeConfig.beam_size: expected a positive int, found {self.beam_size!r}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"DecodeConfig.ctc_weight: expected a value in [0, 1], found {self.ctc_weight!r}")
        if not self.lm_weight >= 0.0:
            raise ValueError(f"DecodeConfig.lm_weight: expected a value >= 0, found {self.lm_weight!r}")
        if not isinstance(self.batched_search, bool):
            raise TypeError(f"DecodeConfig.batched_search: expected a bool, found {self.batched_search!r}")
        for name in ("penalty", "maxlenratio", "minlenratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"DecodeConfig.{name}: expected a number, found {value!r}")
        if self.version != 1:
            raise ValueError(f"DecodeConfig.version: expected 1, found {self.version!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["method"] = self.method.value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecodeConfig":
        return parse_config(cls, data)


class TextDecoder(Protocol):
    """What decoding needs from a token inventory (CharTokenizer, SentencePieceTokenizer)."""

    tokens: tuple[str, ...]

    def decode(self, ids: Sequence[int]) -> str: ...


def ctc_greedy(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, repeats merged, then blanks removed.

    Args:
        log_probs: CTC (log) posteriors `[batch, frames, vocab]` (any monotone score works).
        lengths: valid frames per utterance `[batch]`; later frames are ignored.
        blank: id of the CTC blank.

    Returns:
        One list of token ids per utterance.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs: expected [batch, frames, vocab], found {tuple(log_probs.shape)}")
    if lengths.shape != (log_probs.size(0),):
        raise ValueError(f"lengths: expected shape ({log_probs.size(0)},), found {tuple(lengths.shape)}")
    if int(lengths.min()) < 0 or int(lengths.max()) > log_probs.size(1):
        raise ValueError(f"lengths: expected values in [0, {log_probs.size(1)}], found {lengths.tolist()}")
    best = log_probs.argmax(dim=-1).cpu()  # [B, T]
    out = []
    for row, n in zip(best, lengths.tolist()):
        path = row[:n]
        if n == 0:
            out.append([])
            continue
        # keep a frame when it differs from the previous one (merging repeats), then drop blanks
        keep = torch.ones(n, dtype=torch.bool)
        keep[1:] = path[1:] != path[:-1]
        merged = path[keep]
        out.append(merged[merged != blank].tolist())
    return out


def build_beam_search(model: Any, config: DecodeConfig, token_list: Sequence[str], *, lm: Any = None):
    """ESPnet's beam search over the model's decoder and CTC, as Speech2Text builds it.

    Args:
        model: a :class:`kd.models.asr.AsrModel`.
        config: decoding settings (``beam_size``, ``ctc_weight``, ``lm_weight``, ``penalty``,
            ``normalize_length``).
        token_list: the V symbols (for ESPnet's logs).
        lm: optional ESPnet language-model scorer (an ``espnet.nets.scorer_interface.ScorerInterface``,
            e.g. ``ESPnetLanguageModel.lm``), fused with weight ``config.lm_weight``.
    """
    from kd.core.quiet import espnet_imports

    espnet_imports()
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.beam_search import BeamSearch
    from espnet.nets.scorer_interface import BatchScorerInterface, ScorerInterface
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    espnet = model.espnet
    if config.ctc_weight > 0.0 and espnet.ctc is None:
        raise ValueError(f"DecodeConfig.ctc_weight: the model has no CTC branch, found ctc_weight={config.ctc_weight}")
    if lm is not None and not isinstance(lm, ScorerInterface):
        raise TypeError(f"lm: expected an ESPnet ScorerInterface, found {type(lm).__name__}")
    scorers: dict[str, Any] = {
        "decoder": espnet.decoder,
        "ctc": CTCPrefixScorer(ctc=espnet.ctc, eos=espnet.eos) if espnet.ctc is not None else None,
        "length_bonus": LengthBonus(len(token_list)),
    }
    weights = {
        "decoder": 1.0 - config.ctc_weight,
        "ctc": config.ctc_weight,
        "lm": config.lm_weight,
        "length_bonus": config.penalty,
    }
    if lm is not None:
        scorers["lm"] = lm
    search = BeamSearch(
        scorers=scorers,  # scorers with weight 0 are left out by BeamSearch itself
        weights=weights,
        beam_size=config.beam_size,
        vocab_size=len(token_list),
        sos=espnet.sos,
        eos=espnet.eos,
        token_list=list(token_list),
        pre_beam_score_key=None if config.ctc_weight == 1.0 else "full",
        normalize_length=config.normalize_length,
    )
    if all(isinstance(s, BatchScorerInterface) for s in search.full_scorers.values()):
        search.__class__ = BatchBeamSearch  # same search, hypotheses scored as one batch
    return search.eval()


def encode_utterances(model: Any, speech: Tensor, speech_lengths: Tensor, *, batched: bool = False) -> list[Tensor]:
    """Encoder outputs per utterance.

    Args:
        model: a :class:`kd.models.asr.AsrModel`.
        speech: waveforms `[batch, samples]`, zero padded.
        speech_lengths: valid samples `[batch]`.
        batched: encode the padded batch at once instead of one utterance at a time.

    Returns:
        One tensor `[frames_i, d_model]` per utterance (padding frames removed).
    """
    if batched:
        enc, enc_lengths = model.encode(speech, speech_lengths)
        return [enc[i, : int(n)] for i, n in enumerate(enc_lengths)]
    out = []
    for i, n in enumerate(speech_lengths.tolist()):
        one = speech[i : i + 1, :n]
        enc, _ = model.encode(one, speech_lengths[i : i + 1])
        out.append(enc[0])
    return out


@torch.no_grad()
def decode_ids(model: Any, speech: Tensor, speech_lengths: Tensor, config: DecodeConfig, *,
               lm: Any = None, token_list: Sequence[str] | None = None) -> list[list[int]]:
    """Token ids of the best hypothesis per utterance (no <sos/eos>, no blank).

    Args:
        model: a :class:`kd.models.asr.AsrModel` (put in eval mode by the caller).
        speech: waveforms `[batch, samples]`, zero padded, on the model's device.
        speech_lengths: valid samples `[batch]`.
        config: decoding settings.
        lm: optional ESPnet LM scorer for beam search.
        token_list: the model's V symbols (defaults to the ESPnet model's own list).
    """
    espnet = model.espnet
    if token_list is None:
        token_list = espnet.token_list
    encoded = encode_utterances(model, speech, speech_lengths, batched=config.batched_encoder)
    if config.method is DecodeMethod.CTC_GREEDY:
        if espnet.ctc is None:
            raise ValueError("DecodeConfig.method: ctc_greedy needs a CTC branch; the model has none")
        out = []
        for enc in encoded:
            log_probs = espnet.ctc.log_softmax(enc.unsqueeze(0))  # [1, T', V]
            out += ctc_greedy(log_probs, torch.tensor([enc.size(0)]), blank=espnet.blank_id)
        return out
    if config.batched_search:
        return _batched_search_ids(model, encoded, config, len(token_list), lm=lm)
    search = build_beam_search(model, config, token_list, lm=lm)
    out = []
    for enc in encoded:
        hyps = search(x=enc, maxlenratio=config.maxlenratio, minlenratio=config.minlenratio)
        if not hyps:  # nothing reached <eos> (only with a large minlenratio)
            out.append([])
            continue
        ids = hyps[0].yseq[1:-1].tolist()  # drop <sos> and <eos>
        out.append([i for i in ids if i != espnet.blank_id])
    return out


def _batched_search_ids(model: Any, encoded: list[Tensor], config: DecodeConfig, vocab_size: int, *,
                        lm: Any = None) -> list[list[int]]:
    from kd.evaluation.beam import batched_beam_search

    espnet = model.espnet
    if lm is not None and config.lm_weight > 0.0:
        raise ValueError("lm: expected none with DecodeConfig.batched_search (the batched search fuses no LM), "
                         f"found {type(lm).__name__} with lm_weight={config.lm_weight}")
    if config.ctc_weight > 0.0 and espnet.ctc is None:
        raise ValueError(f"DecodeConfig.ctc_weight: the model has no CTC branch, found ctc_weight={config.ctc_weight}")
    hyps = batched_beam_search(
        espnet.decoder, espnet.ctc, encoded, vocab_size=vocab_size, sos=espnet.sos, eos=espnet.eos,
        blank=espnet.blank_id, beam_size=config.beam_size, ctc_weight=config.ctc_weight, penalty=config.penalty,
        maxlenratio=config.maxlenratio, minlenratio=config.minlenratio, normalize_length=config.normalize_length,
    )
    # nothing ended (only with a large minlenratio): empty, as for ESPnet's search
    return [[] if h is None else [i for i in h.tokens if i != espnet.blank_id] for h in hyps]


def decode(model: Any, batch: Any, config: DecodeConfig, *, tokenizer: TextDecoder, lm: Any = None) -> list[str]:
    """Normalised hypothesis text per utterance of a :class:`kd.data.batching.Batch`.

    Args:
        model: a :class:`kd.models.asr.AsrModel`; decoded in eval mode (its mode is restored).
        batch: a ``Batch`` (``speech`` `[batch, samples]`, ``speech_lengths`` `[batch]`).
        config: decoding settings.
        tokenizer: the model's token inventory (maps ids to text).
        lm: optional ESPnet LM scorer for beam search.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        ids = decode_ids(model, batch.speech.to(device), batch.speech_lengths.to(device), config, lm=lm,
                         token_list=tokenizer.tokens)
    finally:
        model.train(was_training)
    return [normalize_text(tokenizer.decode(seq)) for seq in ids]
