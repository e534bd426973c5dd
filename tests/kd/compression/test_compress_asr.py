"""Students of hybrid CTC/attention AsrModels built from a teacher's encoder and decoder layers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("espnet2")

from kd.compression import count_parameters  # noqa: E402
from kd.compression.asr import asr_student  # noqa: E402
from kd.models.asr import AsrConfig, build_asr_model  # noqa: E402
from kd.plan import CompressionPlan  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

V = 12


def teacher(seed=0, **overrides):
    torch.manual_seed(seed)
    config = AsrConfig.from_preset("tiny", vocab_size=V, encoder_layers=4, decoder_layers=3, **overrides)
    return build_asr_model(config).eval()


def batch():
    g = torch.Generator().manual_seed(3)
    speech = torch.randn(2, 8000, generator=g)
    lengths = torch.tensor([8000, 6400])
    text = torch.tensor([[3, 4, 5, 6], [7, 8, -1, -1]])
    return speech, lengths, text, torch.tensor([4, 2])


def full_output(model):
    """Encoder output and teacher-forced decoder logits, in eval mode."""
    speech, lengths, text, text_lengths = batch()
    with torch.no_grad():
        enc, enc_lens = model.espnet.encode(speech, lengths)
        ys_in = torch.where(text < 0, torch.full_like(text, V - 1), text)
        ys_in = torch.cat([torch.full((2, 1), V - 1), ys_in], dim=1)
        logits, _ = model.espnet.decoder(enc, enc_lens, ys_in, text_lengths + 1)
    return enc, logits


def test_plans_that_keep_every_layer_reproduce_the_teacher_exactly():
    t = teacher()
    s = asr_student(t, CompressionPlan(keep_layers=[0, 1, 2, 3]), CompressionPlan(keep_layers=[0, 1, 2]))
    for a, b in zip(full_output(t), full_output(s)):
        assert torch.equal(a, b)
    assert s.config == t.config
    assert count_parameters(s) == count_parameters(t)


def test_pruned_student_is_the_teacher_computation_through_the_kept_layers():
    t = teacher()
    s = asr_student(t, CompressionPlan(keep_layers=[0, 3]), CompressionPlan(keep_layers=[2]))
    assert (s.config.encoder_layers, s.config.decoder_layers) == (2, 1)
    # by hand: the teacher with its layer stacks replaced by the kept layers
    import copy

    by_hand = copy.deepcopy(t)
    enc_layers = by_hand.espnet.encoder.encoders
    by_hand.espnet.encoder.encoders = type(enc_layers)(enc_layers[0], enc_layers[3])
    dec_layers = by_hand.espnet.decoder.decoders
    by_hand.espnet.decoder.decoders = type(dec_layers)(dec_layers[2])
    for a, b in zip(full_output(by_hand), full_output(s)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the teacher is untouched
    assert t.config.encoder_layers == 4 and len(t.espnet.encoder.encoders) == 4


def test_share_groups_tie_weights_to_the_leaders_teacher_layer_and_cut_parameters():
    t = teacher()
    s = asr_student(t, CompressionPlan(keep_layers=[0, 1, 3], share_groups=[[1, 2]]),
                    CompressionPlan(keep_layers=[0, 2], share_groups=[[0, 1]]))
    assert s.config.encoder_share_groups == ((1, 2),)
    assert s.config.decoder_share_groups == ((0, 1),)
    enc, dec = s.espnet.encoder.encoders, s.espnet.decoder.decoders
    assert enc[2].feed_forward.w_1.weight is enc[1].feed_forward.w_1.weight
    assert torch.equal(enc[2].feed_forward.w_1.weight, t.espnet.encoder.encoders[1].feed_forward.w_1.weight)
    assert dec[1].src_attn.linear_q.weight is dec[0].src_attn.linear_q.weight
    per_enc_layer = sum(p.numel() for p in t.espnet.encoder.encoders[0].parameters())
    per_dec_layer = sum(p.numel() for p in t.espnet.decoder.decoders[0].parameters())
    # 3 encoder layers stored as 2, 2 decoder layers stored as 1
    assert count_parameters(t) - count_parameters(s) == 2 * per_enc_layer + 2 * per_dec_layer
    # a model built from the student's config alone has the same structure (what training does)
    rebuilt = build_asr_model(s.config)
    rebuilt.load_state_dict(s.state_dict())
    assert count_parameters(rebuilt) == count_parameters(s)
    for a, b in zip(full_output(rebuilt.eval()), full_output(s)):
        assert torch.equal(a, b)


def test_shared_weights_stay_tied_through_training_steps():
    config = AsrConfig.from_preset("tiny", vocab_size=V, encoder_layers=3, encoder_share_groups=[[0, 1, 2]])
    torch.manual_seed(0)
    model = build_asr_model(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    speech, lengths, text, text_lengths = batch()
    for _ in range(2):
        optimizer.zero_grad()
        model(speech, lengths, text, text_lengths).loss.backward()
        optimizer.step()
    layers = model.espnet.encoder.encoders
    assert layers[0].self_attn.linear_k.weight is layers[2].self_attn.linear_k.weight


@pytest.mark.parametrize("groups, message", [
    ([[0, 4]], r"AsrConfig.encoder_share_groups\[0\]: expected layer indices in 0..3, found 4"),
    ([[0]], r"AsrConfig.encoder_share_groups\[0\]: expected a list of at least 2 layer indices"),
    ([[0, 1], [1, 2]], r"AsrConfig.encoder_share_groups\[1\]: layer 1 is already in group 0"),
    ("0,1", r"AsrConfig.encoder_share_groups: expected a list of groups"),
])
def test_malformed_share_groups_name_the_field(groups, message):
    with pytest.raises(ValueError, match=message):
        AsrConfig.from_preset("tiny", vocab_size=V, encoder_layers=4, encoder_share_groups=groups)


def test_share_groups_round_trip_through_yaml():
    config = AsrConfig.from_preset("tiny", vocab_size=V, encoder_layers=4, decoder_layers=2,
                                   encoder_share_groups=[[1, 2, 3]], decoder_share_groups=[[0, 1]])
    assert AsrConfig.from_yaml(config.to_yaml()) == config


def test_bad_plans_are_refused():
    t = teacher()
    with pytest.raises(ValueError, match="out of range|beyond|teacher"):
        asr_student(t, CompressionPlan(keep_layers=[0, 5]))
    with pytest.raises(ValueError, match="attention reuse is not part of a trainable AsrModel student"):
        asr_student(t, CompressionPlan(keep_layers=[0, 1], attention_reuse=[[0, 1]]))
    with pytest.raises(TypeError, match="expected a kd.models.asr.AsrModel"):
        asr_student(torch.nn.Linear(2, 2), CompressionPlan(keep_layers=[0]))


def test_training_starts_from_a_student_model_dir(tests_corpus, tmp_path):
    from kd.data.text import CharTokenizer
    from kd.models.model_dir import save_model_dir
    from kd.training.checkpoint import load_weights
    from kd.training.config import TrainConfig
    from kd.training.loop import train

    corpus = tests_corpus[0]
    tokenizer = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz '"])
    torch.manual_seed(0)
    big = build_asr_model(AsrConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=3),
                          list(tokenizer.tokens))
    student = asr_student(big, CompressionPlan(keep_layers=[0, 2], share_groups=[[0, 1]]))
    save_model_dir(student, tokenizer, tmp_path / "student")
    config = TrainConfig.from_dict({
        "data": {"train": [str(corpus / "target/train")], "max_seconds": 10.0},
        "tokens": {"kind": "list", "path": str(tmp_path / "student/tokens.txt")},
        "model": {"preset": None, "init_from": str(tmp_path / "student")},
        "optim": {"lr": 1e-12, "schedule": "constant", "warmup_steps": 0, "max_steps": 1},
        "logging": {"progress": False, "tensorboard": False},
        "deterministic": True,
    })
    train(config, tmp_path / "run")
    after = load_weights(tmp_path / "run/model.safetensors")
    start = student.state_dict()
    assert after.keys() == start.keys()
    for k in start:
        torch.testing.assert_close(after[k], start[k], rtol=0, atol=1e-9)
    assert AsrConfig.from_yaml((tmp_path / "run/model_config.yaml").read_text()).encoder_share_groups == ((0, 1),)


def test_kd_compress_and_kd_compare_on_asr_model_dirs(tests_corpus, tmp_path, capsys):
    from kd.cli import main
    from kd.data.text import CharTokenizer
    from kd.models.model_dir import load_model_dir, save_model_dir

    corpus = tests_corpus[0]
    tokenizer = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz '"])
    t = build_asr_model(AsrConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=4,
                                              decoder_layers=2), list(tokenizer.tokens))
    save_model_dir(t, tokenizer, tmp_path / "teacher")
    CompressionPlan(keep_layers=[0, 1, 3], share_groups=[[1, 2]]).save(tmp_path / "enc.json")
    CompressionPlan(keep_layers=[1]).save(tmp_path / "dec.json")
    assert main(["compress", str(tmp_path / "teacher"), str(tmp_path / "enc.json"), "--decoder-plan",
                 str(tmp_path / "dec.json"), "--out", str(tmp_path / "student")]) == 0
    student, _ = load_model_dir(tmp_path / "student")
    assert (student.config.encoder_layers, student.config.decoder_layers) == (3, 1)
    assert student.config.encoder_share_groups == ((1, 2),)
    layers = student.espnet.encoder.encoders
    assert layers[1].feed_forward.w_2.weight is layers[2].feed_forward.w_2.weight  # tied again after loading
    # the shared layer is stored once: the file is one layer smaller than the unshared student's
    save_model_dir(asr_student(t, CompressionPlan(keep_layers=[0, 1, 3]), CompressionPlan(keep_layers=[1])),
                   tokenizer, tmp_path / "unshared")
    per_layer = sum(p.numel() for p in t.espnet.encoder.encoders[0].parameters()) * 4  # float32 bytes
    saved = ((tmp_path / "unshared/model.safetensors").stat().st_size
             - (tmp_path / "student/model.safetensors").stat().st_size)
    assert per_layer <= saved < per_layer + 4096  # + the alias metadata and header differences
    assert main(["compare", str(tmp_path / "student"), "--reference", str(tmp_path / "teacher"), "--data",
                 str(corpus / "us/dev"), "--out", str(tmp_path / "cmp"), "--max-utterances", "3",
                 "--device", "cpu"]) == 0
    assert "same-layer CKA 1.000 1.000" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--decoder-plan: only for kd ASR model dirs"):
        from kd.compression.apply import compress_model_dir

        (tmp_path / "hf").mkdir()
        (tmp_path / "hf/config.json").write_text("{}")
        compress_model_dir(tmp_path / "hf", tmp_path / "enc.json", tmp_path / "x", decoder_plan_path=tmp_path / "dec.json")
