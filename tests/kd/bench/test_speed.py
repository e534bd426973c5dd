"""The speed benchmark: fields, protocol invariants and the written table."""

from __future__ import annotations

import json

import pytest
import torch

from kd.bench.speed import bench_speed, write_speed_results


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from kd.compression import compress, save_student
    from kd.plan import CompressionPlan
    from kd.ssl.config import SSLConfig
    from kd.ssl.pretrain import build_pretraining_model

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    teacher = build_pretraining_model(SSLConfig.from_preset("tiny", num_layers=4)).eval()
    teacher.save_pretrained(root / "teacher")
    pruned = CompressionPlan(keep_layers=(0, 3))
    save_student(compress(teacher, pruned), pruned, root / "pruned")
    shared = CompressionPlan(keep_layers=(0, 1, 2, 3), share_groups=((0, 1, 2),))
    save_student(compress(teacher, shared), shared, root / "shared")
    reuse = CompressionPlan(keep_layers=(0, 1, 2, 3), attention_reuse=((0, 1), (2, 3)))
    save_student(compress(teacher, reuse), reuse, root / "reuse")
    return root, teacher


def test_rows_have_sane_fields(model_dirs):
    root, teacher = model_dirs
    rows = bench_speed([root / "teacher", root / "pruned"], batch_sizes=(1, 2), seconds=0.5, device="cpu",
                       warmup=1, repeats=3)
    assert [(r["model"], r["batch_size"]) for r in rows] == [("teacher", 1), ("teacher", 2), ("pruned", 1),
                                                            ("pruned", 2)]
    for r in rows:
        assert r["latency_min_ms"] <= r["latency_ms"] <= r["latency_max_ms"] and r["latency_ms"] > 0
        assert r["rtf"] == pytest.approx(r["latency_ms"] / 1000.0 / (r["batch_size"] * r["seconds"]))
        assert r["device"].startswith("cpu") and r["dtype"] == "float32" and r["repeats"] == 3
    by_model = {r["model"]: r["parameters"] for r in rows}
    # a pre-training model is timed (and counted) without its quantiser and projection heads
    assert by_model["teacher"] == sum(p.numel() for p in teacher.wav2vec2.parameters())
    layer = sum(p.numel() for p in teacher.wav2vec2.encoder.layers[1].parameters())
    assert by_model["teacher"] - by_model["pruned"] == 2 * layer  # 2 of 4 layers dropped


def test_shared_student_loads_through_load_student_and_counts_shared_tensors_once(model_dirs):
    root, teacher = model_dirs
    (row,) = bench_speed([root / "shared"], batch_sizes=(1,), seconds=0.25, device="cpu", warmup=0, repeats=1)
    layer = sum(p.numel() for p in teacher.wav2vec2.encoder.layers[1].parameters())
    assert row["parameters"] == sum(p.numel() for p in teacher.wav2vec2.parameters()) - 2 * layer


def test_written_json_and_markdown_have_one_row_per_model_and_batch(model_dirs, tmp_path):
    root, _ = model_dirs
    rows = bench_speed([root / "teacher", root / "pruned"], batch_sizes=(1, 3), seconds=0.25, device="cpu",
                       warmup=0, repeats=2)
    write_speed_results(rows, tmp_path / "speed.json", tmp_path / "speed.md")
    assert json.loads((tmp_path / "speed.json").read_text())["results"] == json.loads(json.dumps(rows))
    lines = (tmp_path / "speed.md").read_text().splitlines()
    assert lines[0].startswith("| model | attention | parameters (M) | batch |") and lines[1].startswith("| --- |")
    body = [line.split("|")[1:5] for line in lines[2:]]
    assert [(m.strip(), b.strip()) for m, _, _, b in body] == [("teacher", "1"), ("teacher", "3"), ("pruned", "1"),
                                                              ("pruned", "3")]


