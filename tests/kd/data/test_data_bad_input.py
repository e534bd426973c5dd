"""Every kind of bad input gets a clear error naming file and utterance, or a counted skip."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kd.cli import main
from kd.data import AudioError, DataDirError, Problem, load_data_dir, read_audio
from kd.data.batching import AudioDataset
from kd.data.text import CharTokenizer, UnknownCharacterError
from kd.testing import RATE, make_data_dir, tone


def _set_text(d: Path, utt: str, value: str) -> None:
    rows = [r for r in (d / "text").read_text().splitlines() if not r.startswith(utt + " ")]
    rows.append(f"{utt} {value}".rstrip() if value else utt)
    (d / "text").write_text("\n".join(sorted(rows)) + "\n")


def _corrupt(kind: str, d: Path) -> tuple[Problem, str]:
    """Apply one kind of damage to utterance u1; return the expected problem and file name."""
    wav = d / "wav" / "u1.wav"
    if kind == "missing":
        wav.unlink()
        return Problem.MISSING_AUDIO, "u1.wav"
    if kind == "corrupt":
        wav.write_bytes(b"this is not audio at all" * 20)
        return Problem.CORRUPT_AUDIO, "u1.wav"
    if kind == "empty_file":
        wav.write_bytes(b"")
        return Problem.EMPTY_AUDIO, "u1.wav"
    if kind == "zero_samples":
        sf.write(wav, np.zeros(0, np.float32), RATE, subtype="PCM_16")
        return Problem.EMPTY_AUDIO, "u1.wav"
    if kind == "truncated":
        data = wav.read_bytes()
        wav.write_bytes(data[: len(data) // 2])
        return Problem.TRUNCATED_AUDIO, "u1.wav"
    if kind == "sample_rate":
        sf.write(wav, tone(rate=8000), 8000, subtype="PCM_16")
        return Problem.SAMPLE_RATE, "u1.wav"
    if kind == "stereo":
        sf.write(wav, np.stack([tone(), tone()], axis=1), RATE, subtype="PCM_16")
        return Problem.CHANNELS, "u1.wav"
    if kind == "nan":
        x = tone()
        x[100:110] = np.nan
        sf.write(wav, x, RATE, subtype="FLOAT")
        return Problem.NAN_AUDIO, "u1.wav"
    if kind == "empty_transcript":
        _set_text(d, "u1", "")
        return Problem.EMPTY_TRANSCRIPT, "text"
    if kind == "punctuation_only":
        _set_text(d, "u1", "?! ...")
        return Problem.EMPTY_TRANSCRIPT, "text"
    if kind == "unknown_chars":
        _set_text(d, "u1", "hello 世界")
        return Problem.UNKNOWN_CHARACTERS, "text"
    if kind == "missing_id":
        rows = [r for r in (d / "utt2spk").read_text().splitlines() if not r.startswith("u1 ")]
        (d / "utt2spk").write_text("\n".join(rows) + "\n")
        return Problem.MISSING_ID, "utt2spk"
    if kind == "extra_id":
        with open(d / "text", "a") as f:
            f.write("u9 a transcript without audio\n")
        return Problem.MISSING_ID, "wav.scp"
    raise KeyError(kind)


KINDS = ["missing", "corrupt", "empty_file", "zero_samples", "truncated", "sample_rate", "stereo", "nan",
         "empty_transcript", "punctuation_only", "unknown_chars", "missing_id", "extra_id"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_raises_naming_file_and_utterance(tmp_path, kind):
    d = make_data_dir(tmp_path)
    problem, filename = _corrupt(kind, d)
    with pytest.raises(DataDirError) as err:
        load_data_dir(d, check_samples=True, charset=frozenset("abcdefghijklmnopqrstuvwxyz0123456789' "))
    issue = err.value.issue
    assert issue.problem is problem
    assert issue.file.endswith(filename)
    expected_utt = "u9" if kind == "extra_id" else "u1"
    assert issue.utt == expected_utt
    assert expected_utt in str(err.value) and filename in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_skip_counts_and_reports(tmp_path, kind):
    d = make_data_dir(tmp_path)
    problem, _ = _corrupt(kind, d)
    data = load_data_dir(d, skip_bad=True, check_samples=True,
                         charset=frozenset("abcdefghijklmnopqrstuvwxyz0123456789' "))
    skipped = "u9" if kind == "extra_id" else "u1"
    assert skipped not in [u.utt for u in data.utterances]
    assert data.skipped.count == 1
    assert data.skipped.by_problem() == {problem.value: 1}
    assert len(data) == (3 if kind == "extra_id" else 2)


@pytest.mark.parametrize("kind", KINDS)
def test_data_check_cli_reports_and_fails(tmp_path, kind, capsys):
    d = make_data_dir(tmp_path)
    problem, filename = _corrupt(kind, d)
    assert main(["data", "check", str(d)]) == 1
    out = capsys.readouterr().out
    utt = "u9" if kind == "extra_id" else "u1"
    assert f"[{utt}]" in out and filename in out and problem.value in out
    assert "1 problems in 1 utterances" in out or "problems in 1 utterances" in out


def test_data_check_clean_dir_passes(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    assert main(["data", "check", str(d)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "3 utterances" in out


def test_read_audio_errors_name_utterance(tmp_path):
    d = make_data_dir(tmp_path)
    _corrupt("stereo", d)
    with pytest.raises(AudioError, match=r"utterance 'u1': not mono: expected 1 channel, found 2"):
        read_audio(d / "wav" / "u1.wav", utt="u1")
    x = read_audio(d / "wav" / "u0.wav", utt="u0")
    assert x.dtype == np.float32 and x.shape == (8000,)


def test_read_audio_resamples_on_request(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.0, 8000), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match="expected 16000 Hz, found 8000 Hz"):
        read_audio(path)
    assert read_audio(path, resample=True).shape == (16000,)


def test_truncated_header_detected_even_when_decodable(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    from kd.data.audio import inspect_audio

    with pytest.raises(AudioError, match="truncated audio: header declares 16000 bytes of samples, file holds 15000"):
        inspect_audio(path)
    # a sane header is accepted
    assert struct.unpack("<4s", data[:4])[0] == b"RIFF"


def test_tokenizer_rejects_unknown_characters_with_utterance():
    tok = CharTokenizer.from_texts(["hello world"])
    with pytest.raises(UnknownCharacterError, match=r"utterance 'x7'.*'z'"):
        tok.encode("hello zed", utt="x7")
    assert tok.encode("hello zed", utt="x7", allow_unk=True).count(1) == 1


def test_dataset_fails_early_on_unknown_characters(tmp_path):
    d = make_data_dir(tmp_path)
    data = load_data_dir(d)
    tok = CharTokenizer.from_texts(["hello world number"])  # no digits
    with pytest.raises(UnknownCharacterError, match="utterance 'u0'"):
        AudioDataset(data, tok)


def test_pipe_entries_and_malformed_lines(tmp_path):
    d = make_data_dir(tmp_path)
    (d / "wav.scp").write_text("u0 sox in.wav -t wav - |\nu1 wav/u1.wav\nu2 wav/u2.wav\nu2 wav/u2.wav\n")
    with pytest.raises(DataDirError) as err:
        load_data_dir(d)
    assert err.value.issue.problem in (Problem.DUPLICATE_ID, Problem.UNSUPPORTED)
    data = load_data_dir(d, skip_bad=True)
    assert [u.utt for u in data.utterances] == ["u1"]
    assert data.skipped.by_problem() == {"duplicate utterance id": 1, "unsupported entry": 1}


def test_spk2utt_mismatch(tmp_path):
    d = make_data_dir(tmp_path)
    (d / "spk2utt").write_text("s0 u0\ns1 u1 u2\n")
    with pytest.raises(DataDirError, match=r"\[u2\].*utt2spk and spk2utt disagree"):
        load_data_dir(d)


def test_missing_required_file(tmp_path):
    d = make_data_dir(tmp_path)
    (d / "text").unlink()
    with pytest.raises(DataDirError, match=r"text: .*required file is missing"):
        load_data_dir(d)
