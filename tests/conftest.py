from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The offline datasets, built once per test session into a temporary folder."""
    from common.data import build_offline

    root = tmp_path_factory.mktemp("data")
    build_offline(root)
    return root


def pytest_collection_modifyitems(config, items):
    """The files holding a slow end-to-end test run first: `make test` shares its test files
    out to two processes (pytest-xdist, a file at a time), and the longest file started last
    would leave one process idle at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order kept within


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _needs_compile():
    from common.run.steps import compile_blocker

    reason = compile_blocker()
    return pytest.mark.skipif(reason is not None, reason=f"torch.compile cannot work: {reason}")


needs_compile = _needs_compile()
"""Marks a test that runs ``torch.compile``: skipped where PyTorch's compiler cannot work
(torch installed under a path with a space; the trainer then runs eagerly)."""
