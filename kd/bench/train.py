"""``kd bench train``: throughput and model FLOP utilisation of the training loop.

One run, one model, one sequence of micro-batches, measured in turn by:

``espnet_default``
    A plain PyTorch loop written the way ESPnet's trainer runs by default: float32, no TF32
    matmuls, no compilation, ``torch.optim.Adam`` (multi-tensor), gradient clipping, and the
    per-step ``.item()`` reads of the loss and gradient norm that its reporter does.
``kd_train``
    :func:`kd.training.loop.train` itself with the bench's ``mixed_precision`` (bf16 on CUDA by
    default), TF32 and the fused Adam (CUDA), and no host-device synchronisation inside a
    logging window.
``kd_distill_online`` / ``kd_distill_cached`` (with ``--teacher``)
    :func:`kd.training.loop.train` distilling from a teacher run, its outputs computed on every batch
    or read from the disk cache. The one-off time to fill the cache is reported separately.

Throughput is seconds of training audio per wall second over the steps after a warm-up window
(data loading included, dev evaluation and checkpoints excluded). Model FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on one forward and backward pass of the student for
each measured micro-batch (matrix products, convolutions, attention); a teacher's forward pass
is not counted. MFU = counted FLOPs per second / the device's peak dense bf16 tensor FLOP/s
(the vendor's datasheet figure; on a CPU there is none and MFU is left empty unless
``--peak-tflops`` gives one).
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kd.core.io import atomic_write_text, write_json

__all__ = ["PEAK_TFLOPS", "bench_train", "peak_tflops", "train_table"]

# dense bf16 tensor-core peak, TFLOP/s, by device name (first match wins); vendor datasheets
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0),
               ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0))


def peak_tflops(device: torch.device) -> float | None:
    """The datasheet bf16 peak of a CUDA device, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ---------------------------------------------------------------- configuration and batches


def bench_config(data: str, *, teacher: str | None, preset: str, settings: Sequence[str] = (), window: int,
                 windows: int, max_seconds: float, max_utterances: int, mixed_precision: str, seed: int):
    """The TrainConfig every variant shares: a constant learning rate, no dev set, no periodic checkpoints;
    ``settings`` (``KEY.PATH=VALUE``, :func:`kd.core.config.with_overrides`) are set over it."""
    from kd.core.config import with_overrides
    from kd.training.config import TrainConfig

    tokens = {"kind": "list", "path": str(Path(teacher) / "tokens.txt")} if teacher else {"kind": "char"}
    return TrainConfig.from_dict(with_overrides({
        "data": {"train": [str(data)], "max_seconds": max_seconds, "max_utterances": max_utterances},
        "tokens": tokens,
        "model": {"preset": preset, "overrides": {}},
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 1, "max_steps": window * (windows + 1),
                  "mixed_precision": mixed_precision},
        "checkpoint": {"every_steps": 0, "at_epoch_end": False, "keep_last": 1, "average_best": 1},
        "logging": {"every_steps": window, "tensorboard": False, "progress": False},
        "seed": seed,
    }, settings))


def _with_kd(config, teacher: str, outputs: str, cache_dir: str | None):
    from kd.training.config import TrainConfig

    data = config.to_dict()
    data["kd"] = {"teachers": [{"run_dir": str(teacher)}], "teacher_outputs": outputs}
    if cache_dir is not None:
        data["kd"]["cache_dir"] = str(cache_dir)
    return TrainConfig.from_dict(data)


def step_batches(buckets: Sequence[Sequence[int]], *, seed: int, steps: int) -> list[list[int]]:
    """The micro-batch of each optimizer step of a one-process run without accumulation, in order."""
    from kd.training.data import epoch_batches

    order: list[list[int]] = []
    epoch = 0
    while len(order) < steps:
        order += epoch_batches(buckets, seed=seed, epoch=epoch, rank=0, world_size=1)
        epoch += 1
    return order[:steps]


