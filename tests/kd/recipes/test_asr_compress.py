"""kd.recipes.asr_compress: the verdict of a comparison, from per-utterance errors."""

from __future__ import annotations

import json

import pytest

from kd.recipes.asr_compress import TIE, compare


def _eval(folder, errors, words=5):
    folder.mkdir(parents=True)
    rows = [{"utt": f"u{i:02d}", "errors": e, "ref_words": words, "char_errors": 2 * e, "ref_chars": 4 * words}
            for i, e in enumerate(errors)]
    (folder / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_compare_names_the_better_side_only_when_the_interval_excludes_zero(tmp_path):
    few = {s: _eval(tmp_path / f"few{s}", [0, 1] * 20) for s in (0, 1)}
    many = {s: _eval(tmp_path / f"many{s}", [2, 3] * 20) for s in (0, 1)}
    noisy = {s: _eval(tmp_path / f"noisy{s}", [1, 0] * 20) for s in (0, 1)}
    # a makes 2 errors fewer per utterance of 5 words: 40 points, on every resample
    better = compare(few, many, metric="wer")
    assert better["better"] == "a" and better["diff"] == pytest.approx(-40.0) and better["ci95"][1] < 0
    assert compare(many, few, metric="cer")["better"] == "b"
    assert compare(few, many, metric="cer")["diff"] == pytest.approx(-20.0)  # 4 of 20 characters per utterance
    # the same total errors, spread differently: an interval around 0
    tie = compare(few, noisy, metric="wer")
    assert tie["better"] == TIE and tie["ci95"][0] < 0 < tie["ci95"][1]
    assert tie["seeds"] == 2 and tie["utterances"] == 40
    with pytest.raises(ValueError, match="same seeds"):
        compare(few, {0: many[0]}, metric="wer")
