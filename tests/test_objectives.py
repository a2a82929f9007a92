"""Objectives of the one training loop, the generic targets, and the run summary."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch

from common.files import write_atomic
from common.flows.bijector import Compose
from common.flows.coupling import Coupling, alternating_mask
from common.flows.distributions import StandardNormal
from common.flows.elementwise import Affine, RationalQuadraticSpline
from common.flows.flow import Flow
from common.flows.nets import MLP
from common.run.config import ConfigError, KLTrainConfig, StrictModel, VariationalRunConfig
from common.run.loop import train
from common.run.objectives import MaximumLikelihood, ReverseKL, kl_metrics
from common.run.summary import RunSummary, SummaryError
from common.run.targets import ENERGIES, Domain, EnergyTarget, density_on_grid
from tests.conftest import needs_compile
from tests.test_training import make_cfg


def test_energy_log_normalisers_by_quadrature_and_closed_form():
    """U2's mass on the box is 8·0.4·√(2π) up to the Gaussian tails cut by the box; every
    energy's density with its log Z integrates to 1 on a grid other than the one it used."""
    u2 = EnergyTarget("u2")
    assert u2.log_z == pytest.approx(math.log(8 * 0.4 * math.sqrt(2 * math.pi)), abs=1e-3)
    for name in ENERGIES:
        target = EnergyTarget(name)
        _, mass, _ = density_on_grid(lambda x, t=target: t.log_unnormalized(x) - t.log_z,
                                     target.domain, 1500)  # fmt: skip
        assert mass == pytest.approx(1.0, abs=1e-4), name
    with pytest.raises(ValueError, match="unknown energy"):
        EnergyTarget("u5")


def test_box_energies_vanish_outside_their_box_and_u1_does_not():
    outside = torch.tensor([[4.5, 0.0], [0.0, -4.2]])
    assert torch.isinf(EnergyTarget("u3").log_unnormalized(outside)).all()
    assert torch.isfinite(EnergyTarget("u1").log_unnormalized(outside)).all()
    # U1's two lobes sit at z₁ = ±2 on the ring of radius 2: the density is highest there
    log_p = EnergyTarget("u1").log_unnormalized(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert log_p[0] > log_p[1]


def test_plane_grid_is_the_midpoint_rule():
    points, cell, coords = Domain("plane", bounds=(-1.0, 1.0)).grid(4)
    assert points.shape == (16, 2) and cell == pytest.approx(0.25)
    assert coords["x1"].tolist() == [-0.75, -0.25, 0.25, 0.75]


class PlaneModel(StrictModel):
    name: Literal["realnvp_plane"] = "realnvp_plane"


def energy_config(**train):
    train = {"batch_size": 128, "max_steps": 150, "eval_every": 50, "log_every": 10,
             "eval_samples": 4000, "monitor_samples": 500, "grid_size": 200,
             "optim": {"lr": 3e-3}} | train  # fmt: skip
    return VariationalRunConfig(
        paper="tests", experiment="u1", scale="smoke", target={"name": "u1"},
        model=PlaneModel(), train=KLTrainConfig(**train),
    )  # fmt: skip


def plane_flow(cfg, target) -> Flow:
    """A small affine-coupling flow on R² (a model for U1 on the plane)."""
    assert target.domain.kind == "plane"

    def mlp(n_in, n_out):
        return MLP(n_in, n_out, 32, 2, "tanh", zero_init=True)

    layers = [Coupling(alternating_mask(2, k % 2), Affine, mlp) for k in range(6)]
    return Flow(Compose(*layers), StandardNormal(2))


def test_reverse_kl_to_a_euclidean_energy_lowers_the_kl(tmp_path):
    """Reverse KL is not tied to tori and spheres: U1 on the plane, log Z by quadrature."""
    cfg = energy_config()
    objective = ReverseKL(cfg, plane_flow, lambda target_cfg: EnergyTarget(target_cfg["name"]))
    out = train(cfg, objective, tmp_path / "u1", progress=False)
    torch.manual_seed(0)
    untrained = kl_metrics(plane_flow(None, EnergyTarget("u1")), EnergyTarget("u1"), 4000)
    assert out.metrics["test/kl_exact"] < untrained["kl_exact"] - 0.5
    assert out.metrics["test/quadrature_mass"] == pytest.approx(1.0, abs=1e-2)
    assert out.figure("density") is not None and out.best_step == out.steps == 150


def test_reverse_kl_refuses_early_stopping():
    with pytest.raises(ConfigError, match="patience"):
        ReverseKL(energy_config(patience=2), plane_flow, EnergyTarget)


@needs_compile
def test_compiled_likelihood_loss_equals_the_eager_one(data_root):
    from papers.nice.model import build_model

    cfg = make_cfg(data_root)
    objective = MaximumLikelihood(cfg, build_model)
    torch.manual_seed(0)
    model = objective.build(torch.device("cpu"))
    batch = objective.batch(model, step=3)
    eager = objective.loss(model, batch)
    assert torch.allclose(torch.compile(objective.loss)(model, batch), eager, atol=1e-4)
    # the split dequantize → log_prob_continuous is log_prob
    torch.manual_seed(5)
    x = objective.data.x_train[:16]
    reference = model.log_prob(x)
    torch.manual_seed(5)
    assert torch.equal(model.log_prob_continuous(*model.dequantize(x)), reference)


def test_rational_quadratic_spline_tails_and_identity_start():
    spline = RationalQuadraticSpline(3, num_bins=4, bound=1.0).double()
    x = torch.tensor([[-3.0, 0.3, 2.0]], dtype=torch.float64)
    zero = torch.zeros(1, spline.num_params * 3, dtype=torch.float64)
    y, log_deriv = spline(x, zero)
    assert torch.allclose(y, x) and torch.allclose(log_deriv, torch.zeros_like(x), atol=1e-12)
    params = torch.randn(1, spline.num_params * 3, dtype=torch.float64)
    y, log_deriv = spline(x, params)
    assert y[0, 0] == -3.0 and y[0, 2] == 2.0 and log_deriv[0, 0] == log_deriv[0, 2] == 0
    assert y[0, 1] != 0.3  # inside the bound the map moves the point
    edge = torch.tensor([[1.0 - 1e-9, 0.0, 0.0]], dtype=torch.float64)  # C¹ at the bound
    assert spline(edge, params)[1][0, 0].abs() < 1e-6


def test_summary_errors_name_the_file(tmp_path):
    with pytest.raises(SummaryError, match="does not exist"):
        RunSummary.read(tmp_path / "missing.json")
    bad = write_atomic(tmp_path / "metrics.json", '{"run_id": null}')
    with pytest.raises(SummaryError, match="not a run summary"):
        RunSummary.read(bad)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away