@dataclass(frozen=True)
class _TrainingData:
    dataset: Any
    buckets: list
    model_config: Any
    tokens: list


def _training_data(config, run_dir: Path) -> _TrainingData:
    """The data, batches and model :func:`kd.training.loop.train` built for ``run_dir`` (read once per bench)."""
    from kd.data.batching import AudioDataset, bucket_batches
    from kd.models.asr import AsrConfig
    from kd.training.data import load_run_tokenizer
    from kd.training.setup import load_train_data, pool

    tokenizer = load_run_tokenizer(run_dir)
    dataset = AudioDataset(pool(load_train_data(config)), tokenizer)
    buckets = bucket_batches(dataset.durations(), max_seconds=config.data.max_seconds,
                             max_utterances=config.data.max_utterances, shuffle=False)
    model_config = AsrConfig.from_yaml((run_dir / "model_config.yaml").read_text(encoding="utf-8"))
    return _TrainingData(dataset, buckets, model_config, list(tokenizer.tokens))


# ---------------------------------------------------------------- the variants


def espnet_default_loop(config, data: _TrainingData, device: torch.device) -> dict:
    """The ESPnet-default-style loop over the micro-batches ``train`` used (``data``)."""
    from accelerate.utils import set_seed

    from kd.models.asr import build_asr_model
    from kd.training.data import make_loader

    dataset, model_config = data.dataset, data.model_config
    window, total = config.logging.every_steps, config.optim.max_steps
    order = step_batches(data.buckets, seed=config.seed, steps=total)
    set_seed(config.seed)
    model = build_asr_model(model_config, data.tokens).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                                 eps=config.optim.eps)
    noise = torch.Generator(device=device).manual_seed(config.seed)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, which ESPnet keeps
    _reset_memory(device)
    audio, start = 0.0, None
    try:
        for step, batch in enumerate(make_loader(dataset, order, num_workers=config.data.num_workers), start=1):
            if step == window + 1:
                _sync(device)
                start = time.perf_counter()
            if step > window:
                audio += float(batch.speech_lengths.sum()) / model_config.sample_rate
            batch = batch.to(device)
            # ESPnet's own loss functions, with their host reads (the reference the kd loop is compared to);
            # none of the kd model's batch checks, which ESPnet does not have
            out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=noise,
                        check=False, espnet_losses=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
            if not math.isfinite(float(grad_norm)):  # ESPnet skips the step on a non-finite norm
                optimizer.zero_grad()
                continue
            optimizer.step()
            optimizer.zero_grad()
            out.loss.item()  # the reporter's .item()
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"audio_seconds": audio, "seconds": seconds, "steps": total - window, "peak_memory": _peak_memory(device)}


