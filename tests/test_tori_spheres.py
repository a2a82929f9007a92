"""Torus and sphere flows, the paper's targets and reverse-KL training (Rezende et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from common.flows.bijector import Compose
from common.flows.circle import circle_map
from common.flows.manifolds import TWO_PI, UniformSphere, UniformTorus, sphere_grid, torus_grid
from common.flows.sphere import (
    ExpMapFlow,
    InCylindricalCoordinates,
    LinearQuadraticPotential,
    QuadraticPotential,
    RadialPotential,
    RecursiveSphereFlow,
    _quadratic_forms,
)
from common.flows.testing import check_bijector, perturb_parameters
from common.flows.torus import AutoregressiveTorusFlow
from common.run.config import ConfigError, load_config
from common.run.loop import StoppedAt, train
from common.run.objectives import ReverseKL, kl_metrics
from common.run.targets import Domain, density_on_grid
from papers.tori_spheres.model import TorusFlowModel, build_model
from papers.tori_spheres.targets import S2_MODES, SphereTarget, TorusTarget, make_target
from papers.tori_spheres.train import ToriSpheresConfig
from tests.conftest import needs_compile

FAMILIES = ["mobius", "spline", "ncp"]


def cylindrical_points(n: int, seed: int = 0) -> torch.Tensor:
    """(h, φ) away from the poles and from the seam φ = 0 of the chart."""
    g = torch.Generator().manual_seed(seed)
    h = -0.9 + 1.8 * torch.rand(n, generator=g)
    phi = 0.3 + (TWO_PI - 0.6) * torch.rand(n, generator=g)
    return torch.stack([h, phi], dim=-1)


def sphere_layers() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "recursive": RecursiveSphereFlow(num_bins=8, hidden_features=16),
        "emsre": Compose(ExpMapFlow(RadialPotential(3)), ExpMapFlow(RadialPotential(2))),
        "emp": ExpMapFlow(LinearQuadraticPotential()),
        "emp_even": ExpMapFlow(QuadraticPotential()),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_autoregressive_torus_flow_passes_invariance_check(family):
    torch.manual_seed(1)
    layer = AutoregressiveTorusFlow(3, circle_map(family, 4), hidden_features=16)
    theta = 0.2 + (TWO_PI - 0.4) * torch.rand(5, 3)
    check_bijector(layer, theta, perturb_scale=0.3, atol=1e-7)


@pytest.mark.parametrize("name", ["recursive", "emsre", "emp", "emp_even"])
def test_sphere_flows_pass_invariance_check_in_intrinsic_coordinates(name):
    """ldj w.r.t. the surface measure = log|det| of the autograd Jacobian in (h, φ), since
    the cylindrical chart preserves area."""
    layer = InCylindricalCoordinates(sphere_layers()[name])
    check_bijector(layer, cylindrical_points(6), perturb_scale=0.3, atol=1e-7)


def test_torus_autoregression_is_triangular():
    """y₁ depends on θ₁ alone; y₂ on θ₁ only through the conditioner."""
    torch.manual_seed(2)
    layer = AutoregressiveTorusFlow(2, circle_map("spline", 5)).double()
    perturb_parameters(layer, 0.5, seed=3)
    theta = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y, _ = layer(theta)
    (grad_y1,) = torch.autograd.grad(y[0, 0], theta)
    assert grad_y1[0, 1] == 0 and grad_y1[0, 0] > 0


def _perturbed(module, scale, seed):
    module = module.double()
    perturb_parameters(module, scale, seed)
    return module


@pytest.mark.parametrize("family", FAMILIES)
def test_torus_flow_density_integrates_to_one(family):
    torch.manual_seed(4)
    model = build_model(TorusFlowModel(family=family, num_layers=2, num_components=4),
                        TorusTarget("t2_unimodal"))  # fmt: skip
    _perturbed(model, 0.15, seed=5)  # larger: peaks too sharp for a 200-node grid
    points, cell, _ = torus_grid(200)
    log_q = model.log_prob(points.double())
    assert abs(torch.logsumexp(log_q, 0).exp().item() * cell - 1) < 1e-3
    assert log_q.exp().max() > 2 / TWO_PI**2  # far from uniform: the check is not vacuous


@pytest.mark.parametrize("name", ["recursive", "emsre", "emp", "emp_even"])
def test_sphere_flow_density_integrates_to_one(name):
    from common.flows.bijector import Inverse
    from common.flows.flow import Flow

    flow = Flow(Inverse(_perturbed(sphere_layers()[name], 0.5, seed=6)), UniformSphere(2))
    flow = flow.double()
    points, cell, _ = sphere_grid(300)
    log_q = flow.log_prob(points.double())
    assert abs(torch.logsumexp(log_q, 0).exp().item() * cell - 1) < 1e-3
    assert log_q.exp().max() > 1.5 / (4 * math.pi)


def test_exp_map_flows_at_their_constraints_stay_invertible():
    """Large parameters saturate the constraints (Σα → 1, ‖A‖_F → 0.45, ‖μ‖₁ + ‖A‖₁ → 1);
    the maps must stay orientation-preserving bijections: ldj finite, round trip exact, on a
    dense grid."""
    radial, quad, emp = RadialPotential(4), QuadraticPotential(), LinearQuadraticPotential()
    with torch.no_grad():
        radial.a.copy_(torch.tensor([6.0, 5.0, 4.0, 3.0, -10.0]))  # Σα ≈ 1
        radial.b.fill_(3.0)  # β ≈ 3
        quad.B.mul_(100)  # ‖A‖_F → 0.45
        emp.m.mul_(100), emp.B.mul_(100)  # ‖μ‖₁ + ‖A‖₁ → 1
    points, _, _ = sphere_grid(120)
    points = torch.nn.functional.normalize(points.double(), dim=-1)  # unit in float64
    for potential in (radial, quad, emp):
        flow = ExpMapFlow(potential).double()
        y, ldj = flow(points)
        assert torch.isfinite(ldj).all()
        x, inv_ldj = flow.inverse(y)
        assert (x - points).abs().max() < 1e-8 and (ldj + inv_ldj).abs().max() < 1e-8
    assert quad.matrix().norm() > 0.449
    mu, A = emp.coefficients()
    assert 0.999 < (mu.abs().sum() + A.abs().sum()).item() <= 1  # tanh saturates


class _LiteralEMP(LinearQuadraticPotential):
    """ψ = μᵀx + xᵀAx read literally (∇ψ = μ + 2Ax) under the same constraint: folds."""

    def forward(self, x):
        mu, A = self.coefficients()
        return mu + 2 * x @ A, _quadratic_forms(2 * A)


def _adversarial_min_det(potential_cls, restarts: int = 3, steps: int = 60) -> float:
    """Smallest det df over a sphere grid after searching the parameters (Adam on a soft
    minimum of det df, from ``restarts`` random starts) for a fold."""
    points, _, _ = sphere_grid(60)
    x = torch.nn.functional.normalize(points.double(), dim=-1)
    worst = math.inf
    for seed in range(restarts):
        torch.manual_seed(seed)
        potential = potential_cls().double()
        with torch.no_grad():
            for p in potential.parameters():
                p.normal_()
        opt = torch.optim.Adam(potential.parameters(), lr=0.05)
        for _ in range(steps):
            _, (m11, m12, m21, m22), *_ = ExpMapFlow(potential)._map(x)
            det = m11 * m22 - m12 * m21
            loss = -torch.logsumexp(-50 * det, 0) / 50
            opt.zero_grad()
            loss.backward()
            opt.step()
        worst = min(worst, det.min().item())
    return worst


def test_paper_emp_constraint_keeps_the_map_a_bijection_under_adversarial_search():
    """The search that finds a fold in the literal reading (the test has power) finds none in
    ours: det df stays positive, so the map is a local diffeomorphism homotopic to the
    identity, hence a bijection of S²."""
    assert _adversarial_min_det(_LiteralEMP) < -0.1
    assert _adversarial_min_det(LinearQuadraticPotential) > 0


def test_targets_log_normalisers_and_mode_correction():
    for name, expected in [("t2_unimodal", 4.14758), ("t2_multimodal", 4.14758),
                           ("t2_correlated", 3.91167)]:  # fmt: skip
        target = TorusTarget(name)
        assert target.log_z == pytest.approx(expected, abs=1e-5)
        _, mass, _ = density_on_grid(lambda x, t=target: t.log_unnormalized(x) - t.log_z,
                                     Domain("torus"), 200)  # fmt: skip
        assert abs(mass - 1) < 1e-5
    sphere = SphereTarget()
    assert sphere.log_z == pytest.approx(10.92159, abs=1e-5)
    _, mass, _ = density_on_grid(lambda x: sphere.log_unnormalized(x) - sphere.log_z,
                                 Domain("sphere"), 400)  # fmt: skip
    assert abs(mass - 1) < 1e-4
    azimuth = math.atan2(S2_MODES[2][1], S2_MODES[2][0]) % TWO_PI
    assert azimuth == pytest.approx(5.0, abs=1e-3)  # not the printed 0.5


def test_monte_carlo_standard_errors_match_the_spread_of_repeated_estimates():
    """Each estimate's stated s.e. against the std of 300 independent estimates of it (each
    from 400 samples) for a perturbed torus flow on the multimodal target; a wrong influence
    function (e.g. the ESS one without its square term) misses by far more than 20 %."""
    torch.manual_seed(3)
    model = build_model(TorusFlowModel(family="mobius", num_layers=1, num_components=2),
                        TorusTarget("t2_multimodal")).double()  # fmt: skip
    perturb_parameters(model, 0.3, seed=4)
    runs = [kl_metrics(model, TorusTarget("t2_multimodal"), 400) for _ in range(300)]
    for key in ("kl", "kl_exact", "ess"):
        spread = torch.tensor([r[key] for r in runs], dtype=torch.float64).std().item()
        stated = sum(r[f"{key}_se"] for r in runs) / len(runs)
        assert stated == pytest.approx(spread, rel=0.2), key
    assert 20 < runs[0]["ess"] < 95  # weights neither uniform nor degenerate


def test_each_seed_tests_on_its_own_draw():
    """The test estimate of seed k uses its own sample stream: two seeds' configs on one model
    give different KL estimates; the same seed gives the same one."""
    path = "papers/tori_spheres/configs/smoke/t2_multimodal_mobius.yaml"
    cfgs = [load_config(ToriSpheresConfig, path, [f"seed={k}"]) for k in (0, 1, 0)]
    results = []
    for cfg in cfgs:
        objective = ReverseKL(cfg, build_model, make_target)
        torch.manual_seed(0)
        model = objective.build(torch.device("cpu"))
        results.append(objective.test(model)["test/kl"])
    assert results[0] != results[1] and results[0] == results[2]


def test_kl_of_the_uniform_flow_matches_the_closed_form():
    """q uniform on T² (a coordinate swap of the uniform base), p the unimodal target:
    KL(q‖p) = log Z − 2 log 2π − E_q[log p̃] = 2 log I₀(1), as E_q[cos(θ − a)] = 0."""
    from common.flows.bijector import Reverse
    from common.flows.flow import Flow

    torch.manual_seed(7)
    uniform = Flow(Reverse(2), UniformTorus(2)).double()
    metrics = kl_metrics(uniform, TorusTarget("t2_unimodal"), 40000)
    i0_1, i0_2 = (torch.special.i0(torch.tensor(v, dtype=torch.float64)).item() for v in (1, 2))
    assert metrics["kl_exact"] == pytest.approx(2 * math.log(i0_1), abs=0.02)  # 0.4718
    assert metrics["kl"] < metrics["kl_exact"] + 0.01  # the importance-sampled KL is biased low
    # ESS → E[w]²/E[w²] = (I₀(1)²/I₀(2))² = 49.4 % for w ∝ exp(cos(θ₁ − a) + cos(θ₂ − b))
    assert metrics["ess"] == pytest.approx(100 * (i0_1**2 / i0_2) ** 2, abs=2)


def test_samples_log_density_matches_density_evaluation():
    """log q from the sampling pass equals log q evaluated through the numerical inverse."""
    from papers.tori_spheres.model import ExpMapModel, RecursiveSphereModel

    torch.manual_seed(8)
    torus = TorusTarget("t2_correlated")
    for cfg_model, target in [
        (TorusFlowModel(family="mobius", num_layers=2, num_components=3), torus),
        (TorusFlowModel(family="ncp", num_layers=2, num_components=3), torus),
        (RecursiveSphereModel(spline_bins=8, hidden_features=16), SphereTarget()),
        (ExpMapModel(potential="radial", num_layers=3, num_components=2), SphereTarget()),
    ]:
        model = _perturbed(build_model(cfg_model, target), 0.3, seed=9)
        x, log_q = model.sample_with_log_prob(64)
        assert torch.allclose(model.log_prob(x), log_q, atol=1e-8), cfg_model.name


def smoke_config(tmp_path, experiment="t2_multimodal_spline", **train):
    path = f"papers/tori_spheres/configs/smoke/{experiment}.yaml"
    overrides = [f"train.{k}={v}" for k, v in train.items()]
    return load_config(ToriSpheresConfig, path, overrides)


def train_reverse_kl(cfg, workdir, **kwargs):
    return train(cfg, ReverseKL(cfg, build_model, make_target), workdir, progress=False, **kwargs)


def test_reverse_kl_training_lowers_kl_and_resumes_exactly(tmp_path):
    cfg = smoke_config(tmp_path, max_steps=40, eval_every=20)
    full = train_reverse_kl(cfg, tmp_path / "full")
    first = train_reverse_kl(cfg, tmp_path / "resumed", stop_after=15)
    assert first == StoppedAt(15)
    resumed = train_reverse_kl(cfg, tmp_path / "resumed")
    for key in ("test/kl", "test/kl_exact", "test/ess", "test/quadrature_mass"):
        assert resumed.metrics[key] == full.metrics[key], key
    assert abs(full.metrics["test/quadrature_mass"] - 1) < 1e-3
    assert abs(full.metrics["test/target_quadrature_mass"] - 1) < 1e-6
    assert full.figure("density") is not None
    assert (tmp_path / "full" / "figures" / "density.png").exists()
    untrained = smoke_config(tmp_path, max_steps=1, eval_every=1)
    before = train_reverse_kl(untrained, tmp_path / "one")
    assert full.metrics["test/kl_exact"] < before.metrics["test/kl_exact"]


@needs_compile
def test_compiled_loss_equals_eager_loss():
    torch.manual_seed(10)
    target = SphereTarget()
    from papers.tori_spheres.model import ExpMapModel

    model = build_model(ExpMapModel(potential="radial", num_layers=2, num_components=2), target)

    def loss(z):
        x, log_q = model.from_base(z)
        return (log_q - target.log_unnormalized(x)).mean()

    z = model.base.sample(128)
    assert torch.allclose(torch.compile(loss)(z), loss(z), atol=1e-5)


def test_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="lives on a sphere"):
        cfg = smoke_config(tmp_path, experiment="s2_emp")
        build_model(cfg.model, TorusTarget("t2_unimodal"))
    with pytest.raises(ConfigError, match="unknown key"):
        smoke_config(tmp_path, batchsize=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "paper: tori_spheres\nexperiment: x\nscale: cpu\ntarget: {name: s3_modes}\n"
        "model: {name: sphere_expmap, potential: radial}\ntrain: {max_steps: 1}\n"
    )
    with pytest.raises(ConfigError, match="target.name"):
        load_config(ToriSpheresConfig, bad)


def test_uniform_torus_base_is_what_the_model_uses():
    model = build_model(TorusFlowModel(family="ncp"), TorusTarget("t2_unimodal"))
    assert isinstance(model.base, UniformTorus)


def test_flows_reject_points_outside_their_domain():
    from common.flows.bijector import InputOutsideDomainError

    torus = AutoregressiveTorusFlow(2, circle_map("mobius", 3))
    with pytest.raises(InputOutsideDomainError, match=r"\[0, 2π\)"):
        torus(torch.tensor([[1.0, 7.0]]))
    for layer in sphere_layers().values():
        with pytest.raises(InputOutsideDomainError, match="unit sphere"):
            layer(torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(InputOutsideDomainError, match="unit sphere"):
        SphereTarget().log_unnormalized(torch.tensor([[0.0, 0.0, 2.0]]))
