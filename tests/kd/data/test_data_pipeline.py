"""Text normalisation, token inventories, batching, features and the LibriSpeech reader."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from kd.data import CharTokenizer, SentencePieceTokenizer, load_data_dir, load_librispeech, normalize_text
from kd.data.batching import AudioDataset, bucket_batches, collate, fbank, frame_labels
from kd.testing import make_data_dir


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", "hello world"),
    ("  don’t   STOP-believing ", "don't stop believing"),
    ("'Tis the dogs' café.", "tis the dogs cafe"),
    ("e-mail/fax_number 42", "e mail fax number 42"),
    ("?!...", ""),
    ("naïve façade", "naive facade"),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(normalize_text(raw)) == normalize_text(raw)  # idempotent


def test_char_tokenizer_layout_round_trip_and_save(tmp_path):
    tok = CharTokenizer.from_texts(["the cat", "a dog's day"])
    assert tok.tokens[:3] == ("<blank>", "<unk>", "<space>") and tok.tokens[-1] == "<sos/eos>"
    ids = tok.encode("The dog's cat!")
    assert 0 not in ids and tok.sos_eos not in ids
    assert tok.decode(ids) == "the dog's cat"
    tok.save(tmp_path / "tokens.txt")
    assert CharTokenizer.load(tmp_path / "tokens.txt") == tok
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="bad.txt: expected a token list"):
        CharTokenizer.load(tmp_path / "bad.txt")


def test_sentencepiece_train_encode_decode(tmp_path):
    texts = [f"the quick brown fox number {w} jumps over the lazy dog" for w in
             ["one", "two", "three", "four", "five", "six", "seven", "eight"]] * 5
    tok = SentencePieceTokenizer.train(texts, tmp_path / "sp", vocab_size=30)
    assert tok.tokens[0] == "<blank>" and tok.tokens[1] == "<unk>" and tok.tokens[-1] == "<sos/eos>"
    ids = tok.encode("The quick brown fox, number seven!")
    assert min(ids) >= 2 and max(ids) < tok.sos_eos
    assert tok.decode(ids) == "the quick brown fox number seven"


def test_bucket_batches_cover_everything_once_and_respect_budget():
    rng = np.random.default_rng(0)
    durations = list(rng.uniform(0.5, 6.0, size=200))
    batches = bucket_batches(durations, max_seconds=20.0, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    for b in batches:
        assert len(b) * max(durations[i] for i in b) <= 20.0 or len(b) == 1
    assert batches == bucket_batches(durations, max_seconds=20.0, seed=3)
    assert batches != bucket_batches(durations, max_seconds=20.0, seed=4)
    with pytest.raises(ValueError, match="max_seconds > 0"):
        bucket_batches(durations, max_seconds=0)


def test_dataset_collate_padding_and_masks(tmp_path):
    d = make_data_dir(tmp_path)
    sf.write(d / "wav" / "u2.wav", np.zeros(4000, np.float32), 16000, subtype="PCM_16")  # shorter
    data = load_data_dir(d)
    tok = CharTokenizer.from_texts(u.text for u in data.utterances)
    ds = AudioDataset(data, tok)
    batch = collate([ds[i] for i in range(3)])
    assert batch.speech.shape == (3, 8000)
    assert batch.speech_lengths.tolist() == [8000, 8000, 4000]
    assert batch.padding_mask[2].sum() == 4000 and not batch.padding_mask[2, 4000:].any()
    assert (batch.tokens[batch.tokens >= 0].numel()) == int(batch.token_lengths.sum())
    assert tok.decode(batch.tokens[0, : batch.token_lengths[0]].tolist()) == "hello world number 0"
    assert ds.durations() == [0.5, 0.5, 0.25]


def test_fbank_matches_per_utterance_and_padding_is_ignored():
    torch.manual_seed(0)
    a, b = torch.randn(16000) * 0.1, torch.randn(9000) * 0.1
    speech = torch.zeros(2, 16000)
    speech[0], speech[1, :9000] = a, b
    feats, frames = fbank(speech, torch.tensor([16000, 9000]))
    assert feats.shape == (2, 98, 80) and frames.tolist() == [98, 54]
    alone, _ = fbank(b[None], torch.tensor([9000]))
    torch.testing.assert_close(feats[1, :54], alone[0])
    assert (feats[1, 54:] == 0).all()


def test_frame_labels_from_intervals():
    index = {"sil": 0, "a": 1, "b": 2}
    labels = frame_labels([[0.0, 0.05, "sil"], [0.05, 0.12, "a"], [0.12, 0.2, "b"]], 12, 50.0, index)
    # 20 ms frames: centres 10, 30, 50, 70, ... ms
    assert labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1]


def test_librispeech_layout(tmp_path):
    root = tmp_path / "dev-clean"
    chapter = root / "84" / "121123"
    chapter.mkdir(parents=True)
    for i in range(2):
        sf.write(chapter / f"84-121123-000{i}.flac", np.zeros(1600, np.float32) + 0.01, 16000)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS\n")
    data = load_librispeech(root)
    assert [u.utt for u in data.utterances] == ["84-121123-0000", "84-121123-0001"]
    assert data.utterances[0].speaker == "84" and data.utterances[0].domain == "dev-clean"
    assert normalize_text(data.utterances[0].text) == "go do you hear"
    (chapter / "84-121123-0001.flac").unlink()
    with pytest.raises(ValueError, match=r"84-121123-0001.flac \[84-121123-0001\]: missing audio file"):
        load_librispeech(root)
    assert len(load_librispeech(root, skip_bad=True)) == 1
    with pytest.raises(FileNotFoundError, match="LibriSpeech layout"):
        load_librispeech(tmp_path)


def test_write_subset_is_seeded_and_complete(tests_corpus, tmp_path):
    from kd.data import read_alignments, write_subset

    src = tests_corpus[0] / "us/train"
    full = {u.utt: u for u in load_data_dir(src).utterances}
    a = write_subset(src, tmp_path / "a", 5, seed=0)
    again = write_subset(src, tmp_path / "again", 5, seed=0)
    other = write_subset(src, tmp_path / "other", 5, seed=1)
    sub = load_data_dir(a)  # spk2utt and utt2spk agree, every audio file is found and valid
    ids = [u.utt for u in sub.utterances]
    assert len(ids) == 5 and set(ids) <= set(full)
    assert ids == [u.utt for u in load_data_dir(again).utterances]
    assert ids != [u.utt for u in load_data_dir(other).utterances]
    for u in sub.utterances:  # same audio, transcript, speaker and domain as in the source
        f = full[u.utt]
        assert u.path.resolve() == f.path.resolve() and (u.text, u.speaker, u.domain) == (f.text, f.speaker, f.domain)
    assert (a / "wav.scp").read_text().split()[1].startswith("..")  # relative to the new dir
    assert sorted(read_alignments(a)) == sorted(ids)
    assert read_alignments(a)[ids[0]] == read_alignments(src)[ids[0]]
    with pytest.raises(ValueError, match=r"has 12 utterances, 13 were asked for"):
        write_subset(src, tmp_path / "b", 13)
    with pytest.raises(ValueError, match="num_utterances: expected an integer >= 1"):
        write_subset(src, tmp_path / "b", 0)
    with pytest.raises(ValueError, match="the destination is the source"):
        write_subset(src, src, 3)