def kd_loop(config, run_dir: Path, device: torch.device) -> dict:
    """:func:`kd.training.loop.train` into ``run_dir``; throughput from its log rows after the first window."""
    from kd.training.loop import train

    _reset_memory(device)
    result = train(config, run_dir, resume=False)
    with open(run_dir / "log.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[1:]
    if not rows:
        raise RuntimeError(f"{run_dir}/log.csv: expected rows after the warm-up window, found none")
    window = config.logging.every_steps
    seconds = sum(window / float(r["steps_per_s"]) for r in rows)
    audio = sum(float(r["audio_s_per_s"]) * window / float(r["steps_per_s"]) for r in rows)
    return {"audio_seconds": audio, "seconds": seconds, "steps": len(rows) * config.logging.every_steps,
            "peak_memory": _peak_memory(device), "final_loss": result.final_loss}


def count_flops(config, data: _TrainingData, device: torch.device) -> float:
    """FLOPs of one forward and backward pass of the student on every measured micro-batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from kd.models.asr import build_asr_model
    from kd.training.data import make_loader

    window, total = config.logging.every_steps, config.optim.max_steps
    measured = step_batches(data.buckets, seed=config.seed, steps=total)[window:]
    model = build_asr_model(data.model_config, data.tokens).to(device).train()
    noise = torch.Generator(device=device).manual_seed(0)
    flops, cache = 0, {}
    for ids, batch in zip(measured, make_loader(data.dataset, measured, num_workers=0)):
        key = tuple(ids)
        if key not in cache:
            batch = batch.to(device)
            counter = FlopCounterMode(display=False)
            with counter:
                out = model(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths, generator=noise)
                out.loss.backward()
            model.zero_grad(set_to_none=True)
            cache[key] = counter.get_total_flops()
        flops += cache[key]
    return float(flops)


def host_waits(config, data: _TrainingData, device: torch.device, *, espnet_default: bool = False) -> dict:
    """Operations that make the host wait for the device in one training step (kd.training.syncs).

    The step of the first measured micro-batch, as the variant runs it, from the copy of the
    batch to the device to the clipped gradients: the kd loop runs the training loop's own
    ``kd.training.steps.forward_backward`` (teachers online or from the cache, per ``config.kd``;
    the parts summed on the device); the ESPnet-default loop uses ESPnet's loss functions and reads the
    gradient norm and the loss. Not counted: the kd loop's batch check, which reads host
    tensors before the copy, and the optimizer step, whose non-fused Adam reads step counters
    kept on the host (on a CPU both would look like waits). Counted on any device (a lower
    bound off the GPU: copies to the host are not seen there).
    """
    from accelerate.utils import set_seed

    from kd.models.asr import build_asr_model
    from kd.training.config import TeacherOutputs
    from kd.training.data import make_loader
    from kd.training.steps import accumulate, forward_backward
    from kd.training.syncs import HostSyncCounter
    from kd.training.teachers import TeacherCache, load_teachers

    batch_ids = step_batches(data.buckets, seed=config.seed, steps=config.logging.every_steps + 1)[-1]
    batch = next(iter(make_loader(data.dataset, [batch_ids], num_workers=0)))
    set_seed(config.seed)
    model = build_asr_model(data.model_config, data.tokens).to(device).train()
    noise = torch.Generator(device=device).manual_seed(config.seed)
    teachers = cache = None
    if config.kd is not None and not espnet_default:
        if config.kd.teacher_outputs is TeacherOutputs.ONLINE:
            teachers = load_teachers(config.kd.teachers, data.tokens, device)
        else:  # the cache _fill_cache filled
            cache = TeacherCache(config.kd.cache_dir, len(config.kd.teachers), config.kd.loss.level)
    model.check_batch(batch.speech, batch.speech_lengths, batch.tokens, batch.token_lengths)
    lengths = batch.token_lengths.tolist()
    precision = config.optim.mixed_precision.value
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                              enabled=precision != "no" and not espnet_default)

    def step() -> None:
        if espnet_default:
            moved = batch.to(device)
            out = model(moved.speech, moved.speech_lengths, moved.tokens, moved.token_lengths, generator=noise,
                        check=False, espnet_losses=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
            math.isfinite(float(grad_norm))
            out.loss.item()
        else:  # the training loop's own micro-batch function (one micro-batch per step)
            window: dict = {}
            forward_backward(model, batch, teachers, cache, config, noise, device, lengths,
                             sample_rate=data.model_config.sample_rate, window=window, group=1,
                             backward=torch.Tensor.backward, autocast=autocast)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_norm)
            accumulate(window, {"grad_norm": grad_norm}, 1.0, device)

    _sync(device)
    cuda_syncs = None
    if device.type == "cuda":  # CUDA's own count: every synchronising call, copies to the host included
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught, HostSyncCounter() as counter:
                warnings.simplefilter("always")
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cuda_syncs = sum("synchroniz" in str(w.message) for w in caught)
    else:
        with HostSyncCounter() as counter:
            step()
    _sync(device)
    return {"total": counter.total, "by_operator": counter.by_operator(), "cuda_synchronizations": cuda_syncs,
            "utterances": len(batch_ids)}


def _fill_cache(config, data: _TrainingData, cache_dir: Path, device: torch.device) -> float:
    """Fill the teacher cache that ``train`` will read (same buckets, same key); seconds taken."""
    from kd.training.setup import new_accelerator
    from kd.training.teachers import TeacherCache, load_teachers

    accelerator = new_accelerator(mixed_precision=config.optim.mixed_precision.value)
    teachers = load_teachers(config.kd.teachers, data.tokens, accelerator.device)
    _sync(device)
    start = time.perf_counter()
    TeacherCache.build(cache_dir, specs=config.kd.teachers, teachers=teachers, dataset=data.dataset,
                       buckets=data.buckets,
                       level=config.kd.loss.level, dtype=config.kd.cache_dtype, accelerator=accelerator,
                       progress=False)
    _sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the benchmark


def bench_train(data: str | os.PathLike, out_dir: str | os.PathLike, *, teacher: str | os.PathLike | None = None,
                preset: str = "small", settings: Sequence[str] = (), window: int = 10, windows: int = 3,
                max_seconds: float = 60.0, max_utterances: int = 64, mixed_precision: str | None = None,
                peak: float | None = None, seed: int = 0, out_md: str | os.PathLike | None = None,
                command: str | None = None) -> dict:
    """Measure every variant on the same model and micro-batches; write ``out_dir/train.json`` (and ``out_md``).

    An untimed run of the loop comes first (the first run in a process pays one-off costs: page
    cache, allocator, kernel selection); in every variant ``window`` steps then warm up and
    ``windows`` windows of ``window`` steps are timed. ``settings`` (``KEY.PATH=VALUE``) are set over the
    TrainConfig the variants share (``model.overrides.d_model=256``: a field of the student's AsrConfig).
    """
    from kd.bench import machine_info

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if mixed_precision is None:
        mixed_precision = "bf16" if device.type == "cuda" else "no"
    config = bench_config(str(data), teacher=str(teacher) if teacher else None, preset=preset, settings=settings,
                          window=window, windows=windows, max_seconds=max_seconds, max_utterances=max_utterances,
                          mixed_precision=mixed_precision, seed=seed)  # first: a bad setting leaves no folder behind
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    variants: dict[str, dict] = {}
    kd_loop(config, _fresh(runs / "warm_up"), device)  # untimed: the first run in a process pays one-off costs
    variants["kd_train"] = kd_loop(config, _fresh(runs / "kd_train"), device)
    data = _training_data(config, runs / "kd_train")
    variants["espnet_default"] = espnet_default_loop(config, data, device)
    cache_seconds = None
    if teacher is not None:
        online = _with_kd(config, teacher, "online", None)
        variants["kd_distill_online"] = kd_loop(online, _fresh(runs / "kd_distill_online"), device)
        cache_dir = _fresh(out / "teacher_cache")
        cached = _with_kd(config, teacher, "cached", str(cache_dir))
        cache_seconds = _fill_cache(cached, data, cache_dir, device)
        variants["kd_distill_cached"] = kd_loop(cached, _fresh(runs / "kd_distill_cached"), device)
    waits = {"kd_train": host_waits(config, data, device),
             "espnet_default": host_waits(config, data, device, espnet_default=True)}
    if teacher is not None:
        waits["kd_distill_online"] = host_waits(online, data, device)
        waits["kd_distill_cached"] = host_waits(cached, data, device)
    for name, w in waits.items():
        variants[name]["host_waits_per_step"] = w
    flops_per_window = count_flops(config, data, device)
    peak = peak if peak is not None else peak_tflops(device)
    for name, v in variants.items():
        v["audio_s_per_s"] = v["audio_seconds"] / v["seconds"]
        v["steps_per_s"] = v["steps"] / v["seconds"]
        v["tflops_per_s"] = flops_per_window / v["seconds"] / 1e12
        v["mfu"] = v["tflops_per_s"] / peak if peak else None
        v["precision"] = "fp32" if name == "espnet_default" else mixed_precision.replace("no", "fp32")
    base = variants["espnet_default"]["audio_s_per_s"]
    for v in variants.values():
        v["speedup_vs_espnet_default"] = v["audio_s_per_s"] / base
    from kd.models.asr import build_asr_model

    params = sum(p.numel() for p in build_asr_model(data.model_config, data.tokens).parameters())
    result = {"machine": machine_info(), "device": str(device), "preset": preset, "settings": list(settings),
              "overrides": dict(config.model.overrides),  # the student's AsrConfig fields over the preset
              "parameters": params, "window": window, "windows": windows, "max_seconds": max_seconds,
              "flops_measured_steps": flops_per_window, "peak_tflops": peak, "teacher": str(teacher) if teacher else None,
              "cache_fill_seconds": cache_seconds, "command": command, "variants": variants}
    if teacher is not None:
        on, ca = variants["kd_distill_online"], variants["kd_distill_cached"]
        result["cached_teacher_speedup"] = ca["audio_s_per_s"] / on["audio_s_per_s"]
    write_json(out / "train.json", result)
    if out_md is not None:
        atomic_write_text(out_md, train_table(result))
    return result


def _fresh(path: Path) -> Path:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return path


def train_table(result: dict) -> str:
    """The markdown table of a :func:`bench_train` result."""
    m = result["machine"]
    where = m.get("gpu") or f"CPU ({m['cpu_count']} cores)"
    lines = [
        "# Training benchmark",
        "",
        f"`{result['preset']}` student ({result['parameters'] / 1e6:.2f}M parameters"
        + (f", `--set {' '.join(result['settings'])}`" if result.get("settings")  # older results: no settings
           else f", overrides {result['overrides']}" if result["overrides"] else "")
        + f"), micro-batches of at most {result['max_seconds']:g} padded seconds, {result['windows']} windows of "
        f"{result['window']} steps timed after a warm-up window, on {where}, torch {m['torch']}, {m['date']}.",
        "",
        "| variant | precision | audio s / s | steps / s | TFLOP/s | MFU | vs ESPnet default | peak memory (GiB) "
        "| host waits / step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in result["variants"].items():
        mfu = f"{100 * v['mfu']:.1f}%" if v["mfu"] is not None else "-"
        memory = f"{v['peak_memory'] / 2**30:.2f}" if v["peak_memory"] is not None else "-"
        waits = v.get("host_waits_per_step")
        cell = "-" if not waits else str(waits["total"]) + (
            f" ({waits['cuda_synchronizations']} by CUDA)" if waits.get("cuda_synchronizations") is not None else "")
        lines.append(f"| {name} | {v['precision']} | {v['audio_s_per_s']:.1f} | {v['steps_per_s']:.2f} | "
                     f"{v['tflops_per_s']:.3f} | {mfu} | {v['speedup_vs_espnet_default']:.2f}x | {memory} | {cell} |")
    first = next(iter(result["variants"].values())).get("host_waits_per_step")
    if first:
        lines += ["", f"Host waits / step: operations in one training step (a micro-batch of {first['utterances']} "
                  "utterances) that make the host wait for the device (`kd.training.syncs`), counted on this "
                  "machine's device; off a GPU a lower bound (copies to the host are not seen); on CUDA, in "
                  "brackets, CUDA's own count of synchronising calls (`torch.cuda.set_sync_debug_mode`)."]
    if result.get("cache_fill_seconds") is not None:
        lines += ["", f"Cached teacher outputs: {result['cached_teacher_speedup']:.2f}x the online-teacher throughput; "
                  f"filling the cache took {result['cache_fill_seconds']:.1f} s once."]
    if result["peak_tflops"] is None:
        lines += ["", "MFU: no peak FLOP/s is known for this device (pass --peak-tflops to set one)."]
    else:
        lines += ["", f"MFU against a peak of {result['peak_tflops']:g} dense bf16 TFLOP/s."]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"
