"""Shared fixtures: the ``tests`` preset of the built-in corpus, synthesised once per pytest run; one
intra-op thread for the modules that ask for it."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("single_thread")``).

    Tiny models and tensors: a second thread only adds contention when other runs share the cores.
    Module scope, so that the module's own module-scoped fixtures (trained models) run under it too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tests_corpus(tmp_path_factory):
    from kd.corpus.synth import build_corpus

    root = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(root, preset="tests", seed=0, jobs=2, progress=False)
    return root, summary
