"""Checks that need a CUDA device (``pytest -m gpu``; ``tools/gpu_benchmarks.sh tests`` runs them)."""

from __future__ import annotations

import math

import pytest
import torch

from kd.testing import make_config, read_csv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs_train_on_cuda(tests_corpus, tmp_path, precision):
    from kd.training.checkpoint import latest_checkpoint, load_optimizer_state
    from kd.training.loop import train

    corpus = tests_corpus[0]
    # CTC's CUDA backward has no deterministic implementation: deterministic mode is for CPUs
    config = make_config([corpus / "us/train"], steps=4, optim={"mixed_precision": precision},
                         checkpoint={"every_steps": 2}, deterministic=False)
    result = train(config, tmp_path / "run")
    rows = read_csv(tmp_path / "run/log.csv")
    assert result.steps == 4 and all(math.isfinite(float(r["loss"])) for r in rows)
    state = load_optimizer_state(latest_checkpoint(tmp_path / "run/checkpoints"))
    assert ("scaler" in state) == (precision == "fp16")  # fp16 needs (and resumes) a gradient scaler
    resumed = train(make_config([corpus / "us/train"], steps=6, optim={"mixed_precision": precision},
                                checkpoint={"every_steps": 2}, deterministic=False), tmp_path / "run")
    assert resumed.resumed_from == 4 and resumed.steps == 6


def test_analyze_on_cuda_matches_cpu(tests_corpus, tmp_path):
    from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir
    from kd.testing import tiny_w2v2

    root, _ = tests_corpus
    tiny_w2v2(tmp_path / "model")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions, as on the CPU
    try:
        reports = {d: analyze_model_dir(tmp_path / "model", root / "us" / "train", tmp_path / d,
                                        AnalyzeConfig(device=d)) for d in ("cpu", "cuda")}
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for name in ("linear_cka", "svcca", "pwcca"):
        torch.testing.assert_close(torch.tensor(reports["cuda"].similarity[name]),
                                   torch.tensor(reports["cpu"].similarity[name]), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(reports["cuda"].attention["jsd_head_averaged"]),
                               torch.tensor(reports["cpu"].attention["jsd_head_averaged"]), atol=1e-4, rtol=0)


def test_bench_train_on_cuda_reports_memory_and_mfu(tests_corpus, tmp_path):
    from kd.bench.train import bench_train, peak_tflops

    result = bench_train(tests_corpus[0] / "us/train", tmp_path, preset="tiny", window=2, windows=2,
                         max_seconds=6.0)
    peak = peak_tflops(torch.device("cuda"))
    for name, v in result["variants"].items():
        assert v["peak_memory"] > 0, name
        if peak is not None:
            assert v["mfu"] == pytest.approx(v["tflops_per_s"] / peak)
    assert result["variants"]["kd_train"]["precision"] == "bf16"
    assert result["variants"]["espnet_default"]["precision"] == "fp32"
    # CUDA's own count of synchronising calls: the kd step waits less than ESPnet's loss functions
    kd, espnet = (result["variants"][n]["host_waits_per_step"] for n in ("kd_train", "espnet_default"))
    assert kd["cuda_synchronizations"] is not None and espnet["cuda_synchronizations"] is not None
    assert kd["cuda_synchronizations"] < espnet["cuda_synchronizations"]
