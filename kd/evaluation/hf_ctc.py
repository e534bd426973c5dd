"""Greedy CTC transcription with a Hugging Face ``*ForCTC`` model: a checkpoint folder as the Hub
serves it, one written by ``kd ssl finetune``, or a compressed student of either.

Vocabulary, from the folder:

- ``tokens.txt`` (written by CTC fine-tuning, :mod:`kd.ssl.finetune`): the toolkit's character
  inventory (``0 <blank>, 1 <unk>, 2 <space>, ...``), decoded by :class:`kd.data.CharTokenizer`;
- otherwise ``vocab.json`` (a Hub checkpoint): ``transformers.Wav2Vec2CTCTokenizer``, whose word
  delimiter (``|``) becomes a space; its special tokens are skipped, as the speech-recognition
  pipeline of ``transformers`` skips them.

The CTC blank is ``config.pad_token_id`` (the id the model's CTC loss uses). Decoding takes the
best path over an utterance's valid frames, merges repeats and drops blanks, then drops the
other special tokens (``<unk>``, ``<s>``, ``</s>``) and maps the ids to text: the string of the
tokenizer's own grouped decoding of the argmax ids with those tokens removed. (Asking the
tokenizer to skip special tokens instead would drop the blanks before merging repeats, and so
merge a letter that the model wrote twice with a blank between, as in "ll".)
Inputs are prepared as the folder's ``preprocessor_config.json`` says (:mod:`kd.models.hf_processor`).
Models whose feature encoder normalises over time (``feat_extract_norm: group``, wav2vec 2.0
base) run one utterance at a time without an attention mask, since padding would change their
statistics; layer-norm models take padded batches with the mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from kd.data.batching import attention_mask
from kd.models.hf_processor import InputSpec, read_input_spec

__all__ = ["CTCTranscriber", "greedy_ctc_decode", "is_hf_model_folder"]


def greedy_ctc_decode(logits: torch.Tensor, frames: torch.Tensor, *, blank: int = 0,
                      drop: Sequence[int] = ()) -> list[list[int]]:
    """Best-path CTC decoding.

    logits: [B, T, V]; frames: [B] valid frames per utterance. Returns per utterance the ids of
    the argmax path with repeats merged and ``blank`` (and any id in ``drop``) removed.
    """
    best = logits.argmax(-1).cpu()  # [B, T]
    out = []
    for path, n in zip(best, frames.tolist()):
        merged = torch.unique_consecutive(path[: int(n)]).tolist()
        out.append([i for i in merged if i != blank and i not in drop])
    return out


def is_hf_model_folder(path: str | os.PathLike) -> bool:
    """A Hugging Face checkpoint folder (``config.json``) or a compressed-student folder."""
    from kd.compression.io import STUDENT_FILE

    return (Path(path) / "config.json").is_file() or (Path(path) / STUDENT_FILE).is_file()


class CTCTranscriber:
    """A ``*ForCTC`` model with its vocabulary and input convention: waveforms in, texts out.

    model: a Hugging Face ``Wav2Vec2ForCTC`` / ``HubertForCTC`` / ``WavLMForCTC`` (or a student
    of one); decode: CTC ids (blanks and repeats removed) -> text; blank: the CTC blank id;
    drop: further ids removed before ``decode`` (``<unk>``); spec: the input convention.
    """

    def __init__(self, model: torch.nn.Module, decode: Callable[[list[int]], str], *, blank: int,
                 drop: Sequence[int] = (), spec: InputSpec = InputSpec()):
        if not hasattr(model, "lm_head"):
            raise TypeError(f"model: expected a CTC model (*ForCTC, with an lm_head), found {type(model).__name__}")
        self.model, self.decode, self.blank, self.drop, self.spec = model, decode, blank, tuple(drop), spec
        self.batch_consistent = getattr(model.config, "feat_extract_norm", "layer") != "group"

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> "CTCTranscriber":
        """Load a CTC checkpoint folder (or student folder) with its vocabulary and input convention."""
        from kd.compression.io import load_speech_model

        model_dir = Path(model_dir)
        spec = read_input_spec(model_dir)
        model = load_speech_model(model_dir)
        if not hasattr(model, "lm_head"):
            raise ValueError(f"{model_dir}: expected a CTC model (*ForCTC), found {type(model).__name__}, which has "
                             f"no CTC output layer; fine-tune it first (kd ssl finetune)")
        vocab_size, blank = int(model.config.vocab_size), model.config.pad_token_id
        if (model_dir / "tokens.txt").is_file():
            from kd.data import CharTokenizer

            tokenizer = CharTokenizer.load(model_dir / "tokens.txt")
            if tokenizer.vocab_size != vocab_size:
                raise ValueError(f"{model_dir / 'tokens.txt'}: expected {vocab_size} tokens (vocab_size in "
                                 f"config.json), found {tokenizer.vocab_size}")
            drop = [i for i, t in enumerate(tokenizer.tokens) if t == "<unk>"]
            decode = tokenizer.decode
        elif (model_dir / "vocab.json").is_file():
            from transformers import Wav2Vec2CTCTokenizer

            hf_tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(model_dir)
            if len(hf_tokenizer) > vocab_size:
                raise ValueError(f"{model_dir / 'vocab.json'}: {len(hf_tokenizer)} tokens, more than the model's "
                                 f"{vocab_size} outputs (vocab_size in config.json)")
            if hf_tokenizer.pad_token_id != blank:
                raise ValueError(f"{model_dir}: the tokenizer's pad token (the CTC blank) has id "
                                 f"{hf_tokenizer.pad_token_id}, config.json's pad_token_id is {blank}")
            keep = {blank, hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.word_delimiter_token)}
            drop = [i for i in hf_tokenizer.all_special_ids if i not in keep]

            def decode(ids: list[int]) -> str:
                return hf_tokenizer.decode(ids, skip_special_tokens=True, group_tokens=False)
        else:
            raise FileNotFoundError(f"{model_dir}: no vocabulary; expected tokens.txt (kd ssl finetune) or "
                                    f"vocab.json (a Hugging Face CTC checkpoint)")
        if blank is None or not 0 <= int(blank) < vocab_size:
            raise ValueError(f"{model_dir / 'config.json'}: pad_token_id (the CTC blank): expected an id in "
                             f"0..{vocab_size - 1}, found {blank!r}")
        return cls(model.to(device).eval(), decode, blank=int(blank), drop=drop, spec=spec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_parameters(self) -> int:
        """Distinct parameters (a tensor shared by several layers counts once)."""
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def logits(self, speech: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC logits ``[B, T, V]`` (float32) and valid frames ``[B]`` of a padded batch."""
        speech, lengths = speech.to(self.device), lengths.to(self.device)
        frames = self.model._get_feat_extract_output_lengths(lengths).long()
        if not self.batch_consistent and len(lengths) > 1:
            parts = [self.logits(speech[i: i + 1, : int(n)], lengths[i: i + 1])[0][0] for i, n in enumerate(lengths)]
            out = torch.zeros(len(parts), int(frames.max()), parts[0].shape[-1], device=self.device)
            for i, p in enumerate(parts):
                out[i, : p.shape[0]] = p
            return out, frames
        mask = attention_mask(lengths, speech.shape[1]) if self.batch_consistent else None
        return self.model(self.spec.prepare(speech, lengths), attention_mask=mask).logits.float(), frames

    def ids(self, speech: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Greedy CTC ids (repeats merged; blanks and ``drop`` removed) of a padded batch, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            logits, frames = self.logits(speech, lengths)
        finally:
            self.model.train(was_training)
        return greedy_ctc_decode(logits, frames, blank=self.blank, drop=self.drop)

    def __call__(self, speech: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy transcripts of a padded batch ``speech`` [B, S] with ``lengths`` [B] valid samples."""
        return [self.decode(ids) for ids in self.ids(speech, lengths)]

    def transcribe(self, dataset, *, max_batch_seconds: float = 120.0) -> list[tuple[str, str, str]]:
        """``(utt, reference, hypothesis)`` for every utterance of ``dataset`` (an ``AudioDataset``), in data order."""
        from kd.data.batching import speech_loader

        loader = speech_loader(dataset, dataset.durations(), max_seconds=max_batch_seconds, shuffle=False)
        results = {}
        for batch in loader:
            for utt, ref, hyp in zip(batch.utts, batch.texts, self(batch.speech, batch.speech_lengths)):
                results[utt] = (utt, ref, hyp)
        return [results[u.utt] for u in dataset.data.utterances]
