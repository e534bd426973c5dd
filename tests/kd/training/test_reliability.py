"""Crash safety: a training run killed with SIGKILL at a random point loses no finished
checkpoint, leaves no corrupt one, and resumes to the same final weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kd.testing import make_config, subset_dir
from kd.training.checkpoint import list_checkpoints

STEPS = 30


def _run(config_path: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "kd.training.loop", str(config_path), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finished_checkpoints_are_whole(out: Path) -> list[int]:
    """Every checkpoint folder without the temp prefix is complete and loads."""
    steps = []
    for info in list_checkpoints(out / "checkpoints"):
        weights = load_file(str(info.path / "model.safetensors"))
        assert weights and all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
        torch.load(info.path / "optimizer.pt", weights_only=True)
        steps.append(info.step)
    visible = [p for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] \
        if (out / "checkpoints").is_dir() else []
    assert len(visible) == len(steps), f"a checkpoint folder without a valid marker is visible: {visible}"
    return steps


@pytest.fixture(scope="module")
def reference(tests_corpus, tmp_path_factory):
    """The run's config and its uninterrupted run, which every killed and resumed run must end equal to
    (one for all kill points: the config is the same and the run deterministic)."""
    root, _ = tests_corpus
    base = tmp_path_factory.mktemp("reliability")
    data = subset_dir(root / "us" / "train", base / "data", 6)
    config = make_config([data], steps=STEPS, checkpoint={"every_steps": 3, "keep_last": 2, "average_best": 1},
                         max_seconds=4.0)
    config_path = base / "config.yaml"
    config_path.write_text(config.to_yaml())
    run = _run(config_path, base / "reference")
    assert run.wait(timeout=600) == 0, run.stderr.read().decode()[-2000:]
    return config_path, base / "reference"


@pytest.mark.slow  # about 17 CPU seconds a kill point, 10 more for the reference run; pytest -m slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_point_then_resume_gives_identical_weights(reference, tmp_path, seed):
    config_path, reference_run = reference
    rng = random.Random(seed)
    out = tmp_path / "killed"
    proc = _run(config_path, out)
    # wait until training is under way (a first checkpoint exists), then kill at a random moment
    deadline = time.time() + 300
    while not ((out / "checkpoints").is_dir() and list_checkpoints(out / "checkpoints")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.3))
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished_checkpoints_are_whole(out)
    assert before, "the first finished checkpoint was lost"

    resumed = _run(config_path, out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    a = load_file(str(reference_run / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(_finished_checkpoints_are_whole(out)) == STEPS
