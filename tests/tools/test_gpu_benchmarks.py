"""tools/gpu_benchmarks.sh, in its CPU smoke mode: every part runs and writes its tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about two minutes on the 2-core machine (ten processes, each importing torch); pytest -m slow
def test_gpu_benchmark_script_smoke(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SMOKE": "1", "WORK": str(tmp_path), "KD": str(bin_dir / "kd"), "PY": sys.executable,
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_benchmarks.sh"), "all"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    docs = tmp_path / "smoke"
    for name in ("analysis_gpu", "analyze_gpu", "speed_gpu", "train_gpu"):
        assert (docs / f"{name}.json").is_file() and (docs / f"{name}.md").is_file(), name
    speed = json.loads((docs / "speed_gpu.json").read_text())
    rows = speed["results"]
    assert {r["batch_size"] for r in rows} == {1, 16}
    train = json.loads((docs / "train_gpu.json").read_text())
    assert set(train["variants"]) == {"espnet_default", "kd_train", "kd_distill_online", "kd_distill_cached"}
    # the 6-of-12 student keeps 6 of the teacher's 12 layers
    student = json.loads((tmp_path / "student-6of12" / "config.json").read_text())
    assert student["num_hidden_layers"] == 6


@pytest.mark.slow  # about a minute: two smoke runs of the device script; pytest -m slow
def test_gpu_session_packs_results_after_each_part_and_reports_a_part_cut_off(tmp_path):
    """tools/gpu_session.sh (one device call): each part under its own limit; the archive holds the
    tables and logs written so far, also after a part is stopped at its limit."""
    import tarfile

    bin_dir = Path(sys.executable).parent
    results = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "WORK": str(tmp_path / "work"), "KD": str(bin_dir / "kd"),
           "PY": sys.executable, "OMP_NUM_THREADS": "1", "RESULTS": str(results)}
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_session.sh")], env={**env, "PARTS": "speed"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "speed: exit 0 after" in run.stdout
    with tarfile.open(results / "gpu_results.tgz") as tar:
        names = tar.getnames()
    assert any(n.endswith("smoke/speed_gpu.json") for n in names) and any(n.endswith("logs/speed.log") for n in names)
    assert any(n.endswith("logs/machine.txt") for n in names)
    # a part stopped at its limit: reported, the call fails, what finished before is still packed
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_session.sh")],
                         env={**env, "PARTS": "train", "PART_LIMIT": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1
    assert "train: exit 124 after" in run.stdout and "(stopped at PART_LIMIT=1 s)" in run.stdout
    with tarfile.open(results / "gpu_results.tgz") as tar:
        names = tar.getnames()
    assert any(n.endswith("smoke/speed_gpu.json") for n in names) and any(n.endswith("logs/train.log") for n in names)
    # without OUT or RESULTS it says what to set
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_session.sh")], env={k: v for k, v in env.items() if k != "RESULTS"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "set OUT (the device tool does) or RESULTS" in run.stderr
