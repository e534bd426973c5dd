"""kd.recipes.parallel (independent jobs on worker processes) and kd.core.io.file_lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from kd.core.io import LockedError, file_lock
from kd.recipes.parallel import Job, JobError, run_jobs, worker_threads


def _square(x: int) -> tuple[int, int, int]:
    """x squared, the process id and the torch threads of whoever ran it."""
    return x * x, os.getpid(), torch.get_num_threads()


def _fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"cannot take {x}")
    return x


def test_one_worker_runs_here_in_order_and_keeps_the_threads():
    threads = torch.get_num_threads()
    results = run_jobs([Job(f"j{i}", _square, (i,)) for i in range(4)], workers=1)
    assert [r[0] for r in results] == [0, 1, 4, 9]
    assert {r[1] for r in results} == {os.getpid()} and {r[2] for r in results} == {threads}
    assert run_jobs([], workers=3) == []


def test_workers_return_results_in_job_order_with_their_share_of_threads():
    lines = []
    results = run_jobs([Job(f"j{i}", _square, (i,)) for i in range(5)], workers=2, threads=1, log=lines.append)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    pids = {r[1] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {r[2] for r in results} == {1}
    assert lines == ["5 jobs on 2 worker processes, 1 thread(s) each"]


def test_a_failed_job_is_named_with_its_cause_in_and_out_of_workers():
    jobs = [Job(f"run-{i}", _fail_on, (i, 2)) for i in range(4)]
    for workers in (1, 2):
        with pytest.raises(JobError, match="job run-2: ValueError: cannot take 2") as info:
            run_jobs(jobs, workers=workers, threads=1, log=None)
        assert isinstance(info.value.__cause__, ValueError)


def test_bad_worker_counts_are_refused():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers: expected an integer >= 1"):
            run_jobs([Job("a", _square, (1,))], workers=bad)
    with pytest.raises(ValueError, match="threads: expected >= 1, found 0"):
        worker_threads(2, 0)
    assert worker_threads(4, 3) == 3 and worker_threads(10**6) == 1


def test_file_lock_excludes_another_process_until_released(tmp_path):
    lock = tmp_path / "sub/run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kd.core.io import file_lock\n"
         f"with file_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"the run: another process holds its lock {lock}"):
            with file_lock(lock, wait=False, what="the run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the operating system released the killed holder's lock: no stale lock is left behind
    began = time.monotonic()
    with file_lock(lock, wait=False):
        pass
    assert time.monotonic() - began < 5


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_with_a_killed_parent(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    # the job is defined in the parent's script: spawned workers import it from there (as __mp_main__)
    script = ("import os, sys, time\nfrom kd.recipes.parallel import Job, run_jobs\n\n\n"
              "def _report_pid_and_sleep(folder: str, i: int) -> None:\n"
              "    with open(os.path.join(folder, f'worker{i}.pid'), 'w') as f:\n"
              "        f.write(str(os.getpid()))\n"
              "    time.sleep(120)\n\n\n"
              "if __name__ == '__main__':\n"
              f"    run_jobs([Job(str(i), _report_pid_and_sleep, ({str(tmp_path)!r}, i)) for i in range(2)], workers=2, threads=1)\n")
    (tmp_path / "parent.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("worker*.pid"))) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in sorted(tmp_path.glob("worker*.pid"))]
        assert all(_alive(pid) for pid in pids)
    finally:
        parent.kill()  # SIGKILL: no clean-up code of the parent runs
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a worker outlived its killed parent"
