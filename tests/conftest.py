"""Shared fixtures: the ``tests`` preset of the built-in corpus, synthesised once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tests_corpus(tmp_path_factory):
    from kd.corpus.synth import build_corpus

    root = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(root, preset="tests", seed=0, jobs=2, progress=False)
    return root, summary
