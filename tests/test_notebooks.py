"""Every notebook in notebooks/ runs top to bottom (nbclient) on smoke runs made here, and the
committed notebooks carry no outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from common.run.tracking import PIPELINE_ENV, init_store, sqlite_uri
from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
SMOKE_RUNS = [  # (paper, experiment): what the notebooks read
    ("glow", "digits_conv_affine"), ("nice", "moons_nice"), ("tori_spheres", "s2_mobius_spline"),
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> Path:
    """Smoke runs laid out as the pipeline lays them out (runs/smoke/<paper>/<experiment>/
    seed0, one MLflow store), nested under one pipeline invocation."""
    import importlib

    root = tmp_path_factory.mktemp("runs")
    uri = sqlite_uri(root / "mlflow.db")
    init_store(uri, sorted({paper for paper, _ in SMOKE_RUNS}))
    pipeline = {"id": "notebook-test", "name": "snakemake · smoke · test", "scale": "smoke"}
    os.environ[PIPELINE_ENV] = json.dumps(pipeline)
    try:
        for paper, experiment in SMOKE_RUNS:
            config = REPO_ROOT / "papers" / paper / "configs" / "smoke" / f"{experiment}.yaml"
            workdir = root / "smoke" / paper / experiment / "seed0"
            main = importlib.import_module(f"papers.{paper}.train").main
            main(["--config", str(config), "--workdir", str(workdir), "--no-progress",
                  "--tracking-uri", uri, "--set", f"data.root={data_root}"]
                 if paper != "tori_spheres" else
                 ["--config", str(config), "--workdir", str(workdir), "--no-progress",
                  "--tracking-uri", uri])  # fmt: skip
    finally:
        del os.environ[PIPELINE_ENV]
    return root


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"browse_runs", "load_and_sample"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_smoke_runs(path, runs, monkeypatch):
    monkeypatch.setenv("FLOWS_RUNS", str(runs))
    monkeypatch.setenv("FLOWS_SCALE", "smoke")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(runs / "mlflow.db"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    text = "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        + str(out.get("data", {}).get("text/html", ""))
        for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )  # fmt: skip
    images = sum("image/png" in out.get("data", {}) for c in nb.cells
                 if c.cell_type == "code" for out in c.outputs)  # fmt: skip
    if path.stem == "browse_runs":
        assert "3 training runs and 3 pipeline runs of 3 papers" in text
        assert "digits_conv_affine" in text and "moons_nice" in text and "s2_mobius_spline" in text
        assert "snakemake · smoke · test" in text  # the parents, each with its nested run
        assert images == 1  # the curves
    if path.stem == "load_and_sample":
        assert "integrates to" in text and images == 2  # temperature grid, sphere densities
