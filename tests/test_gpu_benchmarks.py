"""tools/gpu_benchmarks.sh, in its CPU smoke mode: every part runs and writes its tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
