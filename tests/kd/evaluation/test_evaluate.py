"""Scoring (WER/CER with jiwer), the model directory format and the evaluation entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kd.data.batching import AudioDataset, collate
from kd.data.datadir import load_data_dir
from kd.data.text import CharTokenizer, normalize_text
from kd.evaluation.decode import DecodeConfig, DecodeMethod, decode
from kd.evaluation.evaluate import EvalReport, Score, UttResult, evaluate, score_texts, word_confusions
from kd.models.model_dir import ModelDirError, load_model_dir, save_model_dir
from kd.testing import ALPHABET, make_model_dir


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance by dynamic programming (independent of jiwer)."""
    d = np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(hyp) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return int(d[-1])


# ---------------------------------------------------------------- scoring


def test_hand_computed_example():
    s = score_texts(["a b c d"], ["a x c"])
    # b -> x is a substitution, d is deleted: 2 errors over 4 reference words
    assert s.wer == 0.5
    assert (s.substitutions, s.deletions, s.insertions, s.hits, s.ref_words) == (1, 1, 0, 2, 4)
    # characters "a b c d" -> "a x c": b -> x, then " d" deleted: 3 edits over 7 characters
    assert s.cer == pytest.approx(3 / 7)


def test_scores_pool_errors_over_the_corpus_and_match_an_independent_count():
    s = score_texts(["a b c d", "e f"], ["a b c d", "x"])
    assert s.wer == pytest.approx(2 / 6)  # not the mean of per-utterance rates (0 and 1)
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog"]
    refs = [" ".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(20)]
    hyps = [" ".join(rng.choice(words, size=rng.integers(0, 8))) for _ in range(20)]
    s = score_texts(refs, hyps)
    word_errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    char_errors = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, hyps))
    assert s.wer == pytest.approx(word_errors / sum(len(r.split()) for r in refs))
    assert s.cer == pytest.approx(char_errors / sum(len(r) for r in refs))
    assert s.substitutions + s.deletions + s.insertions == word_errors


def test_scoring_normalises_both_sides_and_rejects_bad_input():
    s = score_texts(["Hello, World!"], ["hello   world"])
    assert s.wer == 0.0 and s.cer == 0.0
    with pytest.raises(ValueError, match=r"references\[1\]: empty after normalisation"):
        score_texts(["a", "?!"], ["a", "b"])
    with pytest.raises(ValueError, match="Expected as many hypotheses as references"):
        score_texts(["a"], [])


def test_word_confusions_hand_computed_example():
    refs = ["eight eight two", "b d e", "b d e", "the code"]
    hyps = ["eight two", "b e e", "p d", "the code one"]
    # alignments: eight eight two / eight _ two (del eight); b d e / b e e (d -> e);
    # b d e / p d _ (b -> p, del e); the code _ / the code one (ins one)
    got = word_confusions(refs, hyps)
    assert got == {"substitutions": [["b", "p", 1], ["d", "e", 1]], "deletions": [["e", 1], ["eight", 1]],
                   "insertions": [["one", 1]]}
    assert word_confusions(["a b", "a b", "c"], ["a c", "a c", "d"], top=1)["substitutions"] == [["b", "c", 2]]
    # a run of substitutions is counted word by word (jiwer's alignment chunk spans both)
    assert word_confusions(["one two three"], ["won too three"])["substitutions"] == [["one", "won", 1],
                                                                                      ["two", "too", 1]]
    score = score_texts(refs, hyps)
    assert (sum(r[-1] for r in got["substitutions"]), sum(r[-1] for r in got["deletions"]),
            sum(r[-1] for r in got["insertions"])) == (score.substitutions, score.deletions, score.insertions)
    assert word_confusions([], []) == {"substitutions": [], "deletions": [], "insertions": []}
    with pytest.raises(ValueError, match="as many hypotheses as references"):
        word_confusions(["a"], [])


def test_markdown_table_format():
    s1 = Score(utterances=2, ref_words=10, wer=0.1, cer=0.05, substitutions=1, deletions=0, insertions=0, hits=9)
    s2 = Score(utterances=3, ref_words=10, wer=0.25, cer=0.125, substitutions=1, deletions=1, insertions=1, hits=8)
    all_ = Score(utterances=5, ref_words=20, wer=0.2, cer=0.1, substitutions=2, deletions=1, insertions=1, hits=17)
    report = EvalReport("exp/student", ["a", "b"], DecodeConfig(beam_size=4).to_dict(), "cpu", 2, 1_500_000,
                        1_600_000, 10.0, 2.5, 0.25, all_, {"target": s1, "us": s2})
    lines = report.to_markdown().splitlines()
    assert lines[0] == ("Model `exp/student`: 1.50 M parameters; decoding beam, beam 4, ctc_weight 0.3 on cpu "
                        "(2 threads): RTF 0.250 (2.5 s for 10.0 s of audio).")
    assert lines[2:] == [
        "| domain | utts | WER % | CER % | sub | del | ins |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| target | 2 | 10.00 | 5.00 | 1 | 0 | 0 |",
        "| us | 3 | 25.00 | 12.50 | 1 | 1 | 1 |",
        "| **all** | 5 | 20.00 | 10.00 | 2 | 1 | 1 |",
    ]


# ---------------------------------------------------------------- model directory


def tiny_model(vocab_size: int, seed: int = 0, **overrides):
    from kd.models.asr import AsrConfig, build_asr_model

    torch.manual_seed(seed)
    return build_asr_model(AsrConfig.tiny(vocab_size=vocab_size, **overrides), None)


def test_model_dir_round_trip(tmp_path):
    tokenizer = CharTokenizer.from_texts([ALPHABET])
    model = tiny_model(tokenizer.vocab_size).eval()
    save_model_dir(model, tokenizer, tmp_path / "m")
    loaded, loaded_tokenizer = load_model_dir(tmp_path / "m")
    assert loaded_tokenizer == tokenizer and loaded.config == model.config and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    g = torch.Generator().manual_seed(0)
    speech, lengths = 0.1 * torch.randn(2, 8000, generator=g), torch.tensor([8000, 6000])
    text, text_lengths = torch.tensor([[3, 4, 5], [6, 7, -1]]), torch.tensor([3, 2])
    with torch.no_grad():
        a = model(speech, lengths, text, text_lengths, generator=torch.Generator().manual_seed(1))
        b = loaded(speech, lengths, text, text_lengths, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.variances, b.variances)
    assert torch.equal(a.ctc_log_probs, b.ctc_log_probs) and torch.equal(a.loss, b.loss)


def test_model_dir_errors(tmp_path):
    tokenizer = CharTokenizer.from_texts([ALPHABET])
    model = tiny_model(tokenizer.vocab_size)
    with pytest.raises(ValueError, match=f"tokenizer: expected {tokenizer.vocab_size + 1} tokens"):
        save_model_dir(tiny_model(tokenizer.vocab_size + 1), tokenizer, tmp_path / "bad")
    d = tmp_path / "m"
    save_model_dir(model, tokenizer, d)
    (d / "model.safetensors").rename(d / "moved")
    with pytest.raises(ModelDirError, match=r"model.safetensors: missing from the model directory"):
        load_model_dir(d)
    (d / "moved").rename(d / "model.safetensors")

    tokens = (d / "tokens.txt").read_text().splitlines()
    (d / "tokens.txt").write_text("\n".join(tokens[:-2] + tokens[-1:]) + "\n")
    with pytest.raises(ModelDirError, match=f"tokens.txt: expected {len(tokens)} tokens .*found {len(tokens) - 1}"):
        load_model_dir(d)

    # weights of another architecture under this config
    save_model_dir(tiny_model(tokenizer.vocab_size, d_model=32), tokenizer, tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(d / "model.safetensors")
    (d / "tokens.txt").write_text("\n".join(tokens) + "\n")
    with pytest.raises(ModelDirError, match=r"model.safetensors: .*expected shape \(.*64.*\).*found"):
        load_model_dir(d)

    (d / "config.yaml").unlink()
    with pytest.raises(ModelDirError, match="config.yaml: missing"):
        load_model_dir(d)
    with pytest.raises(FileNotFoundError, match="Expected a model directory"):
        load_model_dir(tmp_path / "nowhere")


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def model_dir(tests_corpus, tmp_path_factory):
    root, _ = tests_corpus
    return make_model_dir(tmp_path_factory.mktemp("eval") / "model", Path(root), steps=80)


def test_evaluate_scores_each_domain(tests_corpus, model_dir, tmp_path):
    root = Path(tests_corpus[0])
    dirs = [root / "target" / "test", root / "us" / "test"]
    config = DecodeConfig(beam_size=2, ctc_weight=0.3)
    report = evaluate(model_dir, dirs, config, out_dir=tmp_path / "out")

    by_domain: dict[str, list[UttResult]] = {}
    for r in report.utterances:
        by_domain.setdefault(r.domain, []).append(r)
    assert {k: len(v) for k, v in by_domain.items()} == {"target": 4, "us": 4}
    assert list(report.domains) == ["target", "us"]
    for name, results in by_domain.items():
        assert report.domains[name] == score_texts([r.ref for r in results], [r.hyp for r in results])
    assert report.overall == score_texts([r.ref for r in report.utterances], [r.hyp for r in report.utterances])
    # the model was fitted to the target test utterances: it must score far better there
    assert report.domains["target"].wer < 0.5 < report.domains["us"].wer

    # references are the normalised transcripts, hypotheses what decode() gives
    model, tokenizer = load_model_dir(model_dir)
    for d in dirs:
        data = load_data_dir(d)
        dataset = AudioDataset(data)
        hyps = decode(model, collate([dataset[i] for i in range(len(dataset))]), config, tokenizer=tokenizer)
        got = {r.utt: r for r in report.utterances}
        for u, hyp in zip(data.utterances, hyps):
            assert got[u.utt].ref == normalize_text(u.text) and got[u.utt].hyp == hyp

    audio = sum(sf.info(str(u.path)).frames for d in dirs for u in load_data_dir(d).utterances) / 16000
    assert report.audio_seconds == pytest.approx(audio)
    assert report.decode_seconds > 0 and report.rtf == pytest.approx(report.decode_seconds / audio)
    head = model.config.d_model * model.config.vocab_size + model.config.vocab_size
    assert report.num_parameters_total - report.num_parameters == head

    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report.to_dict()))
    assert (out / "report.md").read_text() == report.to_markdown()
    assert (out / "hyp.txt").read_text().splitlines() == [f"{r.utt} {r.hyp}".rstrip() for r in report.utterances]
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    assert [(r["utt"], r["hyp"]) for r in rows] == [(r.utt, r.hyp) for r in report.utterances]
    confusions = json.loads((out / "confusions.json").read_text())
    assert sum(r[-1] for r in confusions["deletions"]) == report.overall.deletions
    assert sum(r[-1] for r in confusions["substitutions"]) == report.overall.substitutions
    assert "Most frequent word errors" in report.to_markdown()