def test_attention_implementation_is_chosen_and_recorded(model_dirs):
    """A reuse student runs fused reuse under sdpa and probability reuse under eager: the outputs
    agree, and each row records what ran."""
    from kd.compression.io import load_student
    from kd.compression.reuse import LeaderScores

    root, _ = model_dirs
    rows = {a: bench_speed([root / "reuse"], batch_sizes=(1,), seconds=0.25, device="cpu", warmup=0, repeats=1,
                           attn_implementation=a)[0] for a in ("sdpa", "eager")}
    assert rows["sdpa"]["attention"] == "sdpa" and rows["eager"]["attention"] == "eager"
    student = load_student(root / "reuse").eval()
    x = 0.1 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))
    stored = []
    store = student.wav2vec2.encoder.layers[0].attention.store
    put = store.put
    store.put = lambda i, a: (stored.append(type(a)), put(i, a))
    outputs = {}
    for a in ("sdpa", "eager"):
        student.set_attn_implementation(a)
        with torch.no_grad():
            outputs[a] = student.wav2vec2(x).last_hidden_state
    assert stored == [LeaderScores, LeaderScores, torch.Tensor, torch.Tensor]
    torch.testing.assert_close(outputs["sdpa"], outputs["eager"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="attn_implementation: expected 'sdpa', 'eager' or None, found 'flash'"):
        bench_speed([root / "reuse"], attn_implementation="flash")


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_sizes": (1, 0)}, "batch_sizes: expected an integer >= 1, found 0"),
    ({"seconds": 0}, "seconds: expected a number > 0, found 0"),
    ({"repeats": 0}, "repeats: expected an integer >= 1, found 0"),
])
def test_invalid_arguments_are_named(model_dirs, kwargs, message):
    root, _ = model_dirs
    with pytest.raises(ValueError, match=message):
        bench_speed([root / "teacher"], **kwargs)


def test_model_dirs_must_be_a_list(model_dirs):
    root, _ = model_dirs
    with pytest.raises(ValueError, match="model_dirs: expected a non-empty list"):
        bench_speed(str(root / "teacher"))
    with pytest.raises(ValueError, match=r"names: expected one name per model folder \(1\)"):
        bench_speed([root / "teacher"], names=["a", "b"])


def test_names_default_to_folder_names_made_unique(tmp_path):
    from kd.bench.speed import _default_names

    assert _default_names([tmp_path / "a" / "model", tmp_path / "b" / "model", tmp_path / "c"]) == [
        "a/model", "b/model", "c"]


@pytest.mark.slow  # 15 s (pre-training, fine-tuning, kd bench speed) on the 2-core machine; pytest -m slow
def test_ssl_and_bench_speed_cli(tests_corpus, tmp_path, capsys):
    """kd ssl pretrain -> kd ssl finetune -> kd bench speed, through the command line."""
    from transformers import Wav2Vec2ForCTC

    from kd.cli import main

    root, _ = tests_corpus
    data = [str(root / "us" / "train")]
    assert main(["ssl", "pretrain", "--data", *data, "--out", str(tmp_path / "pt"), "--preset", "tiny"]) == 0
    assert main(["ssl", "finetune", str(tmp_path / "pt"), "--data", *data, "--eval", str(root / "us" / "dev"),
                 "--out", str(tmp_path / "ft"), "--preset", "tiny"]) == 0
    ctc_dirs = [p.parent for p in (tmp_path / "ft").rglob("config.json")]
    assert ctc_dirs, "fine-tuning wrote no Hugging Face folder"
    Wav2Vec2ForCTC.from_pretrained(ctc_dirs[0])
    assert main(["bench", "speed", str(ctc_dirs[0]), "--batch-sizes", "1", "--seconds", "1", "--device", "cpu",
                 "--warmup", "1", "--repeats", "2", "--out", str(tmp_path / "s.json"),
                 "--table", str(tmp_path / "s.md")]) == 0
    assert (tmp_path / "s.md").read_text().count("\n|") >= 2


def test_an_asr_model_dir_is_timed_through_its_encode_path(tests_corpus, tmp_path):
    """A kd ESPnet ASR model dir: what runs is encode (front end, normalisation, encoder), what is
    counted are those parameters; its encoder output is the model's own."""
    from kd.bench.speed import AsrEncode
    from kd.compression import count_parameters
    from kd.models.model_dir import load_model_dir
    from kd.testing import make_model_dir

    root, _ = tests_corpus
    folder = make_model_dir(tmp_path / "asr", root, steps=1)
    rows = bench_speed([folder], batch_sizes=[1, 2], seconds=0.5, warmup=0, repeats=1, device="cpu")
    model, _ = load_model_dir(folder)
    espnet = model.espnet
    encode_params = sum(count_parameters(m) for m in (espnet.frontend, espnet.normalize, espnet.encoder) if m is not None)
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert {r["parameters"] for r in rows} == {encode_params} and encode_params < count_parameters(model)
    assert all(r["latency_ms"] > 0 and r["attention"] is None for r in rows)
    x = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.encode(x, torch.full((2,), 8000))[0]
        torch.testing.assert_close(AsrEncode(espnet).eval()(x), expected)
    with pytest.raises(ValueError, match="attn_implementation: applies to Hugging Face models; .*asr is an ESPnet"):
        bench_speed([folder], batch_sizes=[1], seconds=0.5, attn_implementation="eager")
