"""The invariance check every bijector of every paper passes (``check_bijector``).

It runs in float64 on a *perturbed copy* of the layer (every parameter gets Gaussian noise
first), so zero-initialised layers — which start as the identity — cannot pass trivially.
Checked, in order:

1. round trip: inverse(forward(x)) = x;
2. forward ldj + inverse ldj = 0 (per example);
3. forward ldj = log |det ∂z/∂x| of the autograd Jacobian (per example, via ``slogdet``);
4. the same for the inverse direction;
5. gradients of a scalar of (z, ldj) reach every trainable parameter, finite and not all zero,
   and agree with central finite differences along a random direction in parameter space, in
   both directions (an ldj computed at a detached point, such as an iterative inverse's
   solution, has the right value but misses the solution's dependence on the parameters);
6. ``state_dict`` round trip: a fresh copy loaded with the perturbed state gives the same output.

Layers whose ldj is a stochastic estimate are checked in their exact mode
(:func:`common.flows.bijector.exact_ldj`); :func:`check_estimator_unbiased` checks the
estimator itself against the exact ldj.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from common.flows.bijector import Bijector, Inverse, exact_ldj
from common.flows.logdet import jacobian_logabsdet

__all__ = ["BijectorCheck", "check_bijector", "check_estimator_unbiased", "perturb_parameters"]


@dataclass
class BijectorCheck:
    """What ``check_bijector`` measured (all maxima over the batch)."""

    round_trip_error: float
    ldj_sum_error: float
    forward_jacobian_error: float
    inverse_jacobian_error: float
    num_parameters: int
    exact_mode: bool  # some layer estimates its ldj; the check ran it exactly


def perturb_parameters(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Add N(0, scale²) noise to every floating-point parameter, from a private generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
            p.add_(scale * noise)


def _max_abs(t: Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def check_bijector(
    layer: Bijector,
    x: Tensor,
    context: Tensor | None = None,
    perturb_scale: float = 0.1,
    atol: float = 1e-6,
    seed: int = 0,
    check_gradients: bool = True,
) -> BijectorCheck:
    """Assert the bijector contract on ``x`` of shape ``(B, ...)`` (a small batch: the Jacobian
    is built densely). Raises ``AssertionError`` naming the failed property; returns the errors.

    The layer is not modified: the checks run on a float64 deep copy in eval mode, in exact
    mode for layers that estimate their ldj.
    """
    pristine = copy.deepcopy(layer).double().eval()
    f = copy.deepcopy(pristine)
    perturb_parameters(f, perturb_scale, seed)
    estimating = any(getattr(m, "ldj_is_estimate", False) for m in f.modules())
    with exact_ldj(f), exact_ldj(pristine):
        result = _check(f, pristine, x, context, atol, seed, check_gradients, _name(layer))
    return BijectorCheck(*result, exact_mode=estimating)


def _name(layer: Bijector) -> str:
    if isinstance(layer, Inverse):
        return f"Inverse({_name(layer.bijector)})"
    return type(layer).__name__


def _check(f, pristine, x, context, atol, seed, check_gradients, name) -> tuple:
    x = x.detach().double()
    context = None if context is None else context.detach().double()

    z, ldj = f(x, context)
    assert isinstance(ldj, Tensor) and ldj.shape == (x.shape[0],), (
        f"{name}: ldj must have shape (B,) = ({x.shape[0]},), got {getattr(ldj, 'shape', ldj)}"
    )
    assert torch.isfinite(z).all() and torch.isfinite(ldj).all(), f"{name}: non-finite output"
    x_rec, inv_ldj = f.inverse(z, context)
    round_trip = _max_abs(x_rec - x)
    assert round_trip < atol, f"{name}: round trip error {round_trip:.3g} ≥ {atol}"
    ldj_sum = _max_abs(ldj + inv_ldj)
    assert ldj_sum < atol, f"{name}: forward ldj + inverse ldj = {ldj_sum:.3g}, not 0"

    def ctx(i: int) -> Tensor | None:
        return None if context is None else context[i : i + 1]

    fwd_ref = torch.stack(
        [jacobian_logabsdet(lambda v, i=i: f(v, ctx(i))[0], x[i : i + 1])[0] for i in range(len(x))]
    )
    fwd_err = _max_abs(fwd_ref - ldj)
    assert fwd_err < atol, (
        f"{name}: forward ldj differs from autograd log|det J| by {fwd_err:.3g} "
        f"(ldj {ldj.tolist()[:4]}, autograd {fwd_ref.tolist()[:4]})"
    )
    z = z.detach()
    inv_ref = torch.stack(
        [
            jacobian_logabsdet(lambda v, i=i: f.inverse(v, ctx(i))[0], z[i : i + 1])[0]
            for i in range(len(z))
        ]
    )
    inv_err = _max_abs(inv_ref - inv_ldj)
    assert inv_err < atol, f"{name}: inverse ldj differs from autograd log|det J| by {inv_err:.3g}"

    params = [(n, p) for n, p in f.named_parameters() if p.requires_grad]
    if check_gradients and params:
        f.zero_grad()
        g = torch.Generator().manual_seed(seed + 1)
        z_out, ldj_out = f(x, context)
        weights = torch.randn(z_out.shape, generator=g, dtype=z_out.dtype)
        ((z_out * weights).sum() + ldj_out.sum()).backward()
        for n, p in params:
            assert p.grad is not None, f"{name}: no gradient reaches parameter {n!r}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {n!r}"
            assert p.grad.abs().sum() > 0, f"{name}: gradient of {n!r} is identically zero"
        f.zero_grad()
        w_inv = torch.randn(x.shape, generator=g, dtype=x.dtype)

        def through(direction, inputs, w):
            out, out_ldj = direction(inputs, context)
            return (out * w).sum() + out_ldj.sum()

        directions = {
            "forward": lambda: through(f, x, weights),
            "inverse": lambda: through(f.inverse, z, w_inv),
        }
        for direction, scalar in directions.items():
            err = _directional_gradient_error(f, [p for _, p in params], scalar, g)
            assert err < 1e-5, (
                f"{name}: {direction} gradient w.r.t. the parameters differs from finite "
                f"differences by {err:.3g} (relative)"
            )

    # The reloaded copy first sees a *different* batch: state kept outside parameters and
    # buffers (e.g. a data-dependent init behind a plain Python flag) then shows up.
    reloaded = copy.deepcopy(pristine)
    reloaded.load_state_dict(f.state_dict())
    other = x.flip(0)[: max(1, len(x) - 1)]
    other_ctx = None if context is None else context.flip(0)[: len(other)]
    with torch.no_grad():
        z_b, ldj_b = reloaded(other, other_ctx)
        z_a, ldj_a = f(other, other_ctx)
    assert torch.equal(z_a, z_b) and torch.equal(ldj_a, ldj_b), (
        f"{name}: a copy loaded from state_dict behaves differently: some state is not in "
        "parameters or buffers"
    )
    return round_trip, ldj_sum, fwd_err, inv_err, len(params)


def _directional_gradient_error(f, params, scalar, generator, eps: float = 1e-7) -> float:
    """|∇L·v − (L(p + εv) − L(p − εv)) / 2ε| / max(1, |L|) for a random direction v. The
    small ε keeps the truncation error (∝ ε² ∂³L) below 1e-5 on sharp splines; float64
    rounding adds about 1e-16·|L|/ε."""
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    loss = scalar()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    analytic = sum(
        float((gr * vi).sum()) for gr, vi in zip(grads, v, strict=True) if gr is not None
    )

    @torch.no_grad()
    def shift(scale: float) -> None:
        for p, vi in zip(params, v, strict=True):
            p.add_(scale * eps * vi)

    with torch.no_grad():
        shift(1)
        plus = float(scalar())
        shift(-2)
        minus = float(scalar())
        shift(1)
    return abs((plus - minus) / (2 * eps) - analytic) / max(1.0, abs(loss.item()))


def check_estimator_unbiased(
    layer: Bijector, x: Tensor, num_draws: int = 2000, z_max: float = 4.0, seed: int = 0
) -> float:
    """Assert that the layer's ldj estimate is unbiased on ``x``: over ``num_draws`` draws, the
    mean estimate of each example differs from the exact ldj by less than ``z_max`` standard
    errors (and the estimate does vary: a constant "estimate" is an exact mode left on).
    Runs in float64 on a perturbed copy in eval mode; returns the largest |z|."""
    f = copy.deepcopy(layer).double().eval()
    perturb_parameters(f, 0.1, seed)
    x = x.detach().double()
    name = _name(layer)
    with torch.no_grad():
        with exact_ldj(f):
            exact = f(x)[1]
        torch.manual_seed(seed)
        draws = torch.stack([f(x)[1] for _ in range(num_draws)])  # (num_draws, B)
    std = draws.std(0)
    assert (std > 0).all(), f"{name}: the ldj estimate does not vary: is it exact already?"
    z = ((draws.mean(0) - exact) / (std / num_draws**0.5)).abs().max().item()
    assert z < z_max, f"{name}: the ldj estimate is biased ({z:.1f} standard errors off)"
    return z
