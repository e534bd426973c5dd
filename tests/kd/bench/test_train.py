"""``kd bench train``: every variant sees the same micro-batches; the table and MFU follow from the figures."""

from __future__ import annotations

import json

import pytest
import torch

from kd.testing import make_config

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def teacher(tests_corpus, tmp_path_factory):
    from kd.training.loop import train

    corpus = tests_corpus[0]
    run = tmp_path_factory.mktemp("bench_teacher") / "t"
    train(make_config([corpus / "us/train"], steps=2), run)
    return run


@pytest.fixture(scope="module")
def result(tests_corpus, teacher, tmp_path_factory):
    from kd.bench.train import bench_train

    out = tmp_path_factory.mktemp("bench_train")
    return out, bench_train(tests_corpus[0] / "us/train", out, teacher=teacher, preset="tiny", window=2, windows=2,
                            max_seconds=6.0, out_md=out / "train.md", settings=["model.overrides.dropout_rate=0.0"])


def test_variants_measure_the_same_batches(result):
    out, r = result
    variants = r["variants"]
    assert set(variants) == {"espnet_default", "kd_train", "kd_distill_online", "kd_distill_cached"}
    audio = variants["espnet_default"]["audio_seconds"]
    assert audio > 0
    for name, v in variants.items():
        assert v["steps"] == 4, name  # 2 windows of 2 steps after the warm-up window
        assert v["audio_seconds"] == pytest.approx(audio, rel=1e-5), name  # log.csv keeps 6 digits
        assert v["audio_s_per_s"] == pytest.approx(v["audio_seconds"] / v["seconds"])
        assert v["tflops_per_s"] == pytest.approx(r["flops_measured_steps"] / v["seconds"] / 1e12)
        assert v["mfu"] is None and v["peak_memory"] is None  # CPU: no datasheet peak, no CUDA memory
    assert variants["espnet_default"]["speedup_vs_espnet_default"] == 1.0
    assert variants["espnet_default"]["precision"] == "fp32" and variants["kd_train"]["precision"] == "fp32"
    assert r["cached_teacher_speedup"] == pytest.approx(
        variants["kd_distill_cached"]["audio_s_per_s"] / variants["kd_distill_online"]["audio_s_per_s"])
    assert r["cache_fill_seconds"] > 0
    assert json.loads((out / "train.json").read_text())["variants"].keys() == variants.keys()


def test_host_waits_per_step(result):
    _, r = result
    waits = {name: v["host_waits_per_step"] for name, v in r["variants"].items()}
    utterances = waits["kd_train"]["utterances"]
    assert utterances >= 2 and all(w["utterances"] == utterances for w in waits.values())
    # ESPnet's loss functions read two values per utterance (CTC targets and decoder inputs cut
    # out one by one); the kd loop's step reads none of its own
    assert waits["espnet_default"]["total"] >= waits["kd_train"]["total"] + 2 * utterances + 4
    assert waits["espnet_default"]["by_operator"]["index_bool"] >= utterances
    assert "index_bool" not in waits["kd_train"]["by_operator"]
    # online teachers add their own forward (ESPnet's encoder and decoder masks); the cache adds nothing
    assert waits["kd_distill_cached"]["total"] == waits["kd_train"]["total"]
    assert waits["kd_train"]["total"] < waits["kd_distill_online"]["total"] <= 2 * waits["kd_train"]["total"]


def test_cached_run_reads_the_prefilled_cache(result):
    out, _ = result
    # the bench filled <out>/teacher_cache; train() found it complete instead of filling its own
    assert (out / "teacher_cache" / "teacher-0").is_dir()
    assert not (out / "runs" / "kd_distill_cached" / "teacher_cache").exists()


def test_flops_cover_forward_and_backward(result, tests_corpus):
    """Training FLOPs of the measured steps exceed twice the forward FLOPs (backward ~ 2x forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from kd.bench.train import _training_data, step_batches
    from kd.data.batching import collate
    from kd.models.asr import build_asr_model

    out, r = result
    run = out / "runs" / "kd_train"
    from kd.training.config import TrainConfig

    config = TrainConfig.from_yaml(run / "config.yaml")
    data = _training_data(config, run)
    measured = step_batches(data.buckets, seed=config.seed, steps=config.optim.max_steps)[config.logging.every_steps:]
    model = build_asr_model(data.model_config, data.tokens).eval()
    forward = 0
    with torch.no_grad():
        for ids in measured:
            batch = collate([data.dataset[i] for i in ids])
            counter = FlopCounterMode(display=False)
            with counter:
                model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
            forward += counter.get_total_flops()
    assert 2.0 * forward < r["flops_measured_steps"] < 4.0 * forward


def test_table(result):
    out, r = result
    table = (out / "train.md").read_text()
    for name in r["variants"]:
        assert f"| {name} |" in table
    assert "no peak FLOP/s is known" in table
    assert "Cached teacher outputs:" in table
    assert "| host waits / step |" in table and "Host waits / step: operations in one training step" in table
    assert "`tiny` student (" in table and ", `--set model.overrides.dropout_rate=0.0`)" in table
    assert r["overrides"] == {"dropout_rate": 0.0} and r["settings"] == ["model.overrides.dropout_rate=0.0"]


def test_peak_and_mfu():
    from kd.bench.train import peak_tflops

    assert peak_tflops(torch.device("cpu")) is None


def test_settings_are_dotted_paths_over_the_shared_config():
    from kd.bench.train import bench_config

    config = bench_config("d", teacher=None, preset="tiny", window=2, windows=2, max_seconds=6.0, max_utterances=4,
                          mixed_precision="no", seed=0, settings=["model.overrides.d_model=64", "optim.lr=0.003"])
    assert config.model.preset == "tiny" and config.model.overrides == {"d_model": 64}
    assert config.optim.lr == 0.003 and config.optim.max_steps == 6 and config.optim.schedule.value == "constant"
    with pytest.raises(ValueError, match=r"^TrainConfig.optim: unknown field 'lr_max'; expected one of"):
        bench_config("d", teacher=None, preset="tiny", window=2, windows=2, max_seconds=6.0, max_utterances=4,
                     mixed_precision="no", seed=0, settings=["optim.lr_max=1"])


@pytest.mark.parametrize("item,message", [
    ("d_model=256", "--set: 'd_model' is a field of the student's AsrConfig: set model.overrides.d_model"),
    ("optim.lr", "--set: expected KEY.PATH=VALUE, found 'optim.lr'"),
    ("optim.warmup_step=3", "TrainConfig.optim: unknown field 'warmup_step' (did you mean 'warmup_steps'?)"),
])
def test_cli_rejects_flat_and_malformed_settings(tmp_path, capsys, item, message):
    """``--set`` reads KEY.PATH=VALUE; the flat AsrConfig fields it took before name their new dotted key."""
    from kd.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "train", "--data", "x", "--out", str(out), "--table", str(tmp_path / "t.md"),
                 "--set", item]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
