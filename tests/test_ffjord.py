"""FFJORD paper: the vector model, training with the function evaluations logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from common.run.config import ConfigError, load_config
from common.run.loop import train
from common.run.objectives import MaximumLikelihood
from common.run.tracking import Tracker, init_store, sqlite_uri
from papers.ffjord.model import build_model
from papers.ffjord.train import CONFIG

SMOKE = Path(__file__).resolve().parents[1] / "papers/ffjord/configs/smoke/moons_ffjord.yaml"


def _cfg(data_root, *overrides):
    return load_config(CONFIG, SMOKE, [f"data.root={data_root}", *overrides])


@pytest.mark.parametrize("adjoint", [False, True])
def test_training_logs_forward_and_backward_function_evaluations(data_root, tmp_path, adjoint):
    """rk4 with steps of 0.25 in s: 16 evaluations per forward solve; backpropagating through
    the solver evaluates nothing more, the adjoint method solves backwards (16 again)."""
    uri = sqlite_uri(tmp_path / "mlflow.db")
    init_store(uri, ["ffjord"])
    cfg = _cfg(data_root, f"model.adjoint={str(adjoint).lower()}")
    summary = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run",
                    tracker=Tracker(uri, "ffjord"), progress=False)  # fmt: skip
    metrics = MlflowClient(uri).get_run(summary.run_id).data.metrics
    assert metrics["train/nfe_forward"] == 16
    assert metrics["train/nfe_backward"] == (16 if adjoint else 0)
    assert summary.metrics["test/nll"] < 4.0  # a 2-D standard normal on moons scores ~3.4-3.9


def test_width_is_set_one_way_and_images_are_refused(data_root):
    with pytest.raises(ConfigError, match="hidden_multiple"):
        _cfg(data_root, "model.hidden_multiple=10")
    with pytest.raises(ConfigError, match="continuous vectors"):
        MaximumLikelihood(_cfg(data_root, "data.name=digits"), build_model).build(
            torch.device("cpu")
        )


def test_tabular_width_is_a_multiple_of_the_dimension(data_root):
    cfg = _cfg(data_root, "model={name: ffjord, hidden_multiple: 10, num_hidden: 2}")
    flow = MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))
    widths = [layer.linear.out_features for layer in flow.transform.layers[0].dynamics.net.layers]
    assert widths == [20, 20, 2]
