"""i-ResNet blocks (common.flows.residual): the invariance check in exact mode, the spectral
normalisation's bound on the operator, and the log-det estimators against the exact value."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.flows.residual import (
    LipSwish,
    ResidualBlock,
    SpectralNormConv2d,
    SpectralNormLinear,
    converge_spectral_norms,
    lipschitz_constant,
)
from common.flows.testing import check_bijector, check_estimator_unbiased, perturb_parameters


def vector_g(dims: int = 3, hidden: int = 16, coeff: float = 0.9, iters: int = 1) -> nn.Module:
    kw = {"coeff": coeff, "n_power_iterations": iters}
    return nn.Sequential(
        SpectralNormLinear(dims, hidden, seed=1, **kw), LipSwish(),
        SpectralNormLinear(hidden, hidden, seed=2, **kw), nn.ELU(),
        SpectralNormLinear(hidden, dims, seed=3, **kw),
    )  # fmt: skip


def conv_g(shape=(2, 4, 4), hidden: int = 6) -> nn.Module:
    C, H, W = shape
    return nn.Sequential(
        SpectralNormConv2d(C, hidden, 3, shape, seed=1), LipSwish(),
        SpectralNormConv2d(hidden, C, 3, (hidden, H, W), seed=2),
    )  # fmt: skip


@pytest.mark.parametrize("logdet", ["exact", "series", "unbiased"])
def test_vector_block_passes_the_check_in_exact_mode(logdet):
    torch.manual_seed(0)
    check = check_bijector(ResidualBlock(vector_g(), logdet=logdet, tol=1e-10),
                           torch.randn(4, 3), atol=1e-5)  # fmt: skip
    assert check.exact_mode == (logdet != "exact")


def test_conv_block_passes_the_check_and_the_inverse_reaches_its_tolerance():
    torch.manual_seed(0)
    block = ResidualBlock(conv_g(), logdet="series", tol=1e-9)
    check_bijector(block, torch.randn(2, 2, 4, 4), atol=1e-5)
    block = block.double().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        z, _ = block(x)
        back, _ = block.inverse(z)
    assert (back - x).abs().max() < 1e-8
    assert 1 < block.last_inverse_iterations < block.max_iter


def test_spectral_norm_bounds_the_operator_not_the_kernel():
    """After perturbing the weights and converging the power iteration, each normalised
    operator (the conv on its feature maps, as a dense matrix) has norm ≤ c, and the block's
    g measured at random points stays below c."""
    torch.manual_seed(0)
    g = conv_g()
    perturb_parameters(g, 0.5, seed=3)
    converge_spectral_norms(g, 500)
    g.eval()
    conv = g[0]
    w = conv.normalized_weight().detach()
    dense = torch.autograd.functional.jacobian(
        lambda v: nn.functional.conv2d(v, w, padding=1), torch.zeros(1, 2, 4, 4)
    ).reshape(6 * 16, 2 * 16)
    assert torch.linalg.matrix_norm(dense, 2) <= 0.9 * (1 + 1e-4)
    kernel_norm = torch.linalg.matrix_norm(w.reshape(6, -1), 2)
    assert abs(kernel_norm - 0.9) > 0.05, "the reshaped kernel's norm is not the operator's"
    assert lipschitz_constant(g, torch.randn(4, 2, 4, 4)) < 0.9
    lin = vector_g()
    perturb_parameters(lin, 0.5, seed=4)
    converge_spectral_norms(lin, 500)
    lin.eval()
    for layer in (lin[0], lin[2], lin[4]):
        assert torch.linalg.matrix_norm(layer.normalized_weight(), 2) <= 0.9 * (1 + 1e-4)
    assert lipschitz_constant(lin, torch.randn(8, 3)) < 0.9


def _exact_series(block: ResidualBlock, x: torch.Tensor, n: int) -> torch.Tensor:
    """Σ_{k≤n} (−1)^{k+1} tr(J^k)/k with the exact Jacobian, per example."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: block.g(v[None])[0], xi, create_graph=True)
        P, total = torch.eye(len(xi), dtype=x.dtype), 0.0
        for k in range(1, n + 1):
            P = P @ J
            total = total + (-1) ** (k + 1) * torch.trace(P) / k
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_truncated_series_is_the_hutchinson_mean_and_its_bias_shrinks_with_terms(noise):
    """The series estimate's mean over probes is the truncated series (Hutchinson is unbiased
    for each trace, with either probe), and the truncated series' distance from the exact
    log-det falls with n within the bound D·Lᵏ⁺¹/((n+1)(1 − L))."""
    torch.manual_seed(0)
    block = ResidualBlock(vector_g(coeff=0.7), logdet="series", noise=noise).double().eval()
    perturb_parameters(block, 0.1, seed=1)
    converge_spectral_norms(block, 300)
    x = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        from common.flows.bijector import exact_ldj

        with exact_ldj(block):
            exact = block(x)[1]
    L = lipschitz_constant(block.g, x)
    previous = math.inf
    for n in (1, 2, 4, 8):
        block.n_terms = n
        truncated = _exact_series(block, x, n)
        bias = (truncated - exact).abs().max().item()
        assert bias <= 3 * L ** (n + 1) / ((n + 1) * (1 - L)) + 1e-12
        assert bias < previous
        previous = bias
    block.n_terms = 4
    draws = torch.stack([block(x)[1] for _ in range(3000)])
    z = (draws.mean(0) - _exact_series(block, x, 4)) / (draws.std(0) / 3000**0.5)
    assert z.abs().max() < 4


