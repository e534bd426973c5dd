"""Layer-to-layer distillation (DistilHuBERT): the loss, the heads, and the training stage."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from kd.plan import CompressionPlan
from kd.ssl.layer_distill import LayerDistillConfig, PredictionHeads, layer_distill_loss
from kd.testing import shortest_subset_dir


def reference_loss(pred: np.ndarray, target: np.ndarray, lengths: list[int], cos_weight: float) -> float:
    """Float64 NumPy: mean over valid frames of mean|p - h| - w * log(sigmoid(cos(p, h)))."""
    terms = []
    for b, n in enumerate(lengths):
        for f in range(n):
            p, h = pred[b, f].astype(np.float64), target[b, f].astype(np.float64)
            cos = p @ h / (np.linalg.norm(p) * np.linalg.norm(h))
            terms.append(np.abs(p - h).mean() - cos_weight * np.log(1.0 / (1.0 + np.exp(-cos))))
    return float(np.mean(terms))


def tiny_teacher(layers: int = 4, seed: int = 0):
    from kd.ssl.config import SSLConfig
    from kd.ssl.pretrain import build_pretraining_model

    torch.manual_seed(seed)
    return build_pretraining_model(SSLConfig.from_preset("tiny", num_layers=layers)).eval()


# ---- the loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("average_layers", [False, True])
def test_loss_matches_a_hand_computation_and_ignores_padding(average_layers):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]  # [2, 5]
    preds, targets, expected = {}, {}, []
    for t in (2, 5):
        p, h = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
        expected.append(reference_loss(p.numpy(), h.numpy(), lengths, cos_weight=0.7))
        p[1, 3:] = float("nan")  # padding may hold anything
        h[1, 3:] = 1e6
        preds[t], targets[t] = p, h
    loss = layer_distill_loss(preds, targets, mask, cos_weight=0.7, average_layers=average_layers)
    assert loss.per_layer[2].item() == pytest.approx(expected[0], rel=1e-5)
    assert loss.per_layer[5].item() == pytest.approx(expected[1], rel=1e-5)
    total = sum(expected) / (2 if average_layers else 1)
    assert loss.total.item() == pytest.approx(total, rel=1e-5)


def test_padding_gets_no_gradient():
    pred = torch.randn(2, 4, 3, requires_grad=True)
    target = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    layer_distill_loss({0: pred}, {0: target}, mask).total.backward()
    assert torch.all(pred.grad[1, 2:] == 0) and torch.all(pred.grad[0] != 0)


def test_perfect_prediction_leaves_only_the_cosine_floor():
    h = torch.randn(1, 6, 4)
    loss = layer_distill_loss({3: h.clone(), 7: h.clone()}, {3: h, 7: h}, torch.ones(1, 6, dtype=torch.bool))
    floor = -np.log(1.0 / (1.0 + np.exp(-1.0)))  # -log sigmoid(1)
    assert loss.total.item() == pytest.approx(2 * floor, rel=1e-5)
    assert loss.l1[3].item() == 0.0 and loss.cos[7].item() == pytest.approx(1.0)


def test_loss_errors():
    x = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="for the same"):
        layer_distill_loss({0: x}, {1: x}, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one valid frame"):
        layer_distill_loss({0: x}, {0: x}, torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"layer 0: expected prediction and target \[B, T, D\]"):
        layer_distill_loss({0: x}, {0: torch.zeros(1, 3, 3)}, torch.ones(1, 2, dtype=torch.bool))


# ---- heads on a compressed student ----------------------------------------------------------
def test_identity_heads_on_a_full_copy_reproduce_the_teacher():
    from kd.compression import compress

    teacher = tiny_teacher()
    plan = CompressionPlan(keep_layers=(0, 1, 2, 3))
    student = compress(teacher, plan).eval()
    heads = PredictionHeads(plan.teacher_to_student(), 64, 64)
    x = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t_hidden = teacher.wav2vec2(x, output_hidden_states=True).hidden_states
        preds = heads(student.wav2vec2(x, output_hidden_states=True).hidden_states[1:])
    for t in range(4):
        torch.testing.assert_close(preds[t], t_hidden[t + 1])


def test_heads_follow_the_layer_map():
    heads = PredictionHeads({3: 1, 1: 0, 2: 1}, 4, 6)
    assert list(heads.layer_map) == [1, 2, 3] and set(heads.heads) == {"1", "2", "3"}
    out = heads([torch.zeros(1, 2, 4), torch.ones(1, 2, 4)])
    assert out[2].shape == (1, 2, 6)
    torch.testing.assert_close(out[2], heads.heads["2"](torch.ones(1, 2, 4)))


# ---- the stage ------------------------------------------------------------------------------
def test_distill_layers_lowers_the_loss_and_saves_a_student(tests_corpus, tmp_path):
    from kd.compression import load_student
    from kd.core.io import read_csv_log
    from kd.ssl.layer_distill import distill_layers

    root, _ = tests_corpus
    data = shortest_subset_dir(root / "target" / "train", tmp_path / "data", 2)  # one batch: the same every step
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    plan = CompressionPlan(keep_layers=(0, 2), layer_map={1: 0, 3: 1})
    student = tiny_teacher(layers=2, seed=1)  # a smaller, randomly initialised student
    config = LayerDistillConfig.from_preset("tiny", identity_init=False)
    result = distill_layers(teacher, student, plan, [data], tmp_path / "distill", config, progress=False)
    assert result.steps == config.optim.max_steps
    rows = read_csv_log(tmp_path / "distill" / "log.csv")
    losses = [r["loss"] for r in rows]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0]
    assert {"l1_1", "l1_3", "cos_1", "cos_3"} <= set(rows[0])
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # teacher frozen
    loaded = load_student(result.model_dir)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.apply_spec_augment  # config restored
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k])
    from safetensors.torch import load_file

    heads = load_file(str(tmp_path / "distill" / "heads.safetensors"))
    assert set(heads) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert json.loads((tmp_path / "distill" / "heads.json").read_text())["layer_map"] == {"1": 0, "3": 1}
    again = distill_layers(teacher, tiny_teacher(layers=2, seed=1), plan, [data], tmp_path / "distill", config,
                           progress=False)
    assert again.skipped


def test_distill_layers_rejects_a_student_of_the_wrong_depth(tmp_path):
    from kd.compression import compress
    from kd.ssl.layer_distill import distill_layers

    teacher = tiny_teacher()
    student = compress(teacher, CompressionPlan(keep_layers=(0, 1, 2)))
    with pytest.raises(ValueError, match=r"student: expected 2 Transformer layers .* found 3"):
        distill_layers(teacher, student, CompressionPlan(keep_layers=(0, 3)), ["unused"], tmp_path,
                       LayerDistillConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="out of range"):
        distill_layers(teacher, student, CompressionPlan(keep_layers=(0, 1, 9)), ["unused"], tmp_path,
                       LayerDistillConfig.from_preset("tiny"))


def test_config_round_trip_and_errors():
    config = LayerDistillConfig.from_preset("gpu")
    assert LayerDistillConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="cos_weight: expected a value >= 0, found -1"):
        dataclasses.replace(config, cos_weight=-1.0)
    with pytest.raises(ValueError, match="preset: expected one of"):
        LayerDistillConfig.from_preset("huge")


def test_cli_distills_a_student_built_by_the_plan(tests_corpus, tmp_path, capsys):
    from kd.cli import main
    from kd.compression import load_student
    from kd.core.io import read_csv_log

    root, _ = tests_corpus
    data = shortest_subset_dir(root / "target" / "train", tmp_path / "data", 2)
    tiny_teacher().save_pretrained(tmp_path / "teacher")
    CompressionPlan(keep_layers=(1, 3)).save(tmp_path / "plan.json")
    args = ["distill-layers", str(tmp_path / "teacher"), str(tmp_path / "plan.json"), "--data", str(data),
            "--out", str(tmp_path / "out"), "--preset", "tiny", "--set", "optim.max_steps=3", "optim.lr=0.001"]
    assert main(args) == 0
    assert len(read_csv_log(tmp_path / "out" / "log.csv")) == 3
    assert load_student(tmp_path / "out" / "student").config.num_hidden_layers == 2
    assert "after 3 updates" in capsys.readouterr().out
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    bad = args[:-2] + ["optim.stepz=3"]
    assert main(bad) == 2
    assert "LayerDistillConfig.optim: unknown field 'stepz'; expected one of" in capsys.readouterr().err
    assert main(args[:-2] + ["optim.steps=3"]) == 2  # the name before the one training stack
    assert "LayerDistillConfig.optim.steps: this setting is now optim.max_steps" in capsys.readouterr().err
    assert main(args[:-2] + ["max_steps=3"]) == 2  # the flat form this command took before KEY.PATH=VALUE
    assert "--set: 'max_steps' is an optimiser setting: set optim.max_steps" in capsys.readouterr().err


def test_cli_names_a_malformed_optimiser_value(tmp_path, capsys):
    from kd.cli import main

    tiny_teacher().save_pretrained(tmp_path / "teacher")
    CompressionPlan(keep_layers=(1, 3)).save(tmp_path / "plan.json")
    assert main(["distill-layers", str(tmp_path / "teacher"), str(tmp_path / "plan.json"), "--data", "unused",
                 "--out", str(tmp_path / "out"), "--preset", "tiny", "--set", "optim.max_steps=many"]) == 2
    assert "LayerDistillConfig.optim.max_steps: expected an integer or null, found 'many'" in capsys.readouterr().err
