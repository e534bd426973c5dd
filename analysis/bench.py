"""Benchmarks of the streamed all-pairs similarities.

``bench_similarity`` times all-pairs linear CKA, SVCCA and PWCCA computed from
``LayerMoments`` against a straightforward per-pair NumPy float64 implementation of the same
formulas (written here the way a typical user would: per pair, centre both views, take Gram
and cross products for CKA, an SVD of each centred view for SVCCA, CCA through QR
decompositions and an SVD), on the same synthetic activations in the same run.

``bench_streaming_scale`` measures the accumulation at GPU scale (default 25 layers x 768
dims x 1M frames, generated chunk by chunk on the device, never stored), with peak memory.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from analysis.streaming import LayerMoments, pairwise_linear_cka, pairwise_pwcca, pairwise_svcca

__all__ = ["bench_similarity", "bench_streaming_scale", "synthetic_layers"]


def _walk_step(dim: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Random orthogonal map, per-dim noise scales and offsets of one layer-to-layer step."""
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    # decaying per-dim scales give the spectrum a tail that SVCCA's 0.99 cut removes
    scales = torch.logspace(0.0, -1.5, dim)[torch.randperm(dim, generator=generator)]
    offsets = torch.randn(dim, generator=generator)
    return rotation.to(device), scales.to(device), offsets.to(device)


def synthetic_layers(
    layers: int, dim: int, frames: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> list[Tensor]:
    """Correlated float32 activations `[frames, dim]` per layer: a random walk over layers.

    h_0 = e_0 * s_0; h_{l+1} = 0.8 h_l Q_l + 0.6 e_{l+1} * s_{l+1} + o_{l+1}, with Q_l
    random orthogonal, e Gaussian noise, s decaying per-dim scales and o per-dim offsets,
    so neighbouring layers are similar and similarity decays with layer distance.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    out = []
    h = None
    for _ in range(layers):
        rotation, scales, offsets = _walk_step(dim, generator, device)
        fresh = torch.randn(frames, dim, generator=noise, device=device) * scales
        h = fresh if h is None else 0.8 * (h - h.mean(0)) @ rotation + 0.6 * fresh + offsets
        out.append(h)
    return out


# -------------------------------------------------------------- per-pair NumPy baseline


def _np_centre(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = _np_centre(x), _np_centre(y)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _np_cca_qr(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal basis of centred x, left singular vectors and correlations (QR + SVD)."""
    qx, _ = np.linalg.qr(x)
    qy, _ = np.linalg.qr(y)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return qx, u, np.clip(rho, 0.0, 1.0)


def np_svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    reduced = []
    for view in (_np_centre(x), _np_centre(y)):
        u, s, _ = np.linalg.svd(view, full_matrices=False)
        share = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(share, keep)) + 1
        reduced.append(u[:, :k] * s[:k])
    return float(_np_cca_qr(*reduced)[2].mean())


def np_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    x, y = _np_centre(x), _np_centre(y)
    if y.shape[1] < x.shape[1]:
        x, y = y, x
    qx, u, rho = _np_cca_qr(x, y)
    variates = qx @ u  # [n, k] canonical variates h_i of x (unit norm)
    alpha = np.abs(variates.T @ x).sum(axis=1)
    return float((alpha * rho).sum() / alpha.sum())


