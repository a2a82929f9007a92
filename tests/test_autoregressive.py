"""MADE, the masked autoregressive layer (MAF / IAF), the gated map and MADE MoG."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from common.flows.autoregressive import (
    MADE,
    GatedAffine,
    InverseAutoregressive,
    MADEMoG,
    MaskedAutoregressive,
    MaskedLinear,
    made_degrees,
)
from common.flows.bijector import Compose
from common.flows.elementwise import Affine, RationalQuadraticSpline
from common.flows.image import BatchNorm, set_batch_norm_statistics
from common.flows.testing import check_bijector, perturb_parameters

D = 5
SPLINE = partial(RationalQuadraticSpline, num_bins=4, bound=2.0)
REVERSED = torch.arange(D).flip(0)

LAYERS = {
    "maf_affine": lambda: MaskedAutoregressive(D, partial(Affine, scale_bound=None), 16),
    "maf_bounded_affine_reversed": lambda: MaskedAutoregressive(D, Affine, 16, order=REVERSED),
    "maf_spline_random_degrees": lambda: MaskedAutoregressive(
        D, SPLINE, 16, num_hidden=3, degrees="random", order=torch.randperm(D), seed=4
    ),
    "maf_tanh_conditional": lambda: MaskedAutoregressive(
        D, Affine, 16, context_features=3, activation="tanh"
    ),
    "iaf_gated_conditional": lambda: InverseAutoregressive(
        D, GatedAffine, 16, context_features=3, order=REVERSED
    ),
    "iaf_affine": lambda: InverseAutoregressive(D, Affine, 16),
    "maf_stack_with_batch_norm": lambda: Compose(
        MaskedAutoregressive(D, Affine, 16),
        BatchNorm(D),
        MaskedAutoregressive(D, Affine, 16, order=REVERSED),
        BatchNorm(D),
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_autoregressive_layers_pass_invariance_check(name):
    layer = LAYERS[name]()
    context = torch.randn(4, 3) if "conditional" in name else None
    check_bijector(layer, torch.randn(4, D), context=context, perturb_scale=0.3)


def _made_jacobian(made: MADE, x: torch.Tensor, context=None) -> torch.Tensor:
    """∂ output / ∂ input, ``(P·D, D)``, at one input ``(1, D)``."""
    return torch.autograd.functional.jacobian(lambda v: made(v, context)[0], x)[:, 0]


@pytest.mark.parametrize("degrees", ["sequential", "random"])
@pytest.mark.parametrize("trial", range(4))
def test_made_jacobian_is_strictly_triangular_in_its_order(degrees, trial):
    """Output k·D + d depends on input j only where j comes before d in the order: for random
    orderings and random parameters, the Jacobian permuted into the order is strictly lower
    triangular in every parameter block. With sequential degrees and enough hidden units
    every allowed dependence is present (a mask that cuts too much fails too)."""
    g = torch.Generator().manual_seed(trial)
    D_, P = 7, 3
    order = torch.randperm(D_, generator=g)
    # tanh: no unit is cut off at x, as a ReLU may be
    made = MADE(D_, P, 24, num_hidden=2, order=order, degrees=degrees, context_features=2,
                activation="tanh", seed=trial).double()  # fmt: skip
    perturb_parameters(made, 0.5, seed=trial)
    x = torch.randn(1, D_, generator=g, dtype=torch.float64)
    ctx = torch.randn(1, 2, generator=g, dtype=torch.float64)
    jac = _made_jacobian(made, x, ctx).reshape(P, D_, D_)  # (param, output feature, input)
    position = order  # feature i is the position[i]-th in the order
    allowed = position[:, None] > position[None, :]  # output d may see input j
    assert (jac[:, ~allowed] == 0).all(), "an output depends on a feature not before it"
    if degrees == "sequential":
        assert (jac[:, allowed].abs() > 0).all(), "an allowed dependence is missing"
    # the context reaches every output, the first feature's included
    ctx_jac = torch.autograd.functional.jacobian(lambda c: made(x, c)[0], ctx)[:, 0]
    assert (ctx_jac.abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", ["maf_spline_random_degrees", "iaf_gated_conditional"])
def test_layer_jacobian_is_triangular_with_nonzero_diagonal(name):
    layer = LAYERS[name]().double()
    perturb_parameters(layer, 0.3, seed=1)
    inner = layer.bijector if isinstance(layer, InverseAutoregressive) else layer
    x = torch.randn(1, D, dtype=torch.float64)
    ctx = torch.randn(1, 3, dtype=torch.float64) if "conditional" in name else None
    jac = torch.autograd.functional.jacobian(lambda v: inner(v, ctx)[0], x)[0, :, 0]
    pos = inner.made.order
    later = pos[None, :] > pos[:, None]  # z_d must not depend on x_j for j after d
    assert (jac[later] == 0).all()
    assert (jac.diagonal().abs() > 0).all()


def test_made_degrees_follow_germain():
    g = torch.Generator().manual_seed(0)
    m = made_degrees(torch.tensor([2, 0, 1]), [5, 4], "sequential", g)
    assert m[0].tolist() == [3, 1, 2]
    assert m[1].tolist() == [1, 2, 1, 2, 1]  # k mod (D − 1) + 1
    r = made_degrees(torch.arange(6), [50, 50], "random", g)
    assert r[1].min() >= 1 and r[1].max() <= 5 and r[2].min() >= r[1].min()


def test_made_rejects_bad_order_and_missing_context():
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, 8, order=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="context"):
        MADE(3, 2, 8, context_features=2)(torch.randn(4, 3))


def test_inverse_autoregressive_samples_in_one_pass_and_evaluates_in_d():
    """IAF's fast direction is sampling (latent → data, ``inverse``): one MADE pass; MAF's is
    the density (data → latent, ``forward``): one pass; the other direction takes D."""
    calls = []
    maf = MaskedAutoregressive(D, Affine, 8)
    maf.made.register_forward_hook(lambda *_: calls.append(1))
    iaf = InverseAutoregressive(D, Affine, 8)
    iaf.bijector.made.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, D)
    for fn, expected in [(maf.forward, 1), (maf.inverse, D), (iaf.inverse, 1), (iaf.forward, D)]:
        calls.clear()
        fn(x)
        assert len(calls) == expected


def test_gated_affine_is_iaf_update():
    g = GatedAffine(3, gate_bias=1.0)
    x, raw, m = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    y, log_d = g(x, torch.cat([raw, m], 1))
    sigma = torch.sigmoid(raw + 1.0)
    torch.testing.assert_close(y, sigma * x + (1 - sigma) * m)
    torch.testing.assert_close(log_d, sigma.log())


def _quadrature_mass(log_prob, lim: float = 8.0, n: int = 400) -> float:
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    h = t[1] - t[0]
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return (log_prob(grid).exp().sum() * h * h).item()


def test_made_mog_is_a_normalised_autoregressive_mixture():
    base = MADEMoG(2, num_components=3, hidden_features=16, order=torch.tensor([1, 0])).double()
    perturb_parameters(base, 0.3, seed=2)
    with torch.no_grad():
        assert _quadrature_mass(base.log_prob) == pytest.approx(1.0, abs=1e-4)
        # against the mixture written out for one point
        u = torch.randn(1, 2, dtype=torch.float64)
        p = base.made(u).reshape(9, 2)
        logits, mu, log_sigma = p[:3], p[3:6], p[6:]
        comp = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(u[0])
        expected = torch.logsumexp(torch.log_softmax(logits, 0) + comp, 0).sum()
        torch.testing.assert_close(base.log_prob(u)[0], expected)


def test_made_mog_samples_follow_its_density():
    """The probabilities of nine quadrant events {u₁ < a, u₂ < b} under the samples against
    the density's, by quadrature (a wrong pass order or component draw moves them by many
    standard errors; moments would not do: the conditionals' scales grow in the tails)."""
    torch.manual_seed(0)
    base = MADEMoG(2, num_components=4, hidden_features=16).double()
    perturb_parameters(base, 0.5, seed=3)
    with torch.no_grad():
        s = base.sample(20000)
        t = torch.linspace(-15, 15, 1200, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        w = base.log_prob(grid).exp()
        w = w / w.sum()
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            p = w[(grid[:, 0] < a) & (grid[:, 1] < b)].sum().item()
            frac = ((s[:, 0] < a) & (s[:, 1] < b)).double().mean().item()
            se = math.sqrt(p * (1 - p) / len(s))
            assert abs(frac - p) < 4.5 * se, (a, b, frac, p)
    cold = base.sample(2000, temperature=0.0)  # T = 0: each feature at its component's mean
    assert torch.isfinite(cold).all()


def test_mog_components_differ_from_the_start():
    base = MADEMoG(3, num_components=5, hidden_features=8)
    _, mu, _ = base._conditionals(torch.randn(2, 3))
    assert mu.std(1).min() > 0


def test_batch_norm_statistics_from_the_whole_training_set():
    """MAF's test-time batch norm: each BatchNorm's running statistics become those of its
    inputs over the whole data, the layers before it already set."""
    torch.manual_seed(0)
    flow = Compose(MaskedAutoregressive(3, Affine, 8), BatchNorm(3),
                   MaskedAutoregressive(3, Affine, 8), BatchNorm(3))  # fmt: skip
    for made_layer in flow.layers[::2]:  # the batch norms keep γ = 1, β = 0
        perturb_parameters(made_layer, 0.3, seed=0)
    y = torch.randn(500, 3) * 3 + 1
    assert set_batch_norm_statistics(flow, y, batch_size=128) == 2
    first, second = flow.layers[1], flow.layers[3]
    h = flow.layers[0](y)[0]
    torch.testing.assert_close(first.running_mean, h.mean(0))
    torch.testing.assert_close(first.running_var, h.var(0, unbiased=False))
    flow.eval()
    h2 = flow.layers[2](first(h)[0])[0]
    torch.testing.assert_close(second.running_mean, h2.mean(0))
    z = flow(y)[0]  # the output of the last batch norm is standardised over the data
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    assert math.isclose(z.var(0, unbiased=False).mean().item(), 1.0, rel_tol=1e-3)


def test_inverse_forms_masked_weights_once_and_leaves_none_behind():
    """The D-pass inverse reuses W ⊙ M formed on entry; afterwards every MaskedLinear forms it
    afresh, so a training step after sampling sees the weights as they are then."""
    torch.manual_seed(0)
    layer = MaskedAutoregressive(5, Affine, hidden_features=8)
    perturb_parameters(layer, 0.3, seed=1)
    x = torch.randn(4, 5)
    z, _ = layer(x)
    back, _ = layer.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        layer.made.output.weight.add_(0.5)
    masked = [m for m in layer.modules() if isinstance(m, MaskedLinear)]
    assert all(m._masked is None for m in masked)
    expected = torch.nn.functional.linear(
        layer.made.hidden(x), layer.made.output.weight * layer.made.output.mask,
        layer.made.output.bias,
    )  # fmt: skip
    torch.testing.assert_close(layer.made(x), expected)
