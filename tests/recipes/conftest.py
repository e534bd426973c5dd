"""Shared by the recipe tests: each recipe's run.py loaded as a module; one intra-op thread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(single_thread):
    """Every recipe test runs tiny models: one intra-op thread (tests/conftest.py)."""


@pytest.fixture
def load_recipe():
    """``load_recipe(name)``: the module of ``recipes/<name>/run.py``."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_run", RECIPES / name / "run.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