def _baseline(arrays: list[np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    count = len(arrays)
    matrices = {name: np.empty((count, count)) for name in ("cka", "svcca", "pwcca")}
    seconds = {}
    metrics = (("cka", np_linear_cka, True), ("svcca", np_svcca, True), ("pwcca", np_pwcca, False))
    for name, fn, symmetric in metrics:
        start = time.perf_counter()
        for i in range(count):
            for j in range(i if symmetric else 0, count):
                matrices[name][i, j] = fn(arrays[i], arrays[j])
                if symmetric:
                    matrices[name][j, i] = matrices[name][i, j]
        seconds[name] = time.perf_counter() - start
    return matrices, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _streamed(layers: list[Tensor], chunk_frames: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    device = layers[0].device
    seconds = {}
    start = time.perf_counter()
    moments = LayerMoments([h.shape[1] for h in layers], device=device, chunk_frames=chunk_frames)
    for first in range(0, layers[0].shape[0], chunk_frames):
        moments.update([h[first : first + chunk_frames] for h in layers])
    _sync(device)
    seconds["accumulate"] = time.perf_counter() - start
    matrices = {}
    for name, fn in (("cka", pairwise_linear_cka), ("svcca", pairwise_svcca), ("pwcca", pairwise_pwcca)):
        start = time.perf_counter()
        matrices[name] = fn(moments).cpu().numpy()
        _sync(device)
        seconds[name] = time.perf_counter() - start
    return matrices, seconds


def bench_similarity(
    layers: int = 13,
    dim: int = 256,
    frames: int = 50_000,
    seed: int = 0,
    device: str = "cpu",
    chunk_frames: int = 8192,
) -> dict:
    """Time streamed vs per-pair NumPy all-pairs CKA + SVCCA + PWCCA on the same data.

    The NumPy baseline computes the symmetric CKA and SVCCA for i <= j and the asymmetric
    PWCCA for every (i, j). Returns seconds of each part, the speedup of the totals and the
    largest absolute difference of each matrix.
    """
    data = synthetic_layers(layers, dim, frames, seed=seed, device=device)
    streamed, streamed_s = _streamed(data, chunk_frames)
    baseline, baseline_s = _baseline([h.cpu().numpy() for h in data])
    streamed_total, baseline_total = sum(streamed_s.values()), sum(baseline_s.values())
    return {
        "layers": layers,
        "dim": dim,
        "frames": frames,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "streamed_seconds": {**streamed_s, "total": streamed_total},
        "baseline_seconds": {**baseline_s, "total": baseline_total},
        "speedup": baseline_total / streamed_total,
        "max_abs_diff": {name: float(np.abs(streamed[name] - baseline[name]).max()) for name in streamed},
    }


def bench_streaming_scale(
    layers: int = 25,
    dim: int = 768,
    frames: int = 1_000_000,
    chunk_frames: int = 16384,
    seed: int = 0,
    device: str = "cuda",
) -> dict:
    """Accumulate LayerMoments over `frames` synthetic frames made chunk by chunk on `device`.

    Reports accumulation seconds (including making the synthetic chunks, a small float32
    cost next to the float64 GEMM), float64 TFLOP/s of the main GEMM (2 * frames * D^2 with
    D = layers * dim), seconds for the all-pairs matrices, and peak device memory (CUDA).
    On a CPU, use small sizes: the [D, D] moments alone take 8 D^2 bytes.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    steps = [_walk_step(dim, generator, device) for _ in range(layers)]
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    moments = LayerMoments([dim] * layers, device=device, chunk_frames=chunk_frames)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for first in range(0, frames, chunk_frames):
        size = min(chunk_frames, frames - first)
        chunk, h = [], None
        for rotation, scales, offsets in steps:
            fresh = torch.randn(size, dim, generator=noise, device=device) * scales
            h = fresh if h is None else 0.8 * h @ rotation + 0.6 * fresh + offsets
            chunk.append(h)
        moments.update(chunk)
    _sync(device)
    accumulate = time.perf_counter() - start
    total_dim = layers * dim
    timings = {}
    for name, fn in (("cka", pairwise_linear_cka), ("svcca", pairwise_svcca), ("pwcca", pairwise_pwcca)):
        start = time.perf_counter()
        fn(moments)
        _sync(device)
        timings[name] = time.perf_counter() - start
    return {
        "layers": layers,
        "dim": dim,
        "frames": frames,
        "device": str(device),
        "accumulate_seconds": accumulate,
        "gemm_tflops": 2.0 * frames * total_dim**2 / accumulate / 1e12,
        "pairwise_seconds": timings,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
