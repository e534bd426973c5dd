"""Token inventories of a run, and the per-epoch, per-process order of micro-batches.

A run dir stores its inventory as ``tokens.txt`` (one symbol a line, ESPnet layout) and, for
SentencePiece, the model as ``bpe.model``; :func:`load_run_tokenizer` reads them back, so
teachers, students and resumed runs all see the same ids.

Batch order: utterances are grouped into length buckets once (:func:`kd.data.batching.bucket_batches`,
a composition that does not depend on the epoch), and each epoch shuffles the order of the
buckets with ``seed + epoch``. With P processes, the epoch keeps the first ``P * floor(n / P)``
buckets so that every process runs the same number of steps (DDP needs that), and process r
takes buckets r, r + P, r + 2P, ...
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Sequence, Union

import torch

from kd.core.io import atomic_write_text
from kd.data import CharTokenizer, DataDir, SentencePieceTokenizer
from kd.data.batching import AudioDataset, collate
from kd.training.config import TokenConfig, TokenKind

__all__ = [
    "SP_MODEL_FILE",
    "TOKENS_FILE",
    "Tokenizer",
    "build_tokenizer",
    "epoch_batches",
    "load_run_tokenizer",
    "make_loader",
]

TOKENS_FILE = "tokens.txt"
SP_MODEL_FILE = "bpe.model"
Tokenizer = Union[CharTokenizer, SentencePieceTokenizer]


def load_run_tokenizer(run_dir: str | os.PathLike) -> Tokenizer:
    """The token inventory a run saved (``bpe.model`` if present, else ``tokens.txt``)."""
    run_dir = Path(run_dir)
    if (run_dir / SP_MODEL_FILE).is_file():
        return SentencePieceTokenizer(run_dir / SP_MODEL_FILE)
    if not (run_dir / TOKENS_FILE).is_file():
        raise FileNotFoundError(f"Expected a token list at {run_dir / TOKENS_FILE}, found no such file")
    return CharTokenizer.load(run_dir / TOKENS_FILE)


def build_tokenizer(config: TokenConfig, train: Sequence[DataDir], out_dir: str | os.PathLike) -> Tokenizer:
    """Build (CHAR) or read (LIST, SENTENCEPIECE) the inventory and save it into ``out_dir``.

    A run dir that already holds an inventory (a resumed run) keeps it.
    """
    out_dir = Path(out_dir)
    if (out_dir / TOKENS_FILE).is_file():
        return load_run_tokenizer(out_dir)
    if config.kind is TokenKind.CHAR:
        tokenizer: Tokenizer = CharTokenizer.from_texts(u.text for d in train for u in d.utterances)
    else:
        source = Path(config.path or "")
        if not source.is_file():
            raise FileNotFoundError(f"tokens.path: expected a file for kind={config.kind.value}, found {source}")
        if config.kind is TokenKind.LIST:
            tokenizer = CharTokenizer.load(source)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out_dir / SP_MODEL_FILE)
            tokenizer = SentencePieceTokenizer(out_dir / SP_MODEL_FILE)
    atomic_write_text(out_dir / TOKENS_FILE, "".join(t + "\n" for t in tokenizer.tokens))
    return tokenizer


def epoch_batches(buckets: Sequence[Sequence[int]], *, seed: int, epoch: int, rank: int,
                  world_size: int) -> list[list[int]]:
    """This process's micro-batches (lists of utterance indices) for ``epoch``, in order."""
    order = [list(b) for b in buckets]
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    usable = len(order) // world_size * world_size
    if usable == 0:
        raise ValueError(
            f"data.max_seconds: expected at least {world_size} micro-batches (one per process), found "
            f"{len(order)}; lower data.max_seconds or data.max_utterances, or use fewer processes"
        )
    return order[rank:usable:world_size]


def make_loader(dataset: AudioDataset, batches: Sequence[Sequence[int]],
                num_workers: int, pin_memory: bool = False, collate_fn=collate) -> torch.utils.data.DataLoader:
    """A DataLoader over fixed micro-batches (``pin_memory``: in page-locked memory, for
    ``Batch.to(device, non_blocking=True)`` on CUDA); ``collate_fn`` makes a batch of the items
    (padded :class:`kd.data.batching.Batch` objects by default).

    It gets its own generator: creating an iterator otherwise draws a worker seed from the
    global torch RNG, which would shift the dropout and noise draws after a mid-epoch resume.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=[list(b) for b in batches], collate_fn=collate_fn, num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )
