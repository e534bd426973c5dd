"""Hugging Face checkpoint folders as the Hub serves them: input normalisation and CTC evaluation.

References are computed the way ``transformers`` users do it: the folder's processor
(``Wav2Vec2Processor``: feature extractor + CTC tokenizer) prepares each utterance, the model
gives logits, and ``processor.batch_decode`` of the argmax ids gives the text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kd.models.hf_processor import InputSpec, normalize_waveforms, read_input_spec

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"


def _hub_ctc_folder(path, *, stable: bool = True, normalize: bool = True):
    """A tiny wav2vec 2.0 CTC checkpoint laid out like a Hub one: upper-case letters, '|' between words."""
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(LETTERS)}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=normalize, return_attention_mask=stable)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 16), conv_kernel=(10, 8, 16),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, vocab_size=len(vocab),
                         pad_token_id=0, feat_extract_norm="layer" if stable else "group",
                         do_stable_layer_norm=stable, conv_bias=stable)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(cfg).eval()
    with torch.no_grad():  # varied, mostly non-blank outputs, so that the transcripts say something
        model.lm_head.weight.normal_(0.0, 2.0)
        model.lm_head.bias[0] = -3.0
    model.save_pretrained(path)
    return path


def _reference_transcripts(folder, waves):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    processor = Wav2Vec2Processor.from_pretrained(folder)
    model = Wav2Vec2ForCTC.from_pretrained(folder).eval()
    out = []
    for wave in waves:
        inputs = processor(wave, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        # the tokenizer's grouped decoding (repeats merged on the whole path, then blanks dropped);
        # the other special tokens, which it writes out, are dropped as kd eval drops them
        text = processor.batch_decode(logits.argmax(-1))[0]
        for special in ("<unk>", "<s>", "</s>"):
            text = text.replace(special, "")
        out.append(text)
    return out


def test_normalize_waveforms_equals_the_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    rng = np.random.default_rng(0)
    waves = [rng.normal(0.3, 0.05, 900).astype(np.float32), rng.normal(-0.1, 0.2, 600).astype(np.float32),
             np.full(500, 0.25, dtype=np.float32)]  # a constant utterance becomes zeros
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    ref = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt").input_values
    speech = torch.zeros(3, 900)
    for i, w in enumerate(waves):
        speech[i, : len(w)] = torch.from_numpy(w)
    got = normalize_waveforms(speech, torch.tensor([900, 600, 500]))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got[1, 600:].abs().max() == 0 and got[2].abs().max() == 0
    assert float(got[0].mean()) == pytest.approx(0.0, abs=1e-6) and float(got[0].std(unbiased=False)) == pytest.approx(
        1.0, abs=1e-4)
    with pytest.raises(ValueError, match="lengths: expected values in 1..900"):
        normalize_waveforms(speech, torch.tensor([900, 0, 500]))


def test_read_input_spec(tmp_path):
    assert read_input_spec(tmp_path) == InputSpec(normalize=False)  # no preprocessor: raw waveforms
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"sampling_rate": 16000}))
    assert read_input_spec(tmp_path).normalize  # the feature extractor's default
    path.write_text(json.dumps({"sampling_rate": 16000, "do_normalize": False}))
    assert not read_input_spec(tmp_path).normalize
    for text, message in (("{not json", "not readable as JSON"), ("[1]", "expected a JSON object"),
                          ('{"do_normalize": "yes"}', "do_normalize: expected true or false"),
                          ('{"sampling_rate": 8000}', "sampling_rate: expected 16000")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            read_input_spec(tmp_path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("stable", [True, False], ids=["layer-norm", "group-norm"])
def test_kd_eval_of_a_hub_ctc_folder_equals_the_processor_pipeline(tests_corpus, tmp_path, stable):
    from kd.data import normalize_text
    from kd.evaluation.evaluate import evaluate

    root, _ = tests_corpus
    folder = _hub_ctc_folder(tmp_path / "hub", stable=stable)
    data = root / "target" / "test"
    report = evaluate(folder, [data], _greedy(), max_batch_seconds=20.0, warmup=False)
    waves = [_wave(u) for u in _utterances(data)]
    expected = [normalize_text(t) for t in _reference_transcripts(folder, waves)]
    got = [r.hyp for r in report.utterances]
    assert got == expected
    assert sum(len(h) for h in got) > 5 * len(got)  # the transcripts say something
    assert report.num_parameters == sum(p.numel() for p in torch.nn.Module.parameters(_load(folder)))
    assert report.rtf > 0 and report.overall.utterances == len(waves)


def test_raw_input_differs_from_normalised_input(tests_corpus, tmp_path):
    """The folder's do_normalize is what makes the parity above hold: without it the outputs change."""
    from kd.evaluation.hf_ctc import CTCTranscriber

    root, _ = tests_corpus
    folder = _hub_ctc_folder(tmp_path / "hub")
    (u,) = _utterances(root / "target" / "test")[:1]
    wave = torch.from_numpy(_wave(u))[None]
    lengths = torch.tensor([wave.shape[1]])
    normalised = CTCTranscriber.from_folder(folder)
    raw = CTCTranscriber(normalised.model, normalised.decode, blank=0, spec=InputSpec(normalize=False))
    assert normalised.spec.normalize
    assert not torch.allclose(normalised.logits(wave, lengths)[0], raw.logits(wave, lengths)[0], atol=1e-3)


