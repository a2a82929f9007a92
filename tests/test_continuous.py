"""Continuous normalizing flows (common.flows.continuous): the invariance check with the exact
trace, the Hutchinson estimate's unbiasedness, adjoint against direct gradients, the NFE count
and the trainable end time."""

from __future__ import annotations

import math

import pytest
import torch

from common.flows.continuous import CNF, ODENet
from common.flows.testing import check_bijector, check_estimator_unbiased


@pytest.mark.parametrize("layer_type", ["concatsquash", "concat", "ignore"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_cnf_passes_the_check_with_tight_tolerances(layer_type, divergence):
    torch.manual_seed(0)
    net = ODENet(3, [16, 16], layer_type, "tanh" if layer_type != "ignore" else "softplus")
    cnf = CNF(net, divergence=divergence, atol=1e-10, rtol=1e-10)
    check = check_bijector(cnf, torch.randn(4, 3), atol=1e-6)
    assert check.exact_mode == (divergence == "hutchinson")


def test_linear_dynamics_give_the_analytic_log_det_and_end_time():
    """f(z) = w z + b in 1-D: z(T) = e^{wT} x + b(e^{wT} − 1)/w and ldj = wT exactly; T is
    learned through sqrt_T (here T = 1.7)."""
    net = ODENet(1, [], "ignore").double()
    with torch.no_grad():
        net.layers[0].linear.weight.fill_(-0.6)
        net.layers[0].linear.bias.fill_(0.3)
    cnf = CNF(net, T=1.7, atol=1e-10, rtol=1e-10).double()
    x = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    z, ldj = cnf(x)
    w, b = -0.6, 0.3
    T = cnf.dynamics.end_time.item()  # 1.7 up to the float32 rounding of sqrt_T
    assert abs(T - 1.7) < 1e-6
    assert z[:, 0].tolist() == pytest.approx(
        [math.exp(w * T) * v + b * (math.exp(w * T) - 1) / w for v in (0.5, -2.0)], abs=1e-8
    )
    assert ldj.tolist() == pytest.approx([w * T] * 2, abs=1e-8)
    ldj.sum().backward()  # d(wT)/d sqrt_T = 2 w sqrt_T, per example
    assert cnf.dynamics.sqrt_T.grad.item() == pytest.approx(2 * 2 * w * math.sqrt(T), abs=1e-7)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_log_det_is_unbiased(noise):
    """One probe per solve, fixed through it: with a fixed-step solver the estimate's mean
    over solves is the exact-trace solve's ldj (within 4 standard errors)."""
    torch.manual_seed(0)
    cnf = CNF(ODENet(2, [16], "concatsquash"), divergence="hutchinson", noise=noise,
              solver="rk4", step_size=0.25)  # fmt: skip
    check_estimator_unbiased(cnf, torch.randn(3, 2), num_draws=1500)


def test_adjoint_and_direct_gradients_agree():
    torch.manual_seed(0)
    net = ODENet(2, [8, 8], "concatsquash")
    direct = CNF(net, atol=1e-9, rtol=1e-9).double()
    adjoint = CNF(net, atol=1e-9, rtol=1e-9, adjoint=True).double()
    adjoint.load_state_dict(direct.state_dict())
    x = torch.randn(5, 2, dtype=torch.float64)

    def grads(cnf):
        cnf.zero_grad()
        xi = x.clone().requires_grad_(True)
        z, ldj = cnf(xi)
        (0.5 * (z**2).sum() - ldj.sum()).backward()
        return torch.cat([xi.grad.flatten()] + [p.grad.flatten() for p in cnf.parameters()])

    g_direct, g_adjoint = grads(direct), grads(adjoint)
    assert torch.allclose(g_direct, g_adjoint, rtol=1e-5, atol=1e-7)
    assert adjoint.dynamics.sqrt_T.grad.abs() > 0


def test_function_evaluations_are_counted():
    torch.manual_seed(0)
    cnf = CNF(ODENet(2, [8], "concat"), solver="rk4", step_size=0.25, adjoint=True)
    x = torch.randn(4, 2)
    z, ldj = cnf(x)
    assert cnf.last_nfe == 4 * 4  # rk4: 4 evaluations per step, 4 steps over s ∈ [0, 1]
    before = cnf.evaluations
    (z.sum() + ldj.sum()).backward()
    assert cnf.evaluations - before == 4 * 4  # the adjoint solve backwards, 4 steps again
    cnf.inverse(z.detach())
    assert cnf.last_nfe == 16


def test_regularisers_integrate_kinetic_energy_and_jacobian_norm():
    """f(z) = w z + b in 1-D: ∫₀ᵀ f² dt = w (x + b/w)² (e^{2wT} − 1) / 2 and ∫₀ᵀ ‖∂f/∂z‖² dt
    = w² T (a Rademacher probe makes the estimate exact in 1-D); penalty() weighs their means,
    is differentiable, and is 0 in evaluation mode."""
    net = ODENet(1, [], "ignore").double()
    with torch.no_grad():
        net.layers[0].linear.weight.fill_(-0.6)
        net.layers[0].linear.bias.fill_(0.3)
    cnf = CNF(net, T=1.5, atol=1e-10, rtol=1e-10, noise="rademacher",
              kinetic_energy=0.1, jacobian_frobenius=0.01).double()  # fmt: skip
    x = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    cnf(x)
    w, b, T = -0.6, 0.3, cnf.dynamics.end_time.item()
    kinetic, frobenius = cnf.last_regularisers
    expected = [w * (v + b / w) ** 2 * (math.exp(2 * w * T) - 1) / 2 for v in (0.5, -2.0)]
    assert kinetic.tolist() == pytest.approx(expected, abs=1e-8)
    assert frobenius.tolist() == pytest.approx([w**2 * T] * 2, abs=1e-8)
    penalty = cnf.penalty()
    assert penalty.item() == pytest.approx(0.1 * sum(expected) / 2 + 0.01 * w**2 * T, abs=1e-8)
    penalty.backward()
    assert net.layers[0].linear.weight.grad.abs() > 0
    cnf.eval()
    cnf(x)
    assert cnf.penalty().item() == 0.0


def test_values_only_skips_the_trace_and_keeps_the_values():
    """Sampling discards the ldj: inside values_only a CNF and a residual block return the
    same values with a zero ldj, and the mode ends with the block."""
    from common.flows.bijector import values_only
    from common.flows.residual import ResidualBlock, lipschitz_mlp

    torch.manual_seed(0)
    cnf = CNF(ODENet(2, [8], "concatsquash"), solver="rk4", step_size=0.25)
    block = ResidualBlock(lipschitz_mlp(2, 8, 1), logdet="series")
    z = torch.randn(5, 2)
    for layer in (cnf, block):
        with torch.no_grad():
            x, ldj = layer.inverse(z)
            with values_only(layer):
                x_fast, ldj_fast = layer.inverse(z)
            assert torch.allclose(x_fast, x, atol=1e-6) and ldj.abs().sum() > 0
            assert (ldj_fast == 0).all()
            assert not layer.ldj_unused and layer.inverse(z)[1].abs().sum() > 0


class _NoTangents(torch.nn.Module):
    """An ODENet seen as any network: the CNF falls back to vector-Jacobian products."""

    def __init__(self, net: ODENet) -> None:
        super().__init__()
        self.net = net

    def forward(self, t, z):
        return self.net(t, z)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_forward_tangents_and_vector_jacobian_products_agree(divergence):
    """The two ways to the trace give the same ldj and the same gradients (one probe drawn
    from the same seed in both)."""
    torch.manual_seed(0)
    net = ODENet(3, [8, 8], "concatsquash", "softplus").double()
    fast = CNF(net, divergence=divergence, atol=1e-9, rtol=1e-9).double()
    slow = CNF(_NoTangents(net), divergence=divergence, atol=1e-9, rtol=1e-9).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    results = []
    for cnf in (fast, slow):
        cnf.zero_grad()
        torch.manual_seed(1)
        z, ldj = cnf(x)
        (z.pow(2).sum() - ldj.sum()).backward()
        results.append((z, ldj, torch.cat([p.grad.flatten() for p in cnf.parameters()])))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)


def test_exact_frobenius_regulariser_of_linear_dynamics():
    """f(z) = A z: ∫₀ᵀ ‖∂f/∂z‖²_F dt = T ‖A‖²_F, exactly with the exact trace (no probe)."""
    net = ODENet(2, [], "ignore").double()
    A = torch.tensor([[-0.5, 0.8], [0.3, -1.1]], dtype=torch.float64)
    with torch.no_grad():
        net.layers[0].linear.weight.copy_(A)
        net.layers[0].linear.bias.zero_()
    cnf = CNF(net, T=0.8, atol=1e-10, rtol=1e-10, jacobian_frobenius=1.0).double()
    cnf(torch.randn(3, 2, dtype=torch.float64))
    frobenius = cnf.last_regularisers[1]
    T = cnf.dynamics.end_time.item()
    assert frobenius.tolist() == pytest.approx([T * A.pow(2).sum().item()] * 3, abs=1e-8)


def test_evaluation_solves_at_the_test_tolerances():
    torch.manual_seed(0)
    cnf = CNF(ODENet(2, [16], "concatsquash"), atol=1e-2, rtol=1e-2, test_atol=1e-8,
              test_rtol=1e-8)  # fmt: skip
    x = torch.randn(8, 2)
    cnf(x)
    loose = cnf.last_nfe
    cnf.eval()
    with torch.no_grad():
        cnf(x)
    assert cnf.last_nfe > 2 * loose


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_convolutional_cnf_passes_the_check(divergence):
    from common.flows.continuous import ODEConvNet

    torch.manual_seed(0)
    cnf = CNF(ODEConvNet(2, [4, 4], "softplus"), divergence=divergence, atol=1e-10, rtol=1e-10)
    check = check_bijector(cnf, torch.randn(3, 2, 4, 4), atol=1e-6)
    assert check.exact_mode == (divergence == "hutchinson")
