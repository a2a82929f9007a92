"""Flows on the circle S¹ = [0, 2π) (Rezende et al., "Normalizing Flows on Tori and Spheres",
ICML 2020, arXiv:2002.02428, Sec. 2).

A circle flow is a monotone map f of [0, 2π] onto itself with f(0) = 0 (so f(2π) = 2π) and a
periodic derivative; densities are w.r.t. Lebesgue measure on the angle, ldj = log f'(θ).

Each family is a :class:`CircleMap`: a stateless map f(θ; p) of angles ``(...)`` given an
unconstrained parameter vector ``p`` ``(..., P)``, so the same code serves a free-standing
layer (:class:`CircleFlow`, p a parameter) and a conditional one (p from a network, in the
torus and sphere flows).

**Möbius transform** (Sec. 2.1). For ω in the open unit disk and z = e^{iθ},

    h_ω(z) = (1 − |ω|²) / |z − ω|² · (z − ω) − ω  =  (z − ω) / (1 − ω̄z),

a disk automorphism that maps the circle onto itself; |h_ω'(z)| = (1 − |ω|²) / |z − ω|², and
its inverse is h_{−ω}. f_ω(θ) = arg h_ω(e^{iθ}) − arg h_ω(1) rotates it so that 0 ↦ 0.
ω = 0.99 · w / (1 + ‖w‖) keeps ω inside the disk for any w ∈ R².

**Convex combination** (Sec. 2.1, Eq. 7): a composition of Möbius maps is again one, so the
paper makes them expressive by f(θ) = Σ_k π_k f_{ω_k}(θ), π on the simplex. It is increasing
with f' = Σ_k π_k f_{ω_k}'; its inverse has no closed form and is found by bisection.

**Circular rational-quadratic spline** (Sec. 2.2): K bins on [0, 2π] → [0, 2π] with equal end
derivatives d_K = d_0, so the map and its derivative are periodic (see common.flows.splines).

**Non-compact projection** (NCP, Sec. 2.3): θ ↦ tan(θ/2) to the real line, an increasing
affine map there, and back with 2·arctan; mixed like the Möbius maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector
from common.flows.manifolds import TWO_PI, check_angles, wrap_angle
from common.flows.splines import rational_quadratic_spline

__all__ = [
    "CircleFlow",
    "CircleMap",
    "CircularSplineMap",
    "ConvexMixtureMap",
    "MobiusMixtureMap",
    "NCPMixtureMap",
    "circle_map",
    "mobius",
    "ncp",
    "omega_from_params",
]


def omega_from_params(w: Tensor, radius: float = 0.99) -> Tensor:
    """Map unconstrained ``(..., 2)`` parameters into the open disk of the given radius."""
    return radius * w / (1 + w.norm(dim=-1, keepdim=True))


def _h(theta: Tensor, omega: Tensor) -> tuple[Tensor, Tensor]:
    """arg h_ω(e^{iθ}) and log |h_ω'(e^{iθ})|; θ ``(...)``, ω ``(..., 2)`` broadcastable."""
    z = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    d = z - omega
    dist2 = (d**2).sum(-1)  # |z − ω|²
    one_minus = 1 - (omega**2).sum(-1)  # 1 − |ω|²
    h = (one_minus / dist2).unsqueeze(-1) * d - omega
    return torch.atan2(h[..., 1], h[..., 0]), torch.log(one_minus) - torch.log(dist2)


