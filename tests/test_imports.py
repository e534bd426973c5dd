"""Importing the packages is cheap: no torch, transformers, ESPnet or accelerate until used."""

import subprocess
import sys


def test_import_is_cheap():
    code = ("import sys, kd, analysis, kd.plan, kd.plan.planners, kd.corpus.sentences; "
            "print(','.join(m for m in ('torch', 'transformers', 'espnet2', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
