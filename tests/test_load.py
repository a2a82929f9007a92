"""common.run.load: a finished run, from its directory or its MLflow run id, back to a ready
flow without its dataset; the README's five-line example runs as written."""

from __future__ import annotations

import json
import re

import pytest
import torch

from common.data import load_dataset
from common.run.config import ConfigError
from common.run.load import load_flow
from common.run.tracking import init_store, sqlite_uri
from tests.conftest import REPO_ROOT

PAPERS = REPO_ROOT / "papers"


def _train(entry, config, data_root, workdir, uri=None, *sets):
    sets = [f"data.root={data_root}", *sets]
    argv = ["--config", str(config), "--workdir", str(workdir), "--no-progress",
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    argv += ["--tracking-uri", uri] if uri else ["--no-tracking"]
    return entry(argv)


def test_a_run_loads_from_its_directory_and_its_run_id(data_root, tmp_path):
    """The loaded flow is the tested model: its log-density on the test split gives the run's
    test NLL (continuous data: no dequantization noise), from the directory and from MLflow
    alike, and it samples."""
    from papers.nice.train import main

    uri = sqlite_uri(tmp_path / "mlflow.db")
    init_store(uri, ["nice"])
    _train(main, PAPERS / "nice/configs/smoke/moons_nice.yaml", data_root, tmp_path / "run", uri)
    summary = json.loads((tmp_path / "run/metrics.json").read_text())
    x_test = load_dataset("moons", data_root).x_test
    for source in (tmp_path / "run", summary["run_id"]):
        flow = load_flow(source, device="cpu", tracking_uri=uri)
        assert not flow.training
        with torch.no_grad():
            nll = -flow.log_prob(x_test).mean().item()
        assert nll == pytest.approx(summary["metrics"]["test/nll"], rel=1e-5)
        assert flow.sample(7).shape == (7, 2)


def test_a_variational_fit_loads_from_its_target(tmp_path):
    """Tori & Spheres: no data; the flow is rebuilt from the config's target and its final
    weights (final.pt), identical to the saved ones."""
    from papers.tori_spheres.train import main

    config = PAPERS / "tori_spheres/configs/smoke/s2_mobius_spline.yaml"
    main(["--config", str(config), "--workdir", str(tmp_path / "run"), "--no-progress",
          "--no-tracking"])  # fmt: skip
    flow = load_flow(tmp_path / "run", device="cpu")
    saved = torch.load(tmp_path / "run/checkpoints/final.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in flow.state_dict().items())
    x = flow.sample(5)
    assert x.shape == (5, 3) and torch.isfinite(flow.log_prob(x)).all()


def test_not_a_run_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml is missing"):
        load_flow(tmp_path, device="cpu")


def test_readme_example_runs_as_written(data_root, tmp_path, monkeypatch):
    """The README's load-and-sample block, with its run directory replaced by a smoke run;
    and the module's docstring example, as a doctest on the same run."""
    import doctest

    import common.run.load as module
    from papers.glow.train import main

    block = re.search(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    code = block.group(1)
    run = re.search(r'load_flow\("([^"]+)"\)', code).group(1)
    _train(main, PAPERS / "glow/configs/smoke/digits_conv_affine.yaml", data_root, tmp_path / "run")
    code = code.replace(run, str(tmp_path / "run"))
    assert len(code.strip().splitlines()) <= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["x"].shape == (16, 1, 8, 8)  # as the README's comment says
    assert namespace["log_p"].shape == (16,) and torch.isfinite(namespace["log_p"]).all()
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(module, globs={"RUN": str(tmp_path / "run")}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries == 4
