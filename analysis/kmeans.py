"""k-means clustering in torch: seeded greedy k-means++ initialisation, then Lloyd iterations.

Data stay where the caller keeps them (CPU memory, say); rows are moved to ``config.device``
``chunk_size`` at a time, so the working memory is ``chunk_size x num_clusters`` distances,
never ``frames x num_clusters``. Centroid sums are accumulated in float64 with a one-hot GEMM
per chunk (deterministic, unlike scatter-adds on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from analysis.config import CONFIG, parse_config, to_plain, with_config

KMEANS_CONFIG_VERSION = 1


@dataclass(frozen=True)
@with_config(CONFIG)
class KMeansConfig:
    """Options of ``KMeans``; read from a mapping by ``from_dict`` (:func:`analysis.config.parse_config`)."""

    num_clusters: int = 50  # k
    max_iter: int = 100  # Lloyd iterations at most
    tol: float = 1e-4  # stop when the squared centroid shift < tol x mean per-dim data variance
    seed: int = 0  # seeds the k-means++ draws; same seed, same data -> same centroids
    chunk_size: int = 8192  # rows per distance computation (memory: chunk_size x k)
    device: str = "cpu"  # where distances are computed ("cpu", "cuda", "cuda:1", ...)
    version: int = KMEANS_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ValueError(f"KMeansConfig.num_clusters: expected at least 1, found {self.num_clusters}")
        if self.max_iter < 0:
            raise ValueError(f"KMeansConfig.max_iter: expected at least 0, found {self.max_iter}")
        if not self.tol >= 0:
            raise ValueError(f"KMeansConfig.tol: expected at least 0, found {self.tol}")
        if self.chunk_size < 1:
            raise ValueError(f"KMeansConfig.chunk_size: expected at least 1, found {self.chunk_size}")
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"KMeansConfig.device: expected a torch device, found {self.device!r}") from err
        if self.version != KMEANS_CONFIG_VERSION:
            raise ValueError(f"KMeansConfig.version: expected {KMEANS_CONFIG_VERSION}, found {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> "KMeansConfig":
        """The config written by :meth:`to_dict`, read by :func:`analysis.config.parse_config` (``where``
        names it in errors; default ``KMeansConfig``)."""
        return parse_config(cls, data, where)


class KMeans:
    """k-means with ``fit(x)`` / ``predict(x)``; ``centroids`` is ``[num_clusters, dim]``."""

    def __init__(self, config: KMeansConfig | None = None) -> None:
        self.config = config or KMeansConfig()
        self.centroids: torch.Tensor | None = None  # [k, dim] float32 on config.device
        self.inertia: float | None = None  # sum of squared distances to the nearest centroid
        self.num_iter: int = 0

    def _chunks(self, x: torch.Tensor):
        device = torch.device(self.config.device)
        for start in range(0, x.shape[0], self.config.chunk_size):
            yield start, x[start : start + self.config.chunk_size].to(device=device, dtype=torch.float32)

    @staticmethod
    def _sq_dist(xc: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: [chunk, k], clamped at 0 against rounding
        return ((xc * xc).sum(1, keepdim=True) - 2.0 * xc @ centroids.T + c_sq).clamp_min(0.0)

    def _check(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Expected {name} of shape [frames, dim], found {shape}")
        if not torch.is_floating_point(x):
            raise TypeError(f"Expected {name} to be floating point, found dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"Expected finite values in {name}, found NaN or inf")

    def _nearest(self, x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index ``[n]`` (long, on x's device) and squared distance ``[n]`` (float64) of the nearest centroid."""
        c_sq = (centroids * centroids).sum(1)
        labels, dists = [], []
        for _, xc in self._chunks(x):
            d, idx = self._sq_dist(xc, centroids, c_sq).min(dim=1)
            labels.append(idx.to(x.device))
            dists.append(d.to(torch.float64))
        return torch.cat(labels), torch.cat(dists)

    def _distances(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Squared distances ``[n, c]`` (float64) of every row to a few centroids ``[c, dim]``."""
        c_sq = (centroids * centroids).sum(1)
        return torch.cat([self._sq_dist(xc, centroids, c_sq).to(torch.float64) for _, xc in self._chunks(x)])

    def _init_plus_plus(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Greedy k-means++ (Arthur and Vassilvitskii, 2007): each new centroid is the best of
        ``2 + ln k`` candidates drawn with probability proportional to D(x)^2."""
        k, n = self.config.num_clusters, x.shape[0]
        device = torch.device(self.config.device)
        trials = 2 + int(math.log(k))
        first = int(torch.randint(n, (1,), generator=generator))
        centroids = x[first : first + 1].to(device=device, dtype=torch.float32)
        _, d2 = self._nearest(x, centroids)
        for _ in range(1, k):
            total = d2.sum()
            if total <= 0:  # fewer distinct points than clusters: duplicates are allowed
                idx = torch.randint(n, (trials,), generator=generator)
            else:
                # inverse-CDF draws with a CPU generator: same choices on CPU and GPU
                u = torch.rand(trials, generator=generator, dtype=torch.float64).to(d2.device) * total
                idx = torch.searchsorted(d2.cumsum(0), u).clamp_max(n - 1).cpu()
            candidates = x[idx].to(device=device, dtype=torch.float32)  # [trials, dim]
            trial_d2 = torch.minimum(d2.unsqueeze(1), self._distances(x, candidates))  # [n, trials]
            best = int(trial_d2.sum(0).argmin())
            centroids = torch.cat([centroids, candidates[best : best + 1]])
            d2 = trial_d2[:, best].contiguous()
        return centroids

    def _mean_variance(self, x: torch.Tensor) -> float:
        """Mean over dimensions of the per-dimension variance of ``x``, in float64, chunked."""
        total = torch.zeros(x.shape[1], dtype=torch.float64, device=torch.device(self.config.device))
        total_sq = torch.zeros_like(total)
        for _, xc in self._chunks(x):
            xc = xc.to(torch.float64)
            total += xc.sum(0)
            total_sq += (xc * xc).sum(0)
        mean = total / x.shape[0]
        return (total_sq / x.shape[0] - mean * mean).clamp_min(0.0).mean().item()

    def fit(self, x: torch.Tensor) -> "KMeans":
        """Fit centroids to ``x``: ``[frames, dim]``. Returns ``self``."""
        self._check(x)
        k = self.config.num_clusters
        if x.shape[0] < k:
            raise ValueError(f"Expected at least num_clusters={k} rows in x, found {x.shape[0]}")
        generator = torch.Generator().manual_seed(self.config.seed)
        centroids = self._init_plus_plus(x, generator)
        variance = self._mean_variance(x)
        threshold = self.config.tol * variance
        self.num_iter = 0
        for _ in range(self.config.max_iter):
            sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=centroids.device)
            counts = torch.zeros(k, dtype=torch.float64, device=centroids.device)
            far_d, far_x = -1.0, None
            c_sq = (centroids * centroids).sum(1)
            for _, xc in self._chunks(x):
                d, idx = self._sq_dist(xc, centroids, c_sq).min(dim=1)
                one_hot = torch.nn.functional.one_hot(idx, k).to(torch.float64)  # [chunk, k]
                sums += one_hot.T @ xc.to(torch.float64)
                counts += one_hot.sum(0)
                j = int(d.argmax())
                if d[j].item() > far_d:
                    far_d, far_x = d[j].item(), xc[j]
            new = (sums / counts.clamp_min(1.0).unsqueeze(1)).to(torch.float32)
            empty = (counts == 0).nonzero().flatten()
            new[empty] = centroids[empty]  # an empty cluster keeps its centroid, except that
            if empty.numel() and far_d > 0:  # one per iteration moves to the worst-served point
                new[empty[0]] = far_x
            shift = ((new - centroids) ** 2).sum().item()
            centroids = new
            self.num_iter += 1
            if shift <= threshold:
                break
        self.centroids = centroids
        self.inertia = self._nearest(x, centroids)[1].sum().item()
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid index of each row of ``x`` (``[frames, dim]``) -> ``[frames]`` long."""
        if self.centroids is None:
            raise ValueError("Expected a fitted KMeans (call fit first), found no centroids")
        self._check(x)
        if x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"Expected x with dim {self.centroids.shape[1]}, found {x.shape[1]}")
        return self._nearest(x, self.centroids)[0]
