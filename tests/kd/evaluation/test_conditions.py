"""Error rates by recording condition of the built-in corpus (kd.evaluation.conditions)."""

from __future__ import annotations

import json

import pytest

from kd.evaluation.conditions import (condition_table, error_by_condition, read_manifest, read_utterances,
                                      utterance_conditions)


def record(utt, noise=None, snr=None, rt60=None, variant="m1", voice="en-029", rate=220):
    return {"path": f"wav/target/test/{utt}.wav", "speaker": utt[:3], "voice": voice, "variant": variant,
            "rate": rate, "noise": noise, "snr_db": snr, "rt60": rt60}


MANIFEST = {r["path"].split("/")[-1][:-4]: r for r in [
    record("s0-a"), record("s0-b", noise="pink", snr=5.0), record("s1-c", rt60=0.3, variant="klatt2"),
    record("s1-d", noise="babble", snr=20.0, rt60=0.5, variant="klatt2"),
]}
ROWS = [  # the clean utterance is right, the others have one wrong character out of 4 or 8
    {"utt": "s0-a", "ref": "abcd", "hyp": "abcd"},
    {"utt": "s0-b", "ref": "abcd", "hyp": "abce"},
    {"utt": "s1-c", "ref": "abcd efg", "hyp": "abcd efh"},
    {"utt": "s1-d", "ref": "abcd", "hyp": "abcx"},
]


def test_groups_and_rates():
    out = error_by_condition(ROWS, MANIFEST)
    assert out["all"]["all"] == {"utterances": 4, "wer": pytest.approx(3 / 5), "cer": pytest.approx(3 / 20)}
    assert out["clean_dry"]["clean and dry"] == {"utterances": 1, "wer": 0.0, "cer": 0.0}
    assert out["clean_dry"]["noise and/or reverberation"]["cer"] == pytest.approx(3 / 16)
    assert set(out["noise"]) == {"none", "pink", "babble"} and out["snr"]["5 dB"]["utterances"] == 1
    assert out["reverb"]["reverberant"]["cer"] == pytest.approx(2 / 12)
    assert out["synthesiser"]["klatt"]["utterances"] == 2
    assert utterance_conditions(MANIFEST["s1-d"])["speaker"] == "s1- (en-029, klatt2, 220 wpm)"


def test_table_and_errors(tmp_path):
    a = error_by_condition(ROWS, MANIFEST, conditions=("all", "noise"))
    b = error_by_condition(ROWS[:2], MANIFEST, conditions=("all", "noise"))
    table = condition_table({"A": a, "B": b})
    assert "| condition | group | utterances | A CER (%) | B CER (%) |" in table
    assert "| noise | babble | 1 | 25.0 | - |" in table  # B has no babble utterance
    with pytest.raises(ValueError, match="not in the corpus manifest"):
        error_by_condition([{"utt": "zz", "ref": "a", "hyp": "a"}], MANIFEST)
    with pytest.raises(ValueError, match="conditions: expected names"):
        error_by_condition(ROWS, MANIFEST, conditions=("loudness",))
    with pytest.raises(FileNotFoundError, match="no corpus manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(json.dumps(record("s9-z")) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: expected a JSON record"):
        read_manifest(tmp_path)
    (tmp_path / "u.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_utterances(tmp_path / "u.jsonl") == ROWS
