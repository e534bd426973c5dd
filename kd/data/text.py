"""Text normalisation and token inventories (characters or SentencePiece).

``normalize_text`` is THE normalisation of the toolkit: transcripts are normalised with it
before tokenisation, and references and hypotheses before WER/CER scoring.

Token-id convention (ESPnet's): id 0 is ``<blank>`` (CTC), id 1 is ``<unk>``, the last id is
``<sos/eos>``; padding in batches is -1.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

BLANK, UNK, SOS_EOS = "<blank>", "<unk>", "<sos/eos>"
SPACE = "<space>"
# characters that normalize_text can emit
NORMALIZED_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789' ")

_DASHES = re.compile(r"[\-\u2010-\u2015_/]+")
_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`\u00b4]")
_DROP = re.compile(r"[^\w' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The toolkit's one text normalisation (used for training targets and for WER).

    1. Unicode NFKD, combining marks dropped (``café`` -> ``cafe``), lower case.
    2. Curly apostrophes become ``'``; dashes, slashes and underscores become spaces.
    3. Every other punctuation mark is removed; apostrophes at word edges are removed
       (``'tis`` -> ``tis``, ``dogs'`` -> ``dogs``), inner ones kept (``don't``).
    4. Runs of white space become one space; leading/trailing space is removed.

    Letters outside a-z that survive (for example CJK) are kept, so that a token inventory
    check can report them instead of silently losing words.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _APOSTROPHES.sub("'", text)
    text = _DASHES.sub(" ", text)
    text = _DROP.sub("", text)
    words = [w.strip("'") for w in _SPACES.split(text)]
    return " ".join(w for w in words if w)


class UnknownCharacterError(ValueError):
    def __init__(self, chars: Sequence[str], text: str, utt: str | None = None):
        self.chars, self.utt = list(chars), utt
        who = f"utterance {utt!r}: " if utt else ""
        super().__init__(f"{who}characters outside the token inventory: {''.join(self.chars)!r} in {text!r}")


@dataclass(frozen=True)
class CharTokenizer:
    """Character tokens, ESPnet layout: ``<blank> <unk> <space> chars... <sos/eos>``."""

    tokens: tuple[str, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars = sorted({c for t in texts for c in normalize_text(t)} - {" "})
        return cls((BLANK, UNK, SPACE, *chars, SOS_EOS))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def sos_eos(self) -> int:
        return len(self.tokens) - 1

    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def unknown_characters(self, text: str) -> list[str]:
        index = self._index()
        return sorted({c for c in normalize_text(text) if (SPACE if c == " " else c) not in index})

    def encode(self, text: str, *, utt: str | None = None, allow_unk: bool = False) -> list[int]:
        """Normalise and encode; characters outside the inventory raise unless ``allow_unk``."""
        index = self._index()
        norm = normalize_text(text)
        unknown = sorted({c for c in norm if (SPACE if c == " " else c) not in index})
        if unknown and not allow_unk:
            raise UnknownCharacterError(unknown, text, utt)
        return [index.get(SPACE if c == " " else c, 1) for c in norm]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            tok = self.tokens[int(i)]
            if tok in (BLANK, SOS_EOS):
                continue
            out.append(" " if tok == SPACE else tok)
        return "".join(out).strip()

    def save(self, path: str | os.PathLike) -> None:
        from kd.core.io import atomic_write_text

        atomic_write_text(path, "".join(t + "\n" for t in self.tokens))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        tokens = tuple(Path(path).read_text(encoding="utf-8").splitlines())
        if len(tokens) < 4 or tokens[0] != BLANK or tokens[1] != UNK or tokens[-1] != SOS_EOS:
            raise ValueError(f"{path}: expected a token list starting with {BLANK}, {UNK} and ending with {SOS_EOS}")
        return cls(tokens)


class SentencePieceTokenizer:
    """SentencePiece subwords in the same id layout: ``<blank> <unk> pieces... <sos/eos>``."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.model_path = str(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_path)
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        # sentencepiece reserves id 0 for its own <unk>; ours is id 1
        self.tokens = (BLANK, UNK, *[p for i, p in enumerate(pieces) if i != self.sp.unk_id()], SOS_EOS)
        self._to_ours = {p: i for i, p in enumerate(self.tokens)}

    @classmethod
    def train(cls, texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int,
              model_type: str = "unigram") -> "SentencePieceTokenizer":
        """Train on normalised ``texts``; writes ``out_prefix.model`` and ``.vocab``."""
        import sentencepiece as spm

        lines = [normalize_text(t) for t in texts]
        lines = [t for t in lines if t]
        if not lines:
            raise ValueError("Expected at least one non-empty transcript to train SentencePiece, found none")
        Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=str(out_prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            minloglevel=2, num_threads=1,
        )
        return cls(f"{out_prefix}.model")

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def sos_eos(self) -> int:
        return len(self.tokens) - 1

    def encode(self, text: str, *, utt: str | None = None, allow_unk: bool = False) -> list[int]:
        pieces = self.sp.encode(normalize_text(text), out_type=str)
        unknown = [p for p in pieces if p not in self._to_ours]
        if unknown and not allow_unk:
            raise UnknownCharacterError(unknown, text, utt)
        return [self._to_ours.get(p, 1) for p in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self.tokens[int(i)] for i in ids]
        return self.sp.decode([p for p in pieces if p not in (BLANK, UNK, SOS_EOS)]).strip()
