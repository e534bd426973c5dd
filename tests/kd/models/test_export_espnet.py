"""Export to an ESPnet model folder: ESPnet's Speech2Text must decode it exactly as `kd eval` does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kd.data.batching import AudioDataset, collate
from kd.data.datadir import load_data_dir
from kd.data.text import normalize_text
from kd.evaluation.decode import DecodeConfig, decode, decode_ids
from kd.evaluation.evaluate import evaluate
from kd.models.export_espnet import espnet_config, export_espnet
from kd.models.model_dir import load_model_dir
from kd.testing import make_model_dir

# not the defaults, so that a setting the export forgot to carry over changes shapes or outputs
OVERRIDES = dict(n_fft=400, win_length=320, hop_length=128, n_mels=40, input_layer="conv2d6",
                 feature_norm="utterance_mean_var", ctc_weight=0.4, lsm_weight=0.1)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def exported(tests_corpus, tmp_path_factory):
    from kd.models.asr import FeatureNorm, InputLayer

    overrides = {**OVERRIDES, "input_layer": InputLayer(OVERRIDES["input_layer"]),
                 "feature_norm": FeatureNorm(OVERRIDES["feature_norm"])}
    base = tmp_path_factory.mktemp("export")
    model_dir = make_model_dir(base / "model", Path(tests_corpus[0]), steps=80, **overrides)
    config_path = export_espnet(model_dir, base / "espnet")
    return model_dir, config_path


@pytest.fixture(scope="module")
def utterances(tests_corpus):
    root = Path(tests_corpus[0])
    items = []
    for d in (root / "target" / "test", root / "us" / "test"):
        dataset = AudioDataset(load_data_dir(d))
        items += [dataset[i] for i in range(min(len(dataset), 3))]
    return items


def test_config_mirrors_the_model(exported):
    model_dir, config_path = exported
    model, tokenizer = load_model_dir(model_dir)
    conf = yaml.safe_load(config_path.read_text())
    assert conf["token_list"] == list(tokenizer.tokens) and conf["token_type"] == "char"
    assert conf["frontend"] == "default"
    assert conf["frontend_conf"] == {"fs": 16000, "n_fft": 400, "win_length": 320, "hop_length": 128,
                                     "n_mels": 40, "frontend_conf": None}
    assert conf["normalize"] == "utterance_mvn"
    assert conf["normalize_conf"] == {"norm_means": True, "norm_vars": True}
    enc, dec = conf["encoder_conf"], conf["decoder_conf"]
    assert (conf["encoder"], enc["output_size"], enc["attention_heads"], enc["linear_units"], enc["num_blocks"],
            enc["input_layer"]) == ("transformer", 64, 2, 128, 2, "conv2d6")
    assert (conf["decoder"], dec["attention_heads"], dec["linear_units"], dec["num_blocks"]) == ("transformer", 2,
                                                                                                   128, 1)
    assert conf["model_conf"]["ctc_weight"] == 0.4 and conf["model_conf"]["lsm_weight"] == 0.1
    assert conf == espnet_config(model.config, list(tokenizer.tokens))


def test_weights_are_plain_tensors_without_the_uncertainty_head(exported):
    model_dir, config_path = exported
    model, _ = load_model_dir(model_dir)
    state = torch.load(config_path.parent / "model.pth", weights_only=True)
    ours = model.espnet.state_dict()
    assert sorted(state) == sorted(ours)
    assert not any(k.startswith("uncertainty") for k in state)
    for name, tensor in ours.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("settings", [
    dict(beam_size=3, ctc_weight=0.3, penalty=0.0, maxlenratio=0.0),
    dict(beam_size=2, ctc_weight=0.5, penalty=0.5, maxlenratio=0.3, minlenratio=0.1),
    dict(beam_size=4, ctc_weight=0.0, penalty=-0.2, maxlenratio=0.0, normalize_length=True),
    dict(beam_size=2, ctc_weight=1.0, penalty=0.0, maxlenratio=0.0),
])
def test_speech2text_decodes_like_kd(exported, utterances, settings):
    from espnet2.bin.asr_inference import Speech2Text

    model_dir, config_path = exported
    s2t = Speech2Text(asr_train_config=str(config_path), asr_model_file=str(config_path.parent / "model.pth"),
                      device="cpu", nbest=1, **settings)
    # ESPnet loads non-strictly: check that it really holds our weights
    model, tokenizer = load_model_dir(model_dir)
    theirs = s2t.asr_model.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in model.espnet.state_dict().items())

    config = DecodeConfig(**settings)
    batch = collate(utterances)
    ours_ids = decode_ids(model, batch.speech, batch.speech_lengths, config)
    ours_text = decode(model, batch, config, tokenizer=tokenizer)
    for item, ids, text in zip(utterances, ours_ids, ours_text):
        (their_text, _, their_ids, _), = s2t(item["speech"].numpy())
        assert their_ids == ids, item["utt"]
        assert normalize_text(their_text) == text, item["utt"]
    assert len({tuple(ids) for ids in ours_ids}) > 1 and all(ours_ids)  # real, distinct hypotheses


def test_kd_eval_hypotheses_equal_speech2text(exported, tests_corpus, tmp_path):
    from espnet2.bin.asr_inference import Speech2Text

    model_dir, config_path = exported
    data_dir = Path(tests_corpus[0]) / "target" / "test"
    report = evaluate(model_dir, [data_dir], DecodeConfig(beam_size=3, ctc_weight=0.3), warmup=False)
    s2t = Speech2Text(asr_train_config=str(config_path), asr_model_file=str(config_path.parent / "model.pth"),
                      device="cpu", beam_size=3, ctc_weight=0.3)
    dataset = AudioDataset(load_data_dir(data_dir))
    theirs = {item["utt"]: normalize_text(s2t(item["speech"].numpy())[0][0])
              for item in (dataset[i] for i in range(len(dataset)))}
    assert {r.utt: r.hyp for r in report.utterances} == theirs


def test_export_refuses_weights_the_espnet_model_does_not_take(exported):
    from kd.models.export_espnet import _verify

    model_dir, config_path = exported
    model, tokenizer = load_model_dir(model_dir)
    state = dict(model.espnet.state_dict())
    state.pop("decoder.output_layer.bias")
    with pytest.raises(RuntimeError, match=r"missing \['decoder.output_layer.bias'\]"):
        _verify(espnet_config(model.config, list(tokenizer.tokens)), state, config_path)


def test_a_student_with_shared_layers_exports_with_every_layer_filled(exported, utterances, tmp_path):
    """ESPnet knows nothing of weight sharing: the export writes the shared weights into every layer."""
    from espnet2.bin.asr_inference import Speech2Text

    from kd.compression.asr import asr_student
    from kd.models.model_dir import save_model_dir
    from kd.plan import CompressionPlan

    model_dir, _ = exported
    teacher, tokenizer = load_model_dir(model_dir)
    depth = teacher.config.encoder_layers
    student = asr_student(teacher, CompressionPlan(keep_layers=list(range(depth)), share_groups=[[0, depth - 1]]))
    save_model_dir(student, tokenizer, tmp_path / "student")
    config_path = export_espnet(tmp_path / "student", tmp_path / "espnet")
    s2t = Speech2Text(asr_train_config=str(config_path), asr_model_file=str(config_path.parent / "model.pth"),
                      device="cpu", nbest=1, ctc_weight=0.3, beam_size=2)
    theirs = s2t.asr_model.state_dict()
    ours = student.espnet.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], v) for k, v in ours.items())
    assert torch.equal(theirs[f"encoder.encoders.{depth - 1}.feed_forward.w_1.weight"],
                       theirs["encoder.encoders.0.feed_forward.w_1.weight"])
