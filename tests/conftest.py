from __future__ import annotations

import os
from pathlib import Path

import pytest

import taskembed
from support.tiny import make_tiny_embedder

# Python processes the tests start import the test support (tests/support) as the tests do.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Every test model is tiny: extra intra-op threads only add hand-off costs, badly so on a shared
    # 2-core machine. Processes a test spawns set their own.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random model with all five adapters non-zero, saved in the official layout."""
    d = tmp_path_factory.mktemp("tiny")
    make_tiny_embedder(seed=0).save(d)
    return d


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> taskembed.Embedder:
    return taskembed.load(tiny_dir)