def test_evaluate_without_utt2dom_names_the_group_after_the_data_dir(tests_corpus, model_dir, tmp_path):
    source = Path(tests_corpus[0]) / "uk" / "test"
    copy = tmp_path / "uk" / "eval"
    copy.mkdir(parents=True)
    data = load_data_dir(source)
    (copy / "wav.scp").write_text("".join(f"{u.utt} {u.path.resolve()}\n" for u in data.utterances))
    (copy / "text").write_text((source / "text").read_text())
    config = DecodeConfig(method=DecodeMethod.CTC_GREEDY)
    report = evaluate(model_dir, [copy], config, warmup=False)
    assert list(report.domains) == ["uk/eval"] and report.domains["uk/eval"].utterances == len(data)
    assert report.decode["method"] == "ctc_greedy"
    with pytest.raises(TypeError, match="data_dirs: expected a list of data dirs"):
        evaluate(model_dir, str(copy), config)
    with pytest.raises(ValueError, match="also appears in"):
        evaluate(model_dir, [copy, copy], config)


def test_kd_eval_cli_writes_report_and_table(tests_corpus, model_dir, tmp_path, capsys):
    from kd.cli import main

    root, _ = tests_corpus
    out = tmp_path / "eval"
    assert main(["eval", str(model_dir), "--data", str(root / "target" / "test"), "--out", str(out),
                 "--method", "ctc-greedy", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert "| target |" in printed or "target" in printed
    assert (out / "hyp.txt").read_text().count("\n") == 4
    assert report["num_parameters"] > 0


def test_kd_eval_cli_batched_search_gives_espnets_hypotheses(tests_corpus, model_dir, tmp_path):
    """--batched-search decodes the batch together (kd.evaluation.beam): the same hypotheses as ESPnet's
    one-utterance search, and the report says which search ran."""
    from kd.cli import main

    root, _ = tests_corpus
    args = ["eval", str(model_dir), "--data", str(root / "target" / "test"), "--method", "beam", "--beam-size", "3",
            "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "espnet")]) == 0
    assert main([*args, "--out", str(tmp_path / "batched"), "--batched-search"]) == 0
    hyps = {name: (tmp_path / name / "hyp.txt").read_text() for name in ("espnet", "batched")}
    assert hyps["batched"] == hyps["espnet"] and hyps["espnet"].count("\n") == 4
    decode = {name: json.loads((tmp_path / name / "report.json").read_text())["decode"] for name in hyps}
    assert decode["batched"]["batched_search"] is True and decode["espnet"]["batched_search"] is False
