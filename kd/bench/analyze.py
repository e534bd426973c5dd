"""``kd bench analysis`` (streamed all-pairs similarity) and ``kd bench analyze`` (``kd analyze`` end to end):
results to a JSON file and a markdown table in docs/bench/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kd.bench import machine_info
from kd.core.io import atomic_write_text, write_json


def bench_analysis(out_json: str | os.PathLike, out_md: str | os.PathLike | None = None, *, layers: int = 13,
                   dim: int = 256, frames: int = 50_000, device: str = "cpu", gpu_scale: bool = False,
                   threads: int | None = None, similarity: bool = True, scale_layers: int = 25,
                   scale_dim: int = 768, scale_frames: int = 1_000_000, scale_device: str = "cuda") -> dict:
    """All-pairs linear CKA + SVCCA + PWCCA, streamed vs a per-pair NumPy float64 baseline (same run).

    With ``gpu_scale`` also the GPU-size case: ``scale_layers`` x ``scale_dim`` x ``scale_frames``
    streamed on ``scale_device``, and again with a quarter of the frames, so that the peak memory
    of the two can be compared. ``similarity=False`` skips the CPU comparison (about 30 minutes
    on 2 cores, the NumPy side).
    """
    import torch

    from analysis.bench import bench_similarity, bench_streaming_scale

    if threads is not None:  # on a shared 2-core VM one thread is much faster than two (BLAS contention)
        torch.set_num_threads(threads)
    if not (similarity or gpu_scale):
        raise ValueError("bench_analysis: nothing to run (similarity=False and gpu_scale=False)")
    result: dict = {"machine": machine_info()}
    if similarity:
        result["similarity"] = bench_similarity(layers=layers, dim=dim, frames=frames, device=device)
    if gpu_scale:
        sizes = dict(layers=scale_layers, dim=scale_dim, device=scale_device)
        result["gpu_scale"] = bench_streaming_scale(frames=scale_frames, **sizes)
        result["gpu_scale_quarter"] = bench_streaming_scale(frames=scale_frames // 4, **sizes)
    write_json(out_json, result)
    if out_md is not None:
        atomic_write_text(out_md, analysis_table(result))
    return result


def analysis_table(result: dict) -> str:
    m = result["machine"]
    lines = ["# Analysis benchmark", ""]
    if "similarity" in result:
        s = result["similarity"]
        lines += [
            f"All-pairs linear CKA + SVCCA + PWCCA for {s['layers']} layers x {s['dim']} dims x {s['frames']} frames "
            f"on {s['device']} ({m['cpu_count']} cores, {s['threads']} thread(s), torch {m['torch']}, {m['date']}), "
            "streamed float64 moments against a straightforward per-pair NumPy float64 implementation of the same "
            "formulas, in the same run.",
            "",
            "| part | streamed (s) | per-pair NumPy (s) | max abs difference |",
            "| --- | ---: | ---: | ---: |",
        ]
        for part in ("cka", "svcca", "pwcca"):
            lines.append(f"| {part} | {s['streamed_seconds'][part]:.3f} | {s['baseline_seconds'][part]:.3f} | "
                         f"{s['max_abs_diff'][part]:.1e} |")
        lines.append(f"| accumulate moments | {s['streamed_seconds']['accumulate']:.3f} | - | - |")
        lines.append(f"| **total** | **{s['streamed_seconds']['total']:.2f}** | "
                     f"**{s['baseline_seconds']['total']:.2f}** | speedup **{s['speedup']:.1f}x** |")
    if "gpu_scale" in result:
        g, q = result["gpu_scale"], result["gpu_scale_quarter"]
        where = m.get("gpu", g["device"])
        lines += ["", f"Scale: {g['layers']} layers x {g['dim']} dims streamed on {where} (torch {m['torch']}, "
                  f"{m['date']}); the model's forward pass is not included.", "",
                  "| frames | accumulate (s) | GEMM TFLOP/s (fp64) | CKA (s) | SVCCA (s) | PWCCA (s) | total (s) "
                  "| peak memory (GiB) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in (q, g):
            p = r["pairwise_seconds"]
            total = r["accumulate_seconds"] + sum(p.values())
            memory = f"{r['peak_memory_bytes'] / 2**30:.2f}" if r["peak_memory_bytes"] is not None else "-"
            lines.append(f"| {r['frames']:,} | {r['accumulate_seconds']:.2f} | {r['gemm_tflops']:.1f} | "
                         f"{p['cka']:.2f} | {p['svcca']:.2f} | {p['pwcca']:.2f} | {total:.2f} | {memory} |")
    return "\n".join(lines) + "\n"


def random_base_checkpoint(out_dir: str | os.PathLike, **sizes) -> Path:
    """A randomly initialised wav2vec 2.0 base (12 layers x 768, 95M parameters) saved as a checkpoint folder.

    For timing only: its compute equals a trained base model's, its analysis values mean nothing.
    ``sizes``: ``Wav2Vec2Config`` fields over the base (a toy model for smoke runs).
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    path = Path(out_dir)
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        Wav2Vec2Model(Wav2Vec2Config(architectures=["Wav2Vec2Model"], **sizes)).save_pretrained(path)
    return path


def bench_analyze(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  device: str = "cpu", max_utterances: int | None = 200, out_json: str | os.PathLike | None = None,
                  out_md: str | os.PathLike | None = None, command: str | None = None) -> dict:
    """``kd analyze`` end to end on a model: seconds of audio analysed per second, and where the time goes."""
    from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir

    start = time.perf_counter()
    report = analyze_model_dir(model_dir, data_dir, out_dir, AnalyzeConfig(device=device,
                                                                          max_utterances=max_utterances))
    wall = time.perf_counter() - start
    result = {"machine": machine_info(), "model": str(model_dir), "data": str(data_dir), "device": device,
              "num_layers": report.num_layers, "utterances": report.num_utterances, "frames": report.num_frames,
              "wall_seconds_with_loading_and_figures": wall, "timing": report.extras["timing"], "command": command}
    if out_json is not None:
        write_json(out_json, result)
    if out_md is not None:
        atomic_write_text(out_md, analyze_table(result))
    return result


def analyze_table(result: dict) -> str:
    t, m = result["timing"], result["machine"]
    where = m.get("gpu") if result["device"].startswith("cuda") else f"CPU ({m['cpu_count']} cores)"
    lines = [
        "# `kd analyze` speed",
        "",
        f"Model `{result['model']}` ({result['num_layers']} layers) on `{result['data']}`: {result['utterances']} "
        f"utterances, {t['audio_seconds']:.1f} s of audio, {result['frames']} frames per layer, on {where}, "
        f"torch {m['torch']}, {m['date']}.",
        "",
        f"**{t['audio_seconds_per_second']:.2f} s of audio analysed per second** ({t['total_seconds']:.1f} s of "
        f"analysis; {result['wall_seconds_with_loading_and_figures']:.1f} s with model loading, report and figures).",
        "",
        "| phase | seconds | share |",
        "| --- | ---: | ---: |",
    ]
    for phase, seconds in t["seconds"].items():
        lines.append(f"| {phase} | {seconds:.1f} | {100 * seconds / t['total_seconds']:.0f}% |")
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"
