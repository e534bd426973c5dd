"""Factories and fakes that several of the project's test packages share (``tests/``).

Tiny, deterministic objects on the CPU: training configs for the ``tiny`` model preset, data dirs,
briefly trained ASR models and model dirs, a tiny wav2vec 2.0 model. Fixtures (the synthesised
``tests`` corpus, one intra-op thread) live in ``tests/conftest.py``; this module holds the plain
functions, so that no test module imports another. Heavy libraries are imported where used: importing
this module stays as cheap as importing :mod:`kd`.
"""

from __future__ import annotations

import csv
from pathlib import Path

# ---------------------------------------------------------------- training runs


def make_config(train_dirs, *, steps: int, dev=None, seed: int = 0, overrides=None, optim=None, checkpoint=None,
                **sections):
    """A tiny-model :class:`~kd.training.config.TrainConfig` for tests: deterministic, no progress bar,
    logging every step."""
    from kd.training.config import TrainConfig

    return TrainConfig.from_dict({
        "data": {"train": [str(d) for d in train_dirs], "dev": None if dev is None else str(dev),
                 "max_seconds": sections.pop("max_seconds", 10.0)},
        "model": sections.pop("model", {"preset": "tiny", "overrides": overrides or {}}),
        "optim": {"lr": 2e-3, "schedule": "warmup_inverse_sqrt", "warmup_steps": 3, "max_steps": steps,
                  **(optim or {})},
        "checkpoint": {"every_steps": 0, "keep_last": 2, "average_best": 2, **(checkpoint or {})},
        "logging": {"every_steps": 1, "progress": False, "tensorboard": False},
        "seed": seed,
        "deterministic": True,
        **sections,
    })


def subset_dir(src: Path, dst: Path, n: int) -> Path:
    """A data dir with the first ``n`` utterances of ``src`` (absolute audio paths)."""
    dst.mkdir(parents=True, exist_ok=True)
    wav = [line.split(maxsplit=1) for line in (src / "wav.scp").read_text().splitlines()[:n]]
    ids = {u for u, _ in wav}
    (dst / "wav.scp").write_text("".join(f"{u} {(src / p).resolve()}\n" for u, p in wav))
    for name in ("text", "utt2spk"):
        lines = [line for line in (src / name).read_text().splitlines() if line.split()[0] in ids]
        (dst / name).write_text("\n".join(lines) + "\n")
    return dst


def shortest_subset_dir(src: Path, dst: Path, count: int) -> Path:
    """The ``count`` utterances with the shortest transcripts of data dir ``src``, as data dir ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    wav = dict(line.split(maxsplit=1) for line in (src / "wav.scp").read_text().splitlines())
    text = dict(line.split(maxsplit=1) for line in (src / "text").read_text().splitlines())
    utts = sorted(text, key=lambda u: (len(text[u]), u))[:count]
    (dst / "wav.scp").write_text("".join(f"{u} {(src / wav[u].strip()).resolve()}\n" for u in utts))
    (dst / "text").write_text("".join(f"{u} {text[u]}\n" for u in utts))
    return dst


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_equal(a: dict, b: dict) -> bool:
    """Two state dicts (name -> tensor) with the same names and bit-for-bit equal tensors."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- data dirs

RATE = 16000


def tone(seconds: float = 0.5, rate: int = RATE):
    """A 220 Hz sine of amplitude 0.3, float32."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def make_data_dir(root: Path, n: int = 3) -> Path:
    """A valid data dir ``root/data`` of ``n`` tone utterances (ids u0..u{n-1}, speakers s0/s1)."""
    import soundfile as sf

    d = root / "data"
    (d / "wav").mkdir(parents=True)
    lines = {"wav.scp": [], "text": [], "utt2spk": [], "utt2dom": []}
    for i in range(n):
        utt = f"u{i}"
        sf.write(d / "wav" / f"{utt}.wav", tone(), RATE, subtype="PCM_16")
        lines["wav.scp"].append(f"{utt} wav/{utt}.wav")
        lines["text"].append(f"{utt} hello world number {i}")
        lines["utt2spk"].append(f"{utt} s{i % 2}")
        lines["utt2dom"].append(f"{utt} us")
    for name, rows in lines.items():
        (d / name).write_text("\n".join(rows) + "\n")
    spk = {}
    for i in range(n):
        spk.setdefault(f"s{i % 2}", []).append(f"u{i}")
    (d / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk.items())))
    return d


# ---------------------------------------------------------------- briefly trained ASR models

TOKENS = ("<blank>", "<unk>", "<space>", "a", "b", "c", "d", "e", "<sos/eos>")
TEXTS = ("abc dea", "bad cab ed", "ace")
ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


def speech_batch(lengths=(12000, 16000, 9000)):
    """A :class:`~kd.data.batching.Batch` of noise utterances transcribed with :data:`TEXTS`."""
    import torch

    from kd.data.batching import Batch

    g = torch.Generator().manual_seed(1)
    speech = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        speech[i, :n] = 0.1 * torch.randn(n, generator=g)
    n = len(lengths)
    return Batch([f"u{i}" for i in range(n)], speech, torch.tensor(lengths), list(TEXTS[:n]), ["s"] * n, ["d"] * n)


def train_briefly(model, batch, tokenizer, *, steps: int, lr: float = 3e-3, seed: int = 0):
    """Fit the model to a few utterances (Adam, full batch) so that it emits real hypotheses.

    A randomly initialised decoder predicts <eos> (or one token) everywhere, which would make
    comparisons between decoders trivially equal.
    """
    import torch

    ids = [tokenizer.encode(t) for t in batch.texts]
    text = torch.full((len(ids), max(map(len, ids))), -1)
    for i, seq in enumerate(ids):
        text[i, : len(seq)] = torch.tensor(seq)
    lengths = torch.tensor([len(seq) for seq in ids])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(batch.speech, batch.speech_lengths, text, lengths, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_model_dir(directory: Path, corpus_root: Path, *, steps: int, **overrides) -> Path:
    """A tiny model fitted to the four target-domain test utterances, saved as a model dir."""
    import torch

    from kd.data.batching import AudioDataset, collate
    from kd.data.datadir import load_data_dir
    from kd.data.text import CharTokenizer
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.models.model_dir import save_model_dir

    tokenizer = CharTokenizer.from_texts([ALPHABET])
    torch.manual_seed(0)
    model = build_asr_model(AsrConfig.tiny(vocab_size=tokenizer.vocab_size, **overrides), list(tokenizer.tokens))
    data = AudioDataset(load_data_dir(corpus_root / "target" / "test"))
    batch = collate([data[i] for i in range(len(data))])
    train_briefly(model, batch, tokenizer, steps=steps)
    save_model_dir(model, tokenizer, directory)
    return directory


# ---------------------------------------------------------------- Hugging Face models


def tiny_w2v2(path=None, *, stable: bool = True):
    """A randomly initialised 3-layer wav2vec 2.0 (hidden size 32), eager attention, in eval mode;
    saved with ``save_pretrained`` under ``path`` when given."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable)
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    model.set_attn_implementation("eager")
    if path is not None:
        model.save_pretrained(path)
    return model.eval()