def mobius(theta: Tensor, omega: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The rotated Möbius map f_ω (or its inverse) on angles in [0, 2π): returns the new angle
    and log |df/dθ| at the input. ``theta`` ``(...)``, ``omega`` ``(..., 2)``."""
    zero = torch.zeros_like(theta)
    offset, _ = _h(zero, omega)  # arg h_ω(1)
    if not inverse:
        angle, log_deriv = _h(theta, omega)
        return wrap_angle(angle - offset), log_deriv
    angle, log_deriv = _h(theta + offset, -omega)  # h_ω⁻¹ = h_{−ω}
    return wrap_angle(angle), log_deriv


def ncp(theta: Tensor, log_alpha: Tensor, beta: Tensor, inverse: bool = False):
    """Non-compact projection (Sec. 2.3): project the circle to R, apply x ↦ αx + β, project
    back. With φ = θ − π, x = tan(φ/2), the map is φ' = 2·arctan(α·tan(φ/2) + β), written with
    atan2 so it is exact at the poles; it fixes θ = 0 and

        f'(θ) = α / (cos²(φ/2) + (α sin(φ/2) + β cos(φ/2))²),   f'(0) = f'(2π) = 1/α.

    Returns the new angle and log |df/dθ| at the input (of the inverse, if ``inverse``)."""
    alpha = log_alpha.exp()
    half = (theta - torch.pi) / 2
    c, s = torch.cos(half), torch.sin(half)
    if not inverse:
        out = torch.pi + 2 * torch.atan2(alpha * s + beta * c, c)
        return out, log_alpha - torch.log(c**2 + (alpha * s + beta * c) ** 2)
    out = torch.pi + 2 * torch.atan2(s - beta * c, alpha * c)
    half_x = (out - torch.pi) / 2
    cx, sx = torch.cos(half_x), torch.sin(half_x)
    return out, -(log_alpha - torch.log(cx**2 + (alpha * sx + beta * cx) ** 2))


class CircleMap:
    """A family of circle diffeomorphisms f(θ; p) with f(0) = 0, for an unconstrained parameter
    vector p of ``num_params`` entries. Stateless: the parameters are passed in.

    ``__call__(θ, p)`` and ``inverse(y, p)`` take angles ``(...)`` in [0, 2π] and parameters
    ``(..., P)``, and return the image and log |d(out)/d(in)| at the input, both ``(...)``.
    """

    num_params: int

    def __call__(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def initial_params(self, generator: torch.Generator | None = None) -> Tensor:
        """A ``(P,)`` starting point close to the identity (randomised where the family's
        components would otherwise stay interchangeable forever)."""
        raise NotImplementedError


class ConvexMixtureMap(CircleMap):
    """f(θ) = Σ_k π_k f_k(θ) for K increasing circle maps f_k fixing 0 (Eq. 7); π =
    softmax(logits), the last K entries of p. f' = Σ_k π_k f_k', computed as a logsumexp.

    ``inverse`` solves f(θ) = y by Newton's method safeguarded by bisection (f is increasing
    on [0, 2π]) to ``inverse_tol`` radians or the dtype's resolution, then takes one more
    Newton step from the root so the result is differentiable, with dθ/dy = 1/f'(θ) and
    parameter gradients by the implicit function theorem."""

    MAX_ITERATIONS = 200

    def __init__(self, num_components: int, inverse_tol: float = 1e-10) -> None:
        self.K = num_components
        self.inverse_tol = inverse_tol

    def _components(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """f_k(θ) and log f_k'(θ): two ``(..., K)`` tensors."""
        raise NotImplementedError

    def __call__(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        angles, log_derivs = self._components(theta.unsqueeze(-1), params)
        log_pi = torch.log_softmax(params[..., -self.K :], dim=-1)
        y = (log_pi.exp() * angles).sum(-1)
        return y, torch.logsumexp(log_pi + log_derivs, dim=-1)

    @torch.no_grad()
    def _solve(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """θ with f(θ) = y: Newton's method kept inside a bracket [lo, hi] ∋ θ* that every
        evaluation narrows, bisecting instead whenever a Newton step would leave the bracket or
        is not half as long as the step before last (Newton may be cycling): "rtsafe", Press
        et al., Numerical Recipes §9.4. f is increasing on [0, 2π], so the bracket starts
        there and the iteration converges, quadratically near the root: ~10 evaluations of f
        where bisection takes 25–40. A point is solved when its step or its bracket is below
        ``inverse_tol`` or the dtype's resolution, or its residual |f(θ) − y| is at that
        resolution (float32 cannot place θ closer). Returns θ and its bracket (lo, hi)."""
        resolution = 4 * torch.finfo(y.dtype).eps * TWO_PI
        tol = max(self.inverse_tol, resolution)
        lo, hi = torch.zeros_like(y), torch.full_like(y, TWO_PI)
        theta = y.clone()  # every family starts near the identity
        step = step_before = hi - lo
        for _ in range(self.MAX_ITERATIONS):
            f, log_deriv = self(theta, params)
            below, at_root = f < y, (f - y).abs() <= resolution
            lo, hi = torch.where(below, theta, lo), torch.where(below, hi, theta)
            newton = (f - y) * torch.exp(-log_deriv)  # this θ − Newton's next θ
            use_newton = (
                (theta - newton >= lo)
                & (theta - newton <= hi)
                & (2 * newton.abs() <= step_before.abs())  # else Newton may be cycling
            )
            step = torch.where(use_newton, newton, theta - (lo + hi) / 2)
            step, step_before = torch.where(at_root, 0.0, step), step
            theta = theta - step
            if (at_root | (step.abs() <= tol) | (hi - lo <= tol)).all():
                return theta, lo, hi
        raise RuntimeError(  # not reached: the bracket halves at least every other step
            f"{type(self).__name__}.inverse did not converge in {self.MAX_ITERATIONS} steps"
        )

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        theta0, lo, hi = self._solve(y, params)
        y0, log_deriv = self(theta0, params)
        # One Newton step, for the gradients (implicit function theorem), kept in the bracket:
        # where f' is tiny a residual at float32's resolution would step far outside [0, 2π].
        theta = torch.clamp(theta0 - (y0 - y) * (-log_deriv).exp(), lo, hi)
        return theta, -self(theta, params)[1]  # the derivative where θ ends, not at θ0


class MobiusMixtureMap(ConvexMixtureMap):
    """Convex combination of K rotated Möbius maps; p = [w (K × 2, flattened), logits (K)]."""

    def __init__(self, num_components: int, inverse_tol: float = 1e-10) -> None:
        super().__init__(num_components, inverse_tol)
        self.num_params = 3 * num_components

    def _components(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        w = params[..., : 2 * self.K].unflatten(-1, (self.K, 2))
        return mobius(theta, omega_from_params(w))

    def initial_params(self, generator: torch.Generator | None = None) -> Tensor:
        # Distinct small centres: equal ones would get equal gradients and never separate.
        w = 0.3 * torch.randn(2 * self.K, generator=generator)
        return torch.cat([w, torch.zeros(self.K)])


class NCPMixtureMap(ConvexMixtureMap):
    """Convex combination of K non-compact projections; p = [log α (K), β (K), logits (K)]."""

    def __init__(self, num_components: int, inverse_tol: float = 1e-10) -> None:
        super().__init__(num_components, inverse_tol)
        self.num_params = 3 * num_components

    def _components(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        K = self.K
        return ncp(theta, params[..., :K], params[..., K : 2 * K])

    def initial_params(self, generator: torch.Generator | None = None) -> Tensor:
        ab = 0.3 * torch.randn(2 * self.K, generator=generator)
        return torch.cat([ab, torch.zeros(self.K)])


class CircularSplineMap(CircleMap):
    """Circular rational-quadratic spline with K bins (Sec. 2.2); p = [widths (K), heights (K),
    derivatives (K)], the end derivative d_K tied to d_0. Closed form both ways."""

    def __init__(self, num_bins: int) -> None:
        self.K = num_bins
        self.num_params = 3 * num_bins

    def _apply(self, theta: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        K = self.K
        params = params.expand(*theta.shape, self.num_params)
        derivs = params[..., 2 * K :]
        derivs = torch.cat([derivs, derivs[..., :1]], dim=-1)  # d_K = d_0: periodic f'
        return rational_quadratic_spline(
            theta, params[..., :K], params[..., K : 2 * K], derivs, (0.0, TWO_PI), inverse
        )

    def __call__(self, theta: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(theta, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(y, params, inverse=True)

    def initial_params(self, generator: torch.Generator | None = None) -> Tensor:
        # equal bins and softplus(0.5413) ≈ 1 knot derivatives: close to the identity
        return torch.cat([torch.zeros(2 * self.K), torch.full((self.K,), 0.5413)])


def circle_map(family: str, size: int) -> CircleMap:
    """``"mobius"`` (K centres), ``"spline"`` (K bins) or ``"ncp"`` (K projections)."""
    families = {"mobius": MobiusMixtureMap, "spline": CircularSplineMap, "ncp": NCPMixtureMap}
    if family not in families:
        raise ValueError(f"unknown circle-flow family {family!r}; allowed: {sorted(families)}")
    return families[family](size)


class CircleFlow(Bijector):
    """A circle map applied to each of ``num_features`` angles with its own free parameters.
    ``forward`` is the map f; ldj = Σ_d log f'(θ_d). For reverse-KL training, where samples
    must be closed-form and differentiable, use it as ``Inverse(CircleFlow(...))`` so that
    sampling applies f. Shapes: ``(B, D) → (B, D)``, angles in [0, 2π)."""

    def __init__(
        self, num_features: int, circle_map: CircleMap, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.map = circle_map
        g = generator  # None: the global RNG (seeded by the run)
        init = torch.stack([circle_map.initial_params(g) for _ in range(num_features)])
        self.params = nn.Parameter(init)  # (D, P)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(x)
        y, log_deriv = self.map(x, self.params)
        return y, log_deriv.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(z)
        x, log_deriv = self.map.inverse(z, self.params)
        return x, log_deriv.sum(-1)
