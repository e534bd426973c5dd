"""Importing the packages is cheap: no torch, transformers, ESPnet or accelerate until used; the analysis
package never imports kd."""

import subprocess
import sys


def test_import_is_cheap():
    code = ("import sys, kd, analysis, kd.plan, kd.plan.planners, kd.corpus.sentences; "
            "print(','.join(m for m in ('torch', 'transformers', 'espnet2', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_analysis_package_never_imports_kd():
    """kd may import analysis (kd.core.config re-exports analysis.config's parser), not the other way round."""
    code = ("import importlib, pkgutil, sys, analysis\n"
            "for module in pkgutil.iter_modules(analysis.__path__):\n"
            "    importlib.import_module(f'analysis.{module.name}')\n"
            "print(','.join(m for m in sys.modules if m == 'kd' or m.startswith('kd.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_lazy_exports_resolve_to_the_defining_module_and_name_the_package_on_a_miss():
    import importlib

    import pytest

    for package in ("kd", "kd.models", "kd.training", "kd.ssl"):
        module = importlib.import_module(package)
        for name in module.__all__:
            if name == "__version__":
                continue
            assert getattr(module, name) is getattr(importlib.import_module(module._LAZY[name]), name)
        with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'no_such_name'"):
            getattr(module, "no_such_name")
