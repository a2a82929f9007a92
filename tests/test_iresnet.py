"""i-ResNet paper: the vector model and scoring with the exact log-det beside the estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.flows.bijector import exact_ldj
from common.flows.testing import perturb_parameters
from common.run.config import ConfigError, load_config
from common.run.loop import train
from common.run.objectives import MaximumLikelihood, evaluate_nll
from papers.iresnet.model import build_model
from papers.iresnet.train import CONFIG

SMOKE = Path(__file__).resolve().parents[1] / "papers/iresnet/configs/smoke/moons_iresnet.yaml"


def _cfg(data_root, *overrides):
    return load_config(CONFIG, SMOKE, [f"data.root={data_root}", *overrides])


def test_exact_eval_scores_with_the_exact_ldj_and_reports_the_estimate(data_root):
    objective = MaximumLikelihood(_cfg(data_root), build_model)
    model = objective.build(torch.device("cpu"))
    perturb_parameters(model, 0.3, seed=0)
    model.eval()
    metrics = objective.test(model)
    x, cpu = objective.data.x_test, torch.device("cpu")
    with exact_ldj(model):
        exact = evaluate_nll(model, x, 1000, cpu)["nll"]
    estimate = evaluate_nll(model, x, 1000, cpu)["nll"]
    assert metrics["test/nll"] == pytest.approx(exact, rel=1e-6)
    assert metrics["test/nll_estimate"] == pytest.approx(estimate, rel=1e-6)
    assert abs(exact - estimate) > 1e-4  # the 5-term series with one probe is not exact
    plain = MaximumLikelihood(_cfg(data_root, "train.eval_ldj=model"), build_model)
    plain.build(torch.device("cpu"))
    assert "test/nll_estimate" not in plain.test(model)


def test_smoke_run_trains(data_root, tmp_path):
    cfg = _cfg(data_root)
    summary = train(cfg, MaximumLikelihood(cfg, build_model), tmp_path / "run", progress=False)
    assert summary.metrics["test/nll"] < 3.6  # a 2-D standard normal on moons scores ~3.4


def test_images_need_the_multi_scale_model(data_root):
    cfg = _cfg(data_root, "data.name=digits")
    with pytest.raises(ConfigError, match="multi-scale"):
        MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))
