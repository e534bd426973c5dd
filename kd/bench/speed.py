"""Inference speed of speech encoders under one fixed protocol (``kd bench speed``).

Protocol, per model folder and batch size:

1. load the model (a Hugging Face checkpoint folder, or a compressed-student folder through
   :func:`kd.compression.load_student`), eval mode, on ``device``, with the attention
   implementation it was saved with or the one asked for (``attn_implementation``: ``"sdpa"``,
   the fused kernel, or ``"eager"``; for attention-reuse students this picks fused reuse or the
   reuse of materialised probabilities, see :mod:`kd.compression.reuse`);
2. input: a fixed random waveform batch ``[batch, seconds * 16000]`` (seed 0, amplitude 0.1, no
   padding, no attention mask), the same for every model;
3. ``warmup`` untimed forward passes, then ``repeats`` timed ones under ``torch.inference_mode``;
   on CUDA every timed pass is bracketed by ``torch.cuda.synchronize``;
4. latency = the median wall time of one forward pass over the batch (milliseconds);
   real-time factor = latency / (batch * seconds of audio) (below 1: faster than real time).

What runs: the whole model for ``*ForCTC`` and plain encoders; for ``*ForPreTraining`` only its
encoder (the quantiser and projection heads are training-only); for the toolkit's ESPnet ASR model
dirs (:mod:`kd.models.model_dir`) its ``encode``: front end, feature normalisation and encoder, the
part a compression plan prunes (the decoder's cost depends on the search). ``parameters`` counts the
part that runs, each shared tensor once.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from kd.core.io import atomic_write_text, write_json

__all__ = ["AsrEncode", "bench_speed", "speed_table", "write_speed_results"]

SAMPLE_RATE = 16000


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _inference_module(model: torch.nn.Module) -> torch.nn.Module:
    return model.base_model if type(model).__name__.endswith("ForPreTraining") else model


class AsrEncode(torch.nn.Module):
    """The ``encode`` path of an ESPnet ASR model (front end, normalisation, pre-encoder, encoder,
    post-encoder) as a module of a waveform batch without padding; only those parts are its submodules,
    so that moving it to a device or dtype and counting its parameters concern what runs."""

    def __init__(self, espnet_model: torch.nn.Module) -> None:
        super().__init__()
        names = ("frontend", "normalize", "preencoder", "encoder", "postencoder")
        self.parts = torch.nn.ModuleDict({n: m for n in names
                                          if isinstance(m := getattr(espnet_model, n, None), torch.nn.Module)})
        object.__setattr__(self, "_espnet", espnet_model)  # not a submodule: its decoder and CTC head do not run

    def forward(self, speech: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((speech.shape[0],), speech.shape[1], dtype=torch.long, device=speech.device)
        return self._espnet.encode(speech, lengths)[0]


def _load(model_dir: str | os.PathLike, attn_implementation: str | None) -> tuple[torch.nn.Module, str | None]:
    """The module that :func:`bench_speed` times and the attention implementation that runs in it."""
    from kd.compression.io import load_speech_model
    from kd.models.model_dir import CONFIG_NAME, load_model_dir

    path = Path(model_dir)
    if (path / CONFIG_NAME).is_file() and not (path / "config.json").is_file():  # a kd ASR model dir
        if attn_implementation is not None:
            raise ValueError(f"attn_implementation: applies to Hugging Face models; {path} is an ESPnet ASR model dir")
        model, _ = load_model_dir(path)
        return AsrEncode(model.espnet), None
    model = load_speech_model(path)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    return _inference_module(model), getattr(model.config, "_attn_implementation", None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")


def _default_names(model_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names; where two folders share a name, ``<parent>/<name>``."""
    paths = [Path(p) for p in model_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def bench_speed(model_dirs: Sequence[str | os.PathLike], *, batch_sizes: Sequence[int] = (1, 16),
                seconds: float = 8.0, device: str | torch.device | None = None, warmup: int = 3,
                repeats: int = 10, dtype: torch.dtype = torch.float32,
                names: Sequence[str] | None = None, attn_implementation: str | None = None) -> list[dict[str, Any]]:
    """Latency and real-time factor of each model at each batch size (see the module docstring).

    ``device``: ``None`` picks CUDA when available, else the CPU. ``dtype``: the weights and input
    type (e.g. ``torch.bfloat16`` on a GPU). ``names``: one display name per model (default: the
    folder names). Returns one row per (model, batch size) with
    ``model``, ``path``, ``parameters``, ``batch_size``, ``seconds``, ``latency_ms`` (median),
    ``latency_min_ms``, ``latency_max_ms``, ``rtf``, ``device``, ``dtype``, ``repeats``, ``torch``,
    ``attention`` (the attention implementation that ran).
    """
    from kd.compression import count_parameters

    if isinstance(model_dirs, (str, os.PathLike)) or not model_dirs:
        raise ValueError(f"model_dirs: expected a non-empty list of model folders, found {model_dirs!r}")
    if isinstance(batch_sizes, int) or not batch_sizes:
        raise ValueError(f"batch_sizes: expected a non-empty list of integers, found {batch_sizes!r}")
    for b in batch_sizes:
        _check_positive_int("batch_sizes", b)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds > 0:
        raise ValueError(f"seconds: expected a number > 0, found {seconds!r}")
    if names is None:
        names = _default_names(model_dirs)
    elif isinstance(names, str) or len(names) != len(model_dirs):
        raise ValueError(f"names: expected one name per model folder ({len(model_dirs)}), found {names!r}")
    if attn_implementation not in (None, "sdpa", "eager"):
        raise ValueError(f"attn_implementation: expected 'sdpa', 'eager' or None, found {attn_implementation!r}")
    _check_positive_int("warmup", warmup, 0)
    _check_positive_int("repeats", repeats)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    samples = int(round(seconds * SAMPLE_RATE))
    generator = torch.Generator().manual_seed(0)
    waveform = 0.1 * torch.randn(max(batch_sizes), samples, generator=generator)  # [B_max, S]

    rows = []
    for name, model_dir in zip(names, model_dirs):
        module, attention = _load(model_dir, attn_implementation)
        module = module.to(device=device, dtype=dtype).eval()
        params = count_parameters(module)
        for batch in batch_sizes:
            x = waveform[:batch].to(device=device, dtype=dtype)
            times = []
            with torch.inference_mode():
                for i in range(warmup + repeats):
                    _sync(device)
                    start = time.perf_counter()
                    module(x)
                    _sync(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
            latency = statistics.median(times)
            rows.append({"model": name, "path": str(model_dir), "parameters": params,
                         "batch_size": batch, "seconds": float(seconds), "latency_ms": 1000.0 * latency,
                         "latency_min_ms": 1000.0 * min(times), "latency_max_ms": 1000.0 * max(times),
                         "rtf": latency / (batch * seconds), "device": _device_name(device),
                         "dtype": str(dtype).removeprefix("torch."), "repeats": repeats, "torch": torch.__version__,
                         "attention": attention})
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def speed_table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table, one row per (model, batch size)."""
    lines = ["| model | attention | parameters (M) | batch | audio (s) | latency (ms, median) | RTF | device |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        lines.append(f"| {r['model']} | {r.get('attention') or '-'} | {r['parameters'] / 1e6:.3f} | {r['batch_size']} | "
                     f"{r['seconds']:g} | {r['latency_ms']:.1f} | {r['rtf']:.4f} | {r['device']} |")
    return "\n".join(lines) + "\n"


def write_speed_results(results: Sequence[dict[str, Any]], json_path: str | os.PathLike,
                        md_path: str | os.PathLike) -> None:
    """Write the rows as JSON (``{"results": [...]}``) and as a markdown table, atomically."""
    write_json(json_path, {"results": list(results)})
    atomic_write_text(md_path, speed_table(results))
