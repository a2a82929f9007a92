"""Circle, torus and sphere helpers and the Möbius circle flows (Rezende et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from common.flows.bijector import InputOutsideDomainError
from common.flows.circle import CircleFlow, circle_map, mobius, omega_from_params
from common.flows.manifolds import (
    TWO_PI,
    UniformSphere,
    UniformTorus,
    sphere_log_area,
    wrap_angle,
)
from common.flows.testing import check_bijector


def test_wrap_angle_and_domains():
    theta = torch.tensor([-0.5, 0.0, 7.0, TWO_PI])
    wrapped = wrap_angle(theta)
    assert ((wrapped >= 0) & (wrapped < TWO_PI)).all()
    assert torch.allclose(wrapped[:3], torch.tensor([TWO_PI - 0.5, 0.0, 7.0 - TWO_PI]))
    with pytest.raises(InputOutsideDomainError, match=r"\[0, 2π\)"):
        UniformTorus(1).log_prob(torch.tensor([[7.0]]))
    with pytest.raises(InputOutsideDomainError, match="unit sphere"):
        UniformSphere(2).log_prob(torch.tensor([[1.0, 1.0, 0.0]]))


def test_uniform_bases_have_the_right_log_density():
    assert sphere_log_area(1) == pytest.approx(math.log(2 * math.pi))
    assert sphere_log_area(2) == pytest.approx(math.log(4 * math.pi))
    torus = UniformTorus(2)
    theta = torus.sample(1000)
    assert theta.shape == (1000, 2) and theta.min() >= 0 and theta.max() < TWO_PI
    assert torch.allclose(torus.log_prob(theta), torch.full((1000,), -2 * math.log(TWO_PI)))
    sphere = UniformSphere(2)
    x = sphere.sample(20000)
    assert torch.allclose(x.norm(dim=-1), torch.ones(20000), atol=1e-5)
    assert x.mean(0).abs().max() < 0.02  # rotation invariant: zero mean
    assert torch.allclose(sphere.log_prob(x), torch.full((20000,), -math.log(4 * math.pi)))


def test_mobius_fixes_zero_is_monotone_and_inverts():
    theta = torch.linspace(0, TWO_PI, 2001, dtype=torch.float64)[:-1]
    omega = omega_from_params(torch.tensor([1.5, -0.7], dtype=torch.float64))
    assert omega.norm() < 1
    y, log_deriv = mobius(theta, omega)
    assert y[0] == 0 and (y.diff() > 0).all()  # 0 ↦ 0, increasing, no wrap inside
    back, inv_log_deriv = mobius(y, omega, inverse=True)
    assert torch.allclose(back, theta, atol=1e-10)
    assert torch.allclose(log_deriv, -inv_log_deriv, atol=1e-10)
    # the log-derivative is that of the angle map (finite differences)
    numeric = torch.log(y.diff() / theta.diff())
    assert torch.allclose(numeric, (log_deriv[1:] + log_deriv[:-1]) / 2, atol=1e-3)


def test_mobius_mixture_passes_invariance_check():
    torch.manual_seed(0)
    layer = CircleFlow(2, circle_map("mobius", 4))
    theta = 0.2 + (TWO_PI - 0.4) * torch.rand(5, 2)  # away from the wrap point
    check_bijector(layer, theta, perturb_scale=0.5, atol=1e-7)


def test_mobius_mixture_density_integrates_to_one():
    """q(θ) = p_uniform(f(θ))·f'(θ) integrates to 1 over the circle (trapezoid, 20k nodes)."""
    torch.manual_seed(1)
    layer = CircleFlow(1, circle_map("mobius", 6)).double()
    with torch.no_grad():
        layer.params[:, :12].normal_(std=10.0)  # |ω| near 1: strongly non-uniform
        layer.params[:, 12:].normal_()
    theta = torch.linspace(0, TWO_PI, 20001, dtype=torch.float64)[:, None]
    y, ldj = layer(theta[:-1])
    density = torch.exp(UniformTorus(1).double().log_prob(y) + ldj)
    mass = torch.trapezoid(torch.cat([density, density[:1]]), theta[:, 0])
    assert abs(mass.item() - 1) < 1e-3 and density.max() > 3 / TWO_PI
    assert (y[1:, 0].diff() > 0).all() and y[-1, 0] < TWO_PI  # a bijection of [0, 2π)


def test_mobius_mixture_inverse_tolerance_and_sampling_gradients():
    torch.manual_seed(2)
    from common.flows.circle import MobiusMixtureMap

    layer = CircleFlow(3, MobiusMixtureMap(5, inverse_tol=1e-9)).double()
    y = TWO_PI * torch.rand(64, 3, dtype=torch.float64)
    x, _ = layer.inverse(y)
    assert (layer(x)[0] - y).abs().max() < 1e-9
    # the sampling direction of reverse-KL training is differentiable w.r.t. the parameters
    z = TWO_PI * torch.rand(8, 3, dtype=torch.float64)
    samples, ldj = layer(z)
    (samples.sum() + ldj.sum()).backward()
    assert (layer.params.grad[:, :10] != 0).all() and (layer.params.grad[:, 10:] != 0).all()


