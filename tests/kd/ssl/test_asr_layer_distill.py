"""Layer-to-layer distillation of ESPnet ASR students (kd.ssl.asr_layer_distill): the loss it trains on, the
layer pairs, the teacher left alone, the saved student, and an exact resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from kd.compression.asr import asr_student
from kd.core.io import read_csv_log
from kd.plan import CompressionPlan
from kd.ssl.layer_distill import LayerDistillConfig
from kd.testing import ALPHABET, all_equal, shortest_subset_dir

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

FLOOR = -math.log(1.0 / (1.0 + math.exp(-1.0)))  # one layer predicted exactly: L1 0, -log sigmoid(cos = 1)


def teacher_and_tokens(**overrides):
    """A randomly initialised tiny 4-layer teacher without dropout (a training step then computes what eval
    mode computes) and its character inventory."""
    from kd.data.text import CharTokenizer
    from kd.models.asr import AsrConfig, build_asr_model

    tokenizer = CharTokenizer.from_texts([ALPHABET])
    torch.manual_seed(0)
    config = AsrConfig.tiny(vocab_size=tokenizer.vocab_size, encoder_layers=4, dropout_rate=0.0, **overrides)
    return build_asr_model(config, list(tokenizer.tokens)).eval(), tokenizer


def tiny_config(**fields) -> LayerDistillConfig:
    return LayerDistillConfig.from_preset("tiny", deterministic=True, **fields)


def with_optim(config: LayerDistillConfig, **fields) -> LayerDistillConfig:
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, **fields))


@pytest.fixture
def data(tests_corpus, tmp_path):
    """Two utterances of different lengths: one micro-batch, with padding."""
    root, _ = tests_corpus
    return shortest_subset_dir(root / "us" / "train", tmp_path / "data", 2)


def reference_loss(teacher, student, data_dir, pairs: dict[int, int]) -> float:
    """Float64 NumPy, from the models' own layer outputs on the batch of ``data_dir``: the sum over teacher
    layers t of the mean over valid frames of mean|p - h| - log sigmoid(cos(p, h)), with h teacher layer t
    and p student layer pairs[t] (identity heads)."""
    from kd.data import load_data_dir
    from kd.data.batching import AudioDataset, collate

    dataset = AudioDataset(load_data_dir(data_dir))
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        h_teacher, frames = teacher.eval().encode_layers(batch.speech, batch.speech_lengths)
        h_student, _ = student.eval().encode_layers(batch.speech, batch.speech_lengths)
    assert len(set(frames.tolist())) == 2  # the shorter utterance is padded
    total = 0.0
    for t, s in pairs.items():
        terms = []
        for b, n in enumerate(frames.tolist()):
            h, p = h_teacher[t + 1][b, :n].double().numpy(), h_student[s + 1][b, :n].double().numpy()
            cos = (p * h).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(h, axis=-1))
            terms.append(np.abs(p - h).mean(-1) + np.log1p(np.exp(-cos)))
        total += float(np.concatenate(terms).mean())
    return total


# ---- the loss of the first update and the layer pairs ---------------------------------------------
PLANS = {
    # pruned: student layer s is paired with the teacher layer it was copied from
    "pruned": (CompressionPlan(keep_layers=(1, 3)), {1: 0, 3: 1}),
    # shared: the teacher's depth, student layer s paired with teacher layer s whatever weights it uses
    "shared": (CompressionPlan(keep_layers=(0, 1, 2, 3), share_groups=((1, 0), (2, 3))), {0: 0, 1: 1, 2: 2, 3: 3}),
    # an explicit layer map: teacher layers 1 and 3 predicted from the two kept layers 0 and 2
    "mapped": (CompressionPlan(keep_layers=(0, 2), layer_map={1: 0, 3: 1}), {1: 0, 3: 1}),
}


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_first_update_trains_on_the_loss_of_the_paired_layers(kind, data, tmp_path):
    from kd.ssl.asr_layer_distill import distill_asr_layers

    plan, pairs = PLANS[kind]
    teacher, tokenizer = teacher_and_tokens()
    student = asr_student(teacher, plan)
    expected = reference_loss(teacher, student, data, pairs)
    out = tmp_path / "distill"
    distill_asr_layers(teacher, student, plan, tokenizer, [data], out, with_optim(tiny_config(), max_steps=1),
                       progress=False)
    first = read_csv_log(out / "log.csv")[0]
    assert first["loss"] == pytest.approx(expected, rel=2e-5)
    assert {k for k in first if k.startswith("l1_")} == {f"l1_{t}" for t in pairs}
    assert json.loads((out / "heads.json").read_text())["layer_map"] == {str(t): s for t, s in pairs.items()}


def test_a_student_that_keeps_every_layer_starts_at_the_cosine_floor(data, tmp_path):
    """Identity heads on exact copies: every layer predicted exactly at the first update."""
    from kd.ssl.asr_layer_distill import distill_asr_layers

    teacher, tokenizer = teacher_and_tokens()
    plan = CompressionPlan(keep_layers=(0, 1, 2, 3))
    config = with_optim(tiny_config(), max_steps=1)
    distill_asr_layers(teacher, asr_student(teacher, plan), plan, tokenizer, [data], tmp_path / "d", config,
                       progress=False)
    first = read_csv_log(tmp_path / "d" / "log.csv")[0]
    assert first["loss"] == pytest.approx(4 * FLOOR, rel=1e-5)
    for t in range(4):
        assert first[f"l1_{t}"] == 0.0 and first[f"cos_{t}"] == pytest.approx(1.0)


def test_shared_weights_stay_shared(data, tmp_path):
    from kd.models.model_dir import load_model_dir
    from kd.ssl.asr_layer_distill import distill_asr_layers

    plan, _ = PLANS["shared"]
    teacher, tokenizer = teacher_and_tokens()
    student = asr_student(teacher, plan)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    config = with_optim(tiny_config(), max_steps=2, lr=5e-4)
    result = distill_asr_layers(teacher, student, plan, tokenizer, [data], tmp_path / "d", config, progress=False)
    loaded, _ = load_model_dir(result.model_dir)
    assert loaded.config.encoder_share_groups == ((1, 0), (2, 3))
    layers = dict(loaded.named_parameters(remove_duplicate=False))
    for leader, follower in ((1, 0), (2, 3)):
        for name in ("self_attn.linear_q.weight", "feed_forward.w_1.weight"):
            a, b = (layers[f"espnet.encoder.encoders.{i}.{name}"] for i in (leader, follower))
            assert a is b  # one set of weights, trained
            assert not torch.equal(a, before[f"espnet.encoder.encoders.{leader}.{name}"])


# ---- the stage ---------------------------------------------------------------------------------------
def test_distillation_lowers_the_loss_leaves_the_teacher_and_saves_a_model_dir(data, tmp_path):
    from kd.models.model_dir import load_model_dir
    from kd.ssl.asr_layer_distill import distill_asr_layers

    teacher, tokenizer = teacher_and_tokens(specaug_time_masks=1, specaug_time_ratio=0.05)
    teacher.train()  # put back in training mode afterwards
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    plan = CompressionPlan(keep_layers=(0, 2))
    student = asr_student(teacher, plan)
    # random heads: a loss well above the floor to come down from
    config = with_optim(tiny_config(identity_init=False), lr=5e-4)
    result = distill_asr_layers(teacher, student, plan, tokenizer, [data], tmp_path / "d", config, progress=False)
    assert result.steps == config.optim.max_steps == 6 and not result.skipped
    losses = [r["loss"] for r in read_csv_log(tmp_path / "d" / "log.csv")]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0]
    assert all_equal(teacher.state_dict(), frozen) and teacher.training
    assert student.espnet.specaug is not None  # the student trains without SpecAugment, saved with it
    loaded, loaded_tokens = load_model_dir(result.model_dir)
    assert loaded.config == student.config and list(loaded_tokens.tokens) == list(tokenizer.tokens)
    assert all_equal(loaded.state_dict(), student.state_dict())
    for name, p in loaded.named_parameters():  # only the encoder was trained
        if not name.startswith("espnet.encoder."):
            assert torch.equal(p, frozen[name]), name
    again = distill_asr_layers(teacher, asr_student(teacher, plan), plan, tokenizer, [data], tmp_path / "d", config,
                               progress=False)
    assert again.skipped and again.steps == 6


def test_freeze_feature_encoder_keeps_the_subsampling(data, tmp_path):
    from kd.ssl.asr_layer_distill import distill_asr_layers

    teacher, tokenizer = teacher_and_tokens()
    plan = CompressionPlan(keep_layers=(0, 2))
    student = asr_student(teacher, plan)
    config = with_optim(tiny_config(freeze_feature_encoder=True), max_steps=2, lr=5e-4)
    distill_asr_layers(teacher, student, plan, tokenizer, [data], tmp_path / "d", config, progress=False)
    trained = dict(student.named_parameters())
    start = teacher.state_dict()
    assert all(torch.equal(p, start[k]) for k, p in trained.items() if k.startswith("espnet.encoder.embed."))
    assert not torch.equal(trained["espnet.encoder.encoders.0.feed_forward.w_1.weight"],
                           start["espnet.encoder.encoders.0.feed_forward.w_1.weight"])
    assert all(p.requires_grad for p in student.parameters())  # as it was before


def test_interrupted_distillation_resumes_to_the_uninterrupted_weights(data, tmp_path, monkeypatch):
    """Killed after the checkpoint of update 2, run again from the same folders: it continues from that
    checkpoint and ends with exactly the student, heads and log of the run that was not interrupted."""
    import kd.ssl.asr_layer_distill as module
    from kd.models.model_dir import save_model_dir
    from kd.training.checkpoint import list_checkpoints, load_weights

    teacher, tokenizer = teacher_and_tokens()
    plan = CompressionPlan(keep_layers=(1, 3))
    save_model_dir(teacher, tokenizer, tmp_path / "teacher")
    save_model_dir(asr_student(teacher, plan), tokenizer, tmp_path / "student")
    plan.save(tmp_path / "plan.json")
    config = dataclasses.replace(with_optim(tiny_config(identity_init=False), max_steps=4, lr=5e-4),
                                 checkpoint=dataclasses.replace(tiny_config().checkpoint, every_steps=2))

    def run(out):
        return module.distill_asr_plan(tmp_path / "teacher", tmp_path / "plan.json", [data], out, config,
                                       student_dir=tmp_path / "student", progress=False)

    whole = run(tmp_path / "whole")
    loss = module.layer_distill_loss
    calls = []

    def killed_in_update_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    monkeypatch.setattr(module, "layer_distill_loss", killed_in_update_3)
    out = tmp_path / "parts"
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert [c.step for c in list_checkpoints(out / "checkpoints")] == [2]
    assert not (out / ".done.json").exists() and not (out / "student").exists()
    monkeypatch.setattr(module, "layer_distill_loss", loss)
    resumed = run(out)
    assert resumed.resumed_from == 2 and resumed.steps == 4 and not resumed.skipped
    assert all_equal(load_weights(whole.model_dir / "model.safetensors"),
                     load_weights(resumed.model_dir / "model.safetensors"))
    assert all_equal(load_weights(whole.out_dir / "heads.safetensors"), load_weights(out / "heads.safetensors"))
    full, parts = read_csv_log(whole.out_dir / "log.csv"), read_csv_log(out / "log.csv")
    assert [r["step"] for r in parts] == [1, 2, 3, 4]
    for column in ("loss", "lr", "grad_norm", "l1_1", "cos_3"):
        assert [r[column] for r in parts] == [r[column] for r in full], column


def test_errors_name_what_does_not_fit(tmp_path):
    from kd.ssl.asr_layer_distill import distill_asr_layers

    teacher, tokenizer = teacher_and_tokens()
    student = asr_student(teacher, CompressionPlan(keep_layers=(0, 1, 2)))
    config = tiny_config()
    with pytest.raises(ValueError, match=r"student: expected 2 encoder layers \(the plan keeps \[0, 3\]\), found 3"):
        distill_asr_layers(teacher, student, CompressionPlan(keep_layers=(0, 3)), tokenizer, ["unused"], tmp_path,
                           config)
    with pytest.raises(ValueError, match="out of range"):
        distill_asr_layers(teacher, student, CompressionPlan(keep_layers=(0, 1, 9)), tokenizer, ["unused"],
                           tmp_path, config)
    from kd.models.asr import InputLayer

    other, _ = teacher_and_tokens(input_layer=InputLayer.CONV2D6)
    with pytest.raises(ValueError, match="expected the teacher's input_layer"):
        distill_asr_layers(teacher, asr_student(other, CompressionPlan(keep_layers=(0, 1, 2))),
                           CompressionPlan(keep_layers=(0, 1, 2)), tokenizer, ["unused"], tmp_path, config)
    with pytest.raises(TypeError, match="config: expected a LayerDistillConfig"):
        distill_asr_layers(teacher, student, CompressionPlan(keep_layers=(0, 1, 2)), tokenizer, ["unused"],
                           tmp_path, config.to_dict())
