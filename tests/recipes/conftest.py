"""Shared by the recipe tests: each recipe's run.py loaded as a module; one intra-op thread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: a second intra-op thread only adds contention when other runs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def load_recipe():
    """``load_recipe(name)``: the module of ``recipes/<name>/run.py``."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_run", RECIPES / name / "run.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
