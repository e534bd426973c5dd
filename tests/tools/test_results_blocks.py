"""The READMEs' results tables are the committed results files that the recipes wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kd.recipes.multidomain import readme_blocks, sync_readme

ROOT = Path(__file__).resolve().parents[2]


def test_every_results_block_equals_its_results_file():
    out = subprocess.run([sys.executable, str(ROOT / "tools/sync_results.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sync_replaces_only_stale_blocks(tmp_path):
    (tmp_path / "a.md").write_text("| x |\n")
    (tmp_path / "b.md").write_text("new\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results: a -->\n| x |\n<!-- end results -->\nmid\n<!-- results: b -->\nold\n"
                      "<!-- end results -->\nend\n")
    assert sync_readme(readme, tmp_path) == ["b"]
    assert readme_blocks(readme.read_text()) == {"a": "| x |\n", "b": "new\n"}
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("end\n")
    readme.write_text("<!-- results: c -->\n<!-- end results -->\n")
    with pytest.raises(FileNotFoundError, match="results block 'c' has no results file"):
        sync_readme(readme, tmp_path)
