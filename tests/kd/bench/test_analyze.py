"""``kd bench analysis`` at a tiny size: streamed and per-pair results agree; files are written."""

from __future__ import annotations

import json

import pytest

from kd.cli import main


def test_bench_analysis_cli_writes_json_and_table(tmp_path, capsys):
    out, table = tmp_path / "a.json", tmp_path / "a.md"
    assert main(["bench", "analysis", "--layers", "3", "--dim", "8", "--frames", "400", "--out", str(out),
                 "--table", str(table), "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    sim = result["similarity"]
    assert sim["layers"] == 3 and sim["threads"] == 1
    assert all(v < 1e-8 for v in sim["max_abs_diff"].values())
    assert sim["speedup"] > 0
    assert "| **total** |" in table.read_text() and "speedup" in capsys.readouterr().out


def test_bench_analysis_scale_part_on_cpu(tmp_path):
    """The GPU-scale part at a tiny size on the CPU: both frame counts measured, the table has both rows."""
    out, table = tmp_path / "s.json", tmp_path / "s.md"
    assert main(["bench", "analysis", "--no-similarity", "--gpu-scale", "--scale-layers", "3", "--scale-dim", "16",
                 "--scale-frames", "4000", "--scale-device", "cpu", "--out", str(out), "--table", str(table)]) == 0
    result = json.loads(out.read_text())
    assert "similarity" not in result
    assert result["gpu_scale"]["frames"] == 4000 and result["gpu_scale_quarter"]["frames"] == 1000
    assert set(result["gpu_scale"]["pairwise_seconds"]) == {"cka", "svcca", "pwcca"}
    text = table.read_text()
    assert "| 4,000 |" in text and "| 1,000 |" in text


@pytest.mark.slow  # 8 s (kd bench analyze end to end) on the 2-core machine; pytest -m slow
def test_bench_analyze_reports_phases(tests_corpus, tmp_path, capsys):
    from kd.testing import tiny_w2v2

    root, _ = tests_corpus
    tiny_w2v2(tmp_path / "model")
    out, table = tmp_path / "z.json", tmp_path / "z.md"
    assert main(["bench", "analyze", str(tmp_path / "model"), "--data", str(root / "us" / "train"), "--device", "cpu",
                 "--work", str(tmp_path / "work"), "--out", str(out), "--table", str(table)]) == 0
    result = json.loads(out.read_text())
    timing = result["timing"]
    assert result["utterances"] == 12 and timing["audio_seconds"] > 0
    assert timing["audio_seconds_per_second"] == timing["audio_seconds"] / timing["total_seconds"]
    assert "s of audio analysed per second" in table.read_text()
    assert (tmp_path / "work" / "report" / "report.json").is_file()
