"""``kd bench analysis`` at a tiny size: streamed and per-pair results agree; files are written."""

from __future__ import annotations

import json

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