def test_russian_roulette_estimate_is_unbiased():
    torch.manual_seed(0)
    block = ResidualBlock(vector_g(coeff=0.5), logdet="unbiased", n_exact_terms=2)
    check_estimator_unbiased(block, torch.randn(3, 3), num_draws=3000)


def test_the_series_estimate_is_biased_where_the_unbiased_one_is_not():
    """One term of the series misses the rest: its mean over many draws sits far from the
    exact value, which the Russian roulette's mean reaches (the follow-up's claim)."""
    torch.manual_seed(0)
    g = nn.Sequential(SpectralNormLinear(3, 3, coeff=0.9, seed=5), nn.Tanh())
    with torch.no_grad():  # large weights: the normalisation binds, Lip(g) close to c
        g[0].weight.mul_(10)
    converge_spectral_norms(g, 300)
    x = 0.1 * torch.randn(3, 3)  # where tanh' ≈ 1
    series = ResidualBlock(g, logdet="series", n_terms=1, noise="rademacher")
    with pytest.raises(AssertionError, match="biased"):
        check_estimator_unbiased(series, x, num_draws=2000)
    roulette = ResidualBlock(g, logdet="unbiased", noise="rademacher")
    check_estimator_unbiased(roulette, x, num_draws=4000)


def test_neumann_gradient_is_unbiased():
    """The mean over draws of the unbiased estimator's gradient (Neumann series, no graph
    through the powers) matches the gradient of the exact log-det."""
    torch.manual_seed(0)
    block = ResidualBlock(vector_g(coeff=0.5, iters=0), logdet="unbiased").double().train()
    x = torch.randn(3, 3, dtype=torch.float64)
    weight = block.g[2].weight

    def grad_of(fn) -> torch.Tensor:
        block.zero_grad()
        fn().sum().backward()
        return weight.grad.clone()

    from common.flows.bijector import exact_ldj

    with exact_ldj(block):
        exact = grad_of(lambda: block(x)[1])
    draws = torch.stack([grad_of(lambda: block(x)[1]) for _ in range(1500)])
    se = draws.std(0) / 1500**0.5
    z = ((draws.mean(0) - exact) / se.clamp_min(1e-12)).abs()
    assert z.max() < 4.5, z.max()


def test_series_gradient_is_unbiased_for_the_truncated_series_gradient():
    """The series' training gradient (Neumann form, one graph) averages to the gradient of
    the truncated series Σ_{k≤n} (−1)^{k+1} tr(J^k)/k itself, computed from the dense Jacobian
    (with respect to the weight): i-ResNet's objective, estimated cheaply. The
    gradient of the series one term longer sits far off (an off-by-one in the surrogate)."""
    torch.manual_seed(0)
    # a linear g with a symmetric weight of eigenvalues 0.9, 0.7, −0.8: the series' terms stay
    # large, so one term more or less moves the gradient by much more than the probe noise
    g = nn.Sequential(SpectralNormLinear(3, 3, coeff=0.95, n_power_iterations=0, seed=1))
    q = torch.linalg.qr(torch.randn(3, 3))[0]
    with torch.no_grad():
        g[0].weight.copy_(q @ torch.diag(torch.tensor([0.9, 0.7, -0.8])) @ q.T)
    converge_spectral_norms(g, 300)
    block = ResidualBlock(g, logdet="series", n_terms=2).double().train()
    weight = block.g[0].weight

    def grads(fn, x) -> torch.Tensor:
        block.zero_grad()
        fn(x).sum().backward()
        return weight.grad.flatten().clone()

    x = torch.randn(3, 3, dtype=torch.float64)
    target = grads(lambda v: _exact_series(block, v, 2), x)
    draws = torch.stack([grads(lambda v: block(v)[1], x) for _ in range(2000)])
    z = ((draws.mean(0) - target) / (draws.std(0) / 2000**0.5).clamp_min(1e-12)).abs()
    assert z.max() < 4.5, z.max()
    longer = grads(lambda v: _exact_series(block, v, 3), x)
    assert ((draws.mean(0) - longer) / (draws.std(0) / 2000**0.5).clamp_min(1e-12)).abs().max() > 10


def test_estimator_measurement_exact_value_and_verdicts(tmp_path):
    """papers/iresnet/estimators.py: the exact log-det of its block is Σ log(1 + λᵢ) over the
    eigenvalues it was built with; the series' bias falls with n and is significant at n = 1;
    the finite-variance roulette is not flagged; the infinite-variance one is not tested."""
    import json

    from papers.iresnet.estimators import COEFF, main

    out = tmp_path / "estimators.json"
    main(["--profile", "smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    eigenvalues = torch.linspace(-COEFF, COEFF, 4, dtype=torch.float64)
    assert data["exact"] == pytest.approx(torch.log1p(eigenvalues).sum().item(), abs=1e-9)
    results = data["results"]
    biases = [abs(results[f"series, n = {n}"]["bias"]) for n in (1, 2, 5)]
    assert biases[0] > biases[1] > biases[2] and results["series, n = 1"]["p"] < 1e-3
    assert results["Russian roulette, p = 0.1"]["p"] > 1e-3
    assert results["Russian roulette, p = 0.5"]["p"] is None
    assert "infinite for this block" in data["intro"]
