"""Cross-model layer similarity (checkpoints of a run, teacher vs student)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("espnet2")

from kd.analyze.compare import compare_models, pair_frames, save_comparison  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_pair_frames_same_rate_keeps_the_shorter_count():
    a, b = pair_frames(10, 25.0, 9, 25.0)
    assert a.tolist() == list(range(9)) and b.tolist() == list(range(9))


def test_pair_frames_pairs_centres_across_rates():
    # A at 25 Hz (40 ms), B at 50 Hz (20 ms): A frame i (centre 40i + 20 ms) pairs with B frame 2i + 0.5 -> 2i
    a, b = pair_frames(5, 25.0, 10, 50.0)
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert b.tolist() == [0, 2, 4, 6, 8] or b.tolist() == [1, 3, 5, 7, 9]
    # the pairing is symmetric in the order of the arguments
    b2, a2 = pair_frames(10, 50.0, 5, 25.0)
    assert a2.tolist() == a.tolist() and b2.tolist() == b.tolist()
    with pytest.raises(ValueError, match="expected at least one frame in each model"):
        pair_frames(0, 25.0, 3, 25.0)


def test_a_model_against_itself_and_against_a_pruned_student(tests_corpus, tmp_path):
    from kd.compression.asr import asr_student
    from kd.data.text import CharTokenizer
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.models.model_dir import save_model_dir
    from kd.plan import CompressionPlan

    corpus = tests_corpus[0]
    tokenizer = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz '"])
    torch.manual_seed(0)
    teacher = build_asr_model(AsrConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=3),
                              list(tokenizer.tokens)).eval()
    save_model_dir(teacher, tokenizer, tmp_path / "teacher")
    save_model_dir(asr_student(teacher, CompressionPlan(keep_layers=[0, 2])), tokenizer, tmp_path / "student")
    result = compare_models([tmp_path / "teacher", tmp_path / "student"], tmp_path / "teacher",
                            corpus / "us/dev", max_utterances=4)
    assert result.num_utterances == 4
    self_cka = torch.tensor(result.cka[0], dtype=torch.float64)
    assert self_cka.shape == (4, 4)  # input of the first layer + 3 layers
    torch.testing.assert_close(self_cka.diagonal(), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-9)
    assert torch.allclose(self_cka, self_cka.T, atol=1e-9)
    student = result.cka[1]
    assert len(student) == 3 and len(student[0]) == 4
    # the student's embedding and first layer are the teacher's: identical activations
    assert student[0][0] == pytest.approx(1.0, abs=1e-9) and student[1][1] == pytest.approx(1.0, abs=1e-9)
    assert result.same_layer(1) == [pytest.approx(v) for v in [student[0][0], student[1][1], student[2][2]]]
    paths = save_comparison(result, tmp_path / "cmp", labels=["teacher", "student"])
    saved = json.loads(paths[0].read_text())
    assert saved["same_layer_cka"][0] == pytest.approx([1.0] * 4, abs=1e-9)
    assert paths[1].stat().st_size > 1000
