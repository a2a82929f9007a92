"""i-ResNet paper: the vector model and scoring with the exact log-det beside the estimate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from common.data import Dataset
from common.flows.bijector import exact_ldj
from common.flows.residual import (
    ResidualBlock,
    SpectralNormConv2d,
    converge_spectral_norms,
    lipschitz_constant,
)
from common.flows.testing import check_bijector, perturb_parameters
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
    with pytest.raises(ConfigError, match="iresnet_multiscale"):
        MaximumLikelihood(cfg, build_model).build(torch.device("cpu"))
    vectors = _cfg(data_root, "model={name: iresnet_multiscale}")
    with pytest.raises(ConfigError, match="needs image data"):
        MaximumLikelihood(vectors, build_model).build(torch.device("cpu"))


def _digits_model(data_root, **model):
    model = {"name": "iresnet_multiscale", "num_levels": 2, "blocks_per_level": 2,
             "hidden_channels": 8, **model}  # fmt: skip
    cfg = _cfg(data_root, "data.name=digits", f"model={model}")
    objective = MaximumLikelihood(cfg, build_model)
    return objective, objective.build(torch.device("cpu"))


def test_multi_scale_model_passes_the_check(data_root):
    """The whole multi-scale transform (squeeze, ActNorm, conv residual blocks, split, flatten,
    learned prior) in exact mode, perturbed: round trip, ldj against the autograd Jacobian."""
    objective, flow = _digits_model(data_root)
    x, _ = flow.dequantize(objective.data.x_train[:3])
    check = check_bijector(flow.transform, x, atol=1e-5)
    assert check.exact_mode
    kinds = {type(m).__name__ for m in flow.transform.modules()}
    assert {"Squeeze", "Split", "ActNorm", "ResidualBlock", "ElementwiseAffine"} <= kinds
    blocks = [m for m in flow.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4
    first, *rest = (b.g for b in blocks)  # the flow's first g has no input activation
    assert isinstance(first[0], SpectralNormConv2d) and all(isinstance(g[0], nn.ELU) for g in rest)
    # the second level's convolutions are normalised on its squeezed, split maps: (8, 2, 2)
    assert tuple(blocks[-1].g[1].v.shape) == (1, 8, 2, 2)


def test_multi_scale_g_stays_below_c_after_perturbation(data_root):
    _, flow = _digits_model(data_root, coeff=0.7)
    perturb_parameters(flow, 0.5, seed=1)
    converge_spectral_norms(flow, 300)
    flow.eval()
    blocks = [m for m in flow.modules() if isinstance(m, ResidualBlock)]
    for block, shape in zip(blocks, [(4, 4, 4)] * 2 + [(8, 2, 2)] * 2, strict=True):
        assert lipschitz_constant(block.g, torch.randn(3, *shape)) < 0.7


def test_glow_mlp_passes_the_check(data_root):
    objective = MaximumLikelihood(_cfg(data_root, "model={name: glow_mlp, num_steps: 3}"),
                                  build_model)  # fmt: skip
    flow = objective.build(torch.device("cpu"))
    check_bijector(flow.transform, torch.randn(5, 2))
    kinds = [type(layer).__name__ for layer in flow.transform.layers]
    assert kinds == ["ActNorm", "LULinear", "Coupling"] * 3


@pytest.mark.parametrize(("experiment", "shape", "channels"),
                         [("cifar10_iresnet", (3, 32, 32), [12, 24, 48]),
                          ("mnist_iresnet", (1, 28, 28), [4, 8])])  # fmt: skip
def test_paper_architecture_parameter_count(monkeypatch, experiment, shape, channels):
    """The paper profile's models have the authors' size: per block conv 3×3 (C → 512),
    conv 1×1 (512 → 512), conv 3×3 (512 → C) with biases and an ActNorm on C channels, 16
    blocks at each level's channel count, and a learned mean and log-std per dimension."""
    path = SMOKE.parents[1] / "paper" / f"{experiment}.yaml"
    cfg = load_config(CONFIG, path)
    # building runs 100 power iterations per convolution (minutes at 512 channels): skipped,
    # they change buffers, not parameters
    monkeypatch.setattr(SpectralNormConv2d, "power_iteration", lambda self, steps: None)
    x = torch.zeros(2, *shape, dtype=torch.uint8)
    flow = build_model(cfg.model, Dataset("fake", x, x, x, 256, md5="0"))
    h = 512
    per_block = [(9 * c * h + h) + (h * h + h) + (9 * h * c + c) + 2 * c for c in channels]
    expected = 16 * sum(per_block) + 2 * math.prod(shape)
    assert sum(p.numel() for p in flow.parameters()) == expected