def perturbed_spline(num_features=2, num_bins=8, seed=0):
    torch.manual_seed(seed)
    layer = CircleFlow(num_features, circle_map("spline", num_bins)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    return layer


def test_circular_spline_passes_invariance_check():
    theta = 0.1 + (TWO_PI - 0.2) * torch.rand(6, 2)
    check_bijector(perturbed_spline(), theta, perturb_scale=0.5, atol=1e-7)


def test_circular_spline_is_a_smooth_circle_diffeomorphism():
    """f(0) = 0, f(2π) = 2π, increasing, f'(0) = f'(2π), and its density integrates to 1."""
    layer = perturbed_spline(num_features=1, num_bins=12, seed=3)
    theta = torch.linspace(0, TWO_PI, 20001, dtype=torch.float64)[:, None]
    y, ldj = layer(theta)
    assert y[0, 0] == 0 and abs(y[-1, 0].item() - TWO_PI) < 1e-12 and (y[:, 0].diff() > 0).all()
    assert abs(ldj[0].item() - ldj[-1].item()) < 1e-9  # equal end derivatives
    density = torch.exp(-math.log(TWO_PI) + ldj)
    mass = torch.trapezoid(density, theta[:, 0])
    assert abs(mass.item() - 1) < 1e-3 and density.max() > 2 / TWO_PI
    x, inv_ldj = layer.inverse(y[:-1])
    assert (x - theta[:-1]).abs().max() < 1e-9 and torch.allclose(inv_ldj, -ldj[:-1])


@pytest.mark.parametrize("kind", ["mobius", "ncp"])
def test_mixtures_pass_the_check_and_normalise(kind):
    torch.manual_seed(4)
    theta = 0.2 + (TWO_PI - 0.4) * torch.rand(5, 2)
    check_bijector(CircleFlow(2, circle_map(kind, 3)), theta, perturb_scale=0.5, atol=1e-7)
    layer = CircleFlow(1, circle_map(kind, 4)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=2.0)
    grid = torch.linspace(0, TWO_PI, 20001, dtype=torch.float64)[:, None]
    y, ldj = layer(grid[:-1])  # the domain is [0, 2π): the end point is θ = 0 again
    end, end_ldj = layer(torch.full((1, 1), TWO_PI - 1e-9, dtype=torch.float64))
    assert y[0, 0].abs() < 1e-12 and abs(end.item() - TWO_PI) < 1e-6
    assert (y[:, 0].diff() > 0).all() and abs(ldj[0].item() - end_ldj.item()) < 1e-6
    density = torch.exp(-math.log(TWO_PI) + torch.cat([ldj, ldj[:1]]))  # periodic
    mass = torch.trapezoid(density, grid[:, 0])
    assert abs(mass.item() - 1) < 1e-3


def test_ncp_closed_forms_agree():
    from common.flows.circle import ncp

    theta = torch.linspace(0.01, TWO_PI - 0.01, 101, dtype=torch.float64)
    log_alpha, beta = (
        torch.tensor(0.7, dtype=torch.float64),
        torch.tensor(-0.4, dtype=torch.float64),
    )
    y, log_deriv = ncp(theta, log_alpha, beta)
    expected = torch.pi + 2 * torch.atan(log_alpha.exp() * torch.tan((theta - torch.pi) / 2) + beta)
    assert torch.allclose(y, expected, atol=1e-12)
    back, inv_log_deriv = ncp(y, log_alpha, beta, inverse=True)
    assert torch.allclose(back, theta, atol=1e-12) and torch.allclose(inv_log_deriv, -log_deriv)


@pytest.mark.parametrize("family", ["mobius", "ncp"])
def test_mixture_inverse_converges_in_float32_on_sharp_maps(family):
    """Sharp mixtures (centres near the unit circle, steep NCP slopes) in float32 on a dense
    grid: Newton alone cycles or stalls between adjacent floats there; the safeguarded solver
    must return every point inside [0, 2π] with a residual at float32's resolution, in far
    fewer evaluations of f than bisection's ~25."""
    torch.manual_seed(3)
    cmap = circle_map(family, 6)
    params = 2 * torch.randn(6, 18)  # |ω| up to 0.9 for Möbius, α up to e^±5 for NCP
    y = ((torch.arange(20000.0) + 0.5) * TWO_PI / 20000)[:, None].expand(-1, 6).contiguous()
    calls = 0
    evaluate = type(cmap).__call__

    def counted(self, theta, p):
        nonlocal calls
        calls += 1
        return evaluate(self, theta, p)

    type(cmap).__call__ = counted
    try:
        x, _ = cmap.inverse(y, params.expand(20000, -1, -1))
    finally:
        type(cmap).__call__ = evaluate
    assert ((x >= 0) & (x <= TWO_PI)).all()
    forward, _ = cmap(x.double(), params.double().expand(20000, -1, -1))
    assert (forward - y.double()).abs().max() < 1e-3
    assert calls - 2 < 25  # the solver's; then the Newton step and the derivative at its end
