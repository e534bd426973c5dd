"""Independent jobs side by side on one machine: worker processes, each with its share of the cores.

A recipe's training runs (the domain teachers; the student runs of every size, condition and
seed) do not depend on one another. The models of the CPU presets are small (a few hundred
thousand to a few million parameters), and PyTorch spreads such a model's operations over the
cores poorly, so ``workers`` runs of one thread each finish sooner than the same runs one after
another with all the threads (measured: docs/measurements.md). On a GPU, one run at a time
(``workers=1``) is the rule.

- ``workers=1`` runs the jobs here, in order, and changes nothing (threads included).
- ``workers>1`` starts that many ``spawn`` processes; each sets ``torch.set_num_threads(threads)``
  (default: this process's threads divided by ``workers``, at least 1) and takes the next job
  when it finishes one. Results come back in the order of ``jobs``.
- A failed job: the pending jobs are cancelled, the running ones finish (their checkpoints are
  written atomically either way), and :class:`JobError` names the job, with the worker's error
  as its cause.
- Workers die with this process (Linux: ``PR_SET_PDEATHSIG``), so a killed recipe leaves no
  worker writing into a run dir that its re-run resumes; ``kd.training.loop`` also locks each run dir.

Functions and arguments must be picklable (module-level functions, configs, paths).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["Job", "JobError", "run_jobs", "worker_threads"]


@dataclass(frozen=True)
class Job:
    label: str  # names the job in logs and errors, e.g. a run dir
    fn: Callable[..., Any]  # a module-level function
    args: tuple = ()
    kwargs: dict | None = None


class JobError(RuntimeError):
    """A job failed; ``__cause__`` is the exception raised in the worker."""


def worker_threads(workers: int, threads: int | None = None) -> int:
    """The intra-op threads of each of ``workers`` processes: ``threads``, or this process's share."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, found {threads}")
        return threads
    import torch

    return max(1, torch.get_num_threads() // workers)


def _init_worker(threads: int) -> None:
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def _call(job: Job) -> Any:
    return job.fn(*job.args, **(job.kwargs or {}))


def run_jobs(jobs: Sequence[Job], *, workers: int = 1, threads: int | None = None,
             log: Callable[[str], None] | None = print) -> list[Any]:
    """Run ``jobs`` on ``workers`` processes (1: here, in order); their results, in the order of ``jobs``."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, found {workers!r}")
    jobs = list(jobs)
    if workers == 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            try:
                results.append(_call(job))
            except Exception as e:
                raise JobError(f"job {job.label}: {type(e).__name__}: {e}") from e
        return results
    per_worker = worker_threads(workers, threads)
    n = min(workers, len(jobs))
    if log:
        log(f"{len(jobs)} jobs on {n} worker processes, {per_worker} thread(s) each")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_init_worker,
                             initargs=(per_worker,)) as pool:
        futures: list[Future] = [pool.submit(_call, job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [(job, f) for job, f in zip(jobs, futures) if f in done and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)  # the running jobs finish; the cancelled ones never start
            job, future = failed[0]
            error = future.exception()
            raise JobError(f"job {job.label}: {type(error).__name__}: {error}") from error
        return [f.result() for f in futures]