def test_compressed_hub_student_keeps_the_processor_and_every_layer_reproduces(tests_corpus, tmp_path):
    from kd.compression.apply import compress_model_dir
    from kd.evaluation.evaluate import evaluate
    from kd.plan import CompressionPlan

    root, _ = tests_corpus
    folder = _hub_ctc_folder(tmp_path / "hub")
    CompressionPlan(keep_layers=(0, 1)).save(tmp_path / "all.json")
    CompressionPlan(keep_layers=(1,)).save(tmp_path / "one.json")
    full = compress_model_dir(folder, tmp_path / "all.json", tmp_path / "student_all")
    pruned = compress_model_dir(folder, tmp_path / "one.json", tmp_path / "student_one")
    for name in ("processor_config.json", "vocab.json", "tokenizer_config.json"):
        assert (full / name).read_bytes() == (folder / name).read_bytes()
    data = [root / "target" / "test"]
    teacher = evaluate(folder, data, _greedy(), warmup=False)
    same = evaluate(full, data, _greedy(), warmup=False)
    smaller = evaluate(pruned, data, _greedy(), warmup=False)
    assert [r.hyp for r in same.utterances] == [r.hyp for r in teacher.utterances]
    assert smaller.num_parameters < teacher.num_parameters


def test_kd_eval_cli_on_a_hub_folder(tests_corpus, tmp_path, capsys):
    from kd.cli import main

    root, _ = tests_corpus
    folder = _hub_ctc_folder(tmp_path / "hub")
    data = str(root / "target" / "test")
    assert main(["eval", str(folder), "--data", data, "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["decode"]["method"] == "ctc_greedy" and report["overall"]["utterances"] > 0
    capsys.readouterr()
    assert main(["eval", str(folder), "--data", data, "--method", "beam", "--device", "cpu"]) == 2
    assert "a Hugging Face CTC model decodes with method ctc_greedy and no LM, found method beam" in (
        capsys.readouterr().err)
    (folder / "vocab.json").unlink()
    assert main(["eval", str(folder), "--data", data, "--device", "cpu"]) == 2
    assert f"{folder}: no vocabulary; expected tokens.txt" in capsys.readouterr().err


def test_analysis_capture_honours_do_normalize(tests_corpus, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from analysis.capture import iter_activations, load_hf_encoder

    root, _ = tests_corpus
    folder = _hub_ctc_folder(tmp_path / "hub")
    utts = _utterances(root / "target" / "test")[:2]
    waves = [_wave(u) for u in utts]
    encoder = load_hf_encoder(str(folder))
    assert encoder.normalize
    speech = torch.zeros(2, max(len(w) for w in waves))
    for i, w in enumerate(waves):
        speech[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w in waves])
    got = list(iter_activations(encoder, [([u.utt for u in utts], speech, lengths)]))
    fe = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = Wav2Vec2ForCTC.from_pretrained(folder).eval()
    for wave, acts in zip(waves, got):
        with torch.no_grad():
            ref = model(**fe(wave, sampling_rate=16000, return_tensors="pt"), output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts.hidden[-1], ref[-1][0], atol=1e-4, rtol=1e-4)


# ---- helpers -----------------------------------------------------------------------------------
def _greedy():
    from kd.evaluation.decode import DecodeConfig, DecodeMethod

    return DecodeConfig(method=DecodeMethod.CTC_GREEDY)


def _utterances(data_dir):
    from kd.data import load_data_dir

    return load_data_dir(data_dir).utterances


def _wave(utt) -> np.ndarray:
    import soundfile as sf

    wave, rate = sf.read(utt.path, dtype="float32")
    assert rate == 16000
    return wave


def _load(folder):
    from transformers import Wav2Vec2ForCTC

    return Wav2Vec2ForCTC.from_pretrained(folder)


def test_normalising_teacher_convention_survives_distillation_and_finetuning(tests_corpus, tmp_path):
    """Layer distillation and CTC fine-tuning of a do_normalize checkpoint train on normalised
    waveforms and write the convention with their models, so that kd eval prepares them alike."""
    import dataclasses

    from kd.evaluation.evaluate import evaluate
    from kd.models.hf_processor import write_input_spec
    from kd.plan import CompressionPlan
    from kd.ssl.config import CTCConfig
    from kd.ssl.finetune import finetune_ctc
    from kd.ssl.layer_distill import LayerDistillConfig, distill_plan

    root, _ = tests_corpus
    data = root / "target" / "test"
    teacher = _hub_ctc_folder(tmp_path / "hub")
    (teacher / "processor_config.json").unlink()  # the older layout: preprocessor_config.json
    write_input_spec(teacher, InputSpec(normalize=True))
    distilled = distill_plan(teacher, CompressionPlan(keep_layers=(1,)), [data], tmp_path / "distill",
                             LayerDistillConfig.from_preset("tiny", optim=dataclasses.replace(
                                 LayerDistillConfig.from_preset("tiny").optim, max_steps=2)), progress=False)
    assert read_input_spec(distilled.model_dir).normalize
    tiny = CTCConfig.from_preset("tiny")
    result = finetune_ctc(distilled.model_dir, [data], tmp_path / "ctc",
                          dataclasses.replace(tiny, optim=dataclasses.replace(tiny.optim, max_steps=2)),
                          eval_dirs=[data], progress=False)
    assert read_input_spec(result.model_dir).normalize
    (metrics,) = result.metrics.values()
    report = evaluate(result.model_dir, [data], _greedy(), warmup=False)
    assert report.overall.wer == pytest.approx(metrics["wer"]) and report.overall.cer == pytest.approx(metrics["cer"])


def test_ctc_folder_errors_name_the_file(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from kd.evaluation.hf_ctc import CTCTranscriber

    folder = _hub_ctc_folder(tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": 4}))
    with pytest.raises(ValueError, match="the tokenizer's pad token \\(the CTC blank\\) has id 0, config.json's "
                                         "pad_token_id is 4"):
        CTCTranscriber.from_folder(folder)
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16,), conv_stride=(320,), conv_kernel=(400,), num_conv_pos_embeddings=8,
                                 num_conv_pos_embedding_groups=2)).save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="expected a CTC model .*Wav2Vec2Model, which has no CTC output layer"):
        CTCTranscriber.from_folder(tmp_path / "base")
