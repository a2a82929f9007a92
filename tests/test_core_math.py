"""Base distributions, dequantization + bits/dim exactness, log-det utilities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from common.flows.bijector import Compose, InputOutsideDomainError
from common.flows.dequantize import UniformDequantization, bits_per_dim
from common.flows.distributions import StandardLogistic, StandardNormal
from common.flows.flow import Flow
from common.flows.layers import ElementwiseAffine, Reshape
from common.flows.logdet import (
    LULinear,
    LUParametrization,
    hutchinson_trace,
    jacobian_logabsdet,
    logabsdet,
    triangular_logabsdet,
)

# --- base distributions -------------------------------------------------------------------


def test_standard_normal_matches_torch():
    z = torch.randn(7, 3)
    ref = td.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(StandardNormal(3).log_prob(z), ref, atol=1e-6)


def test_standard_logistic_matches_torch():
    z = 3 * torch.randn(7, 4)
    logistic = td.TransformedDistribution(
        td.Uniform(0.0, 1.0), [td.SigmoidTransform().inv]
    )  # z = logit(u), u ~ U(0, 1)
    ref = logistic.log_prob(z).sum(1)
    assert torch.allclose(StandardLogistic(4).log_prob(z), ref, atol=1e-5)


@pytest.mark.parametrize("cls", [StandardNormal, StandardLogistic])
def test_sampling_shape_dtype_and_temperature(cls):
    base = cls((2, 3)).double()
    torch.manual_seed(0)
    hot = base.sample(20000)
    torch.manual_seed(0)
    cold = base.sample(20000, temperature=0.5)
    assert hot.shape == (20000, 2, 3) and hot.dtype == torch.float64
    assert torch.allclose(cold, 0.5 * hot)
    assert torch.isfinite(hot).all()
    expected_std = 1.0 if cls is StandardNormal else math.pi / math.sqrt(3)
    assert abs(hot.std().item() - expected_std) < 0.05 * expected_std


def test_base_rejects_wrong_event_shape():
    with pytest.raises(ValueError, match="expects"):
        StandardNormal(3).log_prob(torch.zeros(2, 4))


# --- dequantization and bits/dim ----------------------------------------------------------
# UniformDequantization is the one layer not run through check_bijector: it maps discrete
# levels to a random point of their cell, so it has no Jacobian; its contract (exact round
# trip, ldj = −D·log n both ways, exact bits/dim) is checked directly here.


def uniform_model(num_levels: int, shape: tuple[int, ...]) -> Flow:
    """Dequantize, then a density that is 1 on [0, 1)^D: log p_base(z) + ldj = 0."""

    class UnitCube(StandardNormal):
        def log_prob(self, z):
            return z.new_zeros(z.shape[0])

    d = math.prod(shape)
    return Flow(Reshape(shape, (d,)), UnitCube(d), UniformDequantization(num_levels))


@pytest.mark.parametrize(("levels", "expected"), [(256, 8.0), (17, math.log2(17)), (2, 1.0)])
def test_uniform_model_gives_exact_bits_per_dim(levels, expected):
    shape = (1, 8, 8)
    x = torch.randint(0, levels, (16, *shape))
    log_prob = uniform_model(levels, shape).log_prob(x)
    bpd = bits_per_dim(log_prob, math.prod(shape))
    assert torch.allclose(bpd, torch.full_like(bpd, expected), rtol=0, atol=1e-5)


def test_dequantization_round_trip_and_ldj():
    layer = UniformDequantization(17)
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    y, ldj = layer(x)
    assert ((y >= 0) & (y < 1)).all()
    assert torch.allclose(ldj, torch.full((5,), -64 * math.log(17)))
    x_back, inv_ldj = layer.inverse(y)
    assert torch.equal(x_back, x.float()) and torch.allclose(ldj + inv_ldj, torch.zeros(5))


@pytest.mark.parametrize(
    "bad", [torch.tensor([[17.0]]), torch.tensor([[-1.0]]), torch.tensor([[0.5]])]
)
def test_dequantization_rejects_non_levels(bad):
    with pytest.raises(InputOutsideDomainError, match="integers in"):
        UniformDequantization(17)(bad)


def test_flow_log_prob_parts_and_sampling():
    flow = Flow(Compose(Reshape((1, 2, 2), (4,)), ElementwiseAffine(4)), StandardNormal(4),
                UniformDequantization(4))  # fmt: skip
    x = torch.randint(0, 4, (3, 1, 2, 2))
    parts = flow.log_prob_parts(x)
    assert torch.allclose(parts.dequant_ldj, torch.full((3,), -4 * math.log(4)))
    assert torch.allclose(parts.continuous, parts.total + 4 * math.log(4))
    samples = flow.sample(6, temperature=0.7)
    assert samples.shape == (6, 1, 2, 2) and set(samples.unique().tolist()) <= {0.0, 1, 2, 3}


# --- log-det utilities --------------------------------------------------------------------


def test_lu_parametrization_matches_slogdet_and_init_weight():
    w = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    lu = LUParametrization(5, weight=w).double()
    assert torch.allclose(lu.weight(), w, atol=1e-10)
    with torch.no_grad():
        for p in lu.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert torch.allclose(lu.logabsdet(), logabsdet(lu.weight()), atol=1e-10)


def test_lu_linear_inverse_is_exact():
    layer = LULinear(4, seed=2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    z, _ = layer(x)
    assert torch.allclose(layer.inverse(z)[0], x, atol=1e-10)


def test_triangular_logabsdet():
    t = torch.tril(torch.randn(6, 6, dtype=torch.float64)) + 3 * torch.eye(6)
    assert torch.allclose(triangular_logabsdet(t), logabsdet(t))


def test_jacobian_logabsdet_of_linear_map():
    a = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    got = jacobian_logabsdet(lambda v: v @ a.T, x)
    assert torch.allclose(got, logabsdet(a).expand(4))


def test_hutchinson_rademacher_is_exact_for_diagonal_jacobian():
    d = torch.randn(4, 5, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace(x * d, x, noise="rademacher")
    assert torch.allclose(est, d.sum(1))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(noise):
    a = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    est = hutchinson_trace(x @ a.T, x, noise=noise, num_probes=4000, generator=g)
    # Var(εᵀAε) ≤ 2‖A‖_F² for both noises: allow 5 standard errors.
    tol = 5 * math.sqrt(2 * (a**2).sum().item() / 4000)
    assert abs(est.item() - torch.trace(a).item()) < tol


def test_hutchinson_rejects_unknown_noise():
    x = torch.randn(1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="rademacher"):
        hutchinson_trace(2 * x, x, noise="uniform")
