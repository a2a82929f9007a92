"""Flows on the circle S¹ = [0, 2π), acting elementwise on angles ``(B, D)``
(Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020, arXiv:2002.02428, Sec. 2).

A circle flow is a monotone map f of [0, 2π) onto itself with f(0) = 0 (so f(2π) = 2π) and a
derivative that is periodic; densities are w.r.t. Lebesgue measure on the angle, and
ldj = log f'(θ).

**Möbius transform** (Sec. 2.1). For ω in the open unit disk and z = e^{iθ},

    h_ω(z) = (1 − |ω|²) / |z − ω|² · (z − ω) − ω  =  (z − ω) / (1 − ω̄z),

a disk automorphism that maps the circle onto itself; |h_ω'(z)| = (1 − |ω|²) / |z − ω|², and
its inverse is h_{−ω}. f_ω(θ) = arg h_ω(e^{iθ}) − arg h_ω(1) rotates it so that 0 ↦ 0.
ω = 0.99 · w / (1 + ‖w‖) keeps ω inside the disk for any parameter w ∈ R².

**Convex combination** (Sec. 2.1): a composition of Möbius maps is again one, so the paper
makes them expressive by f(θ) = Σ_k π_k f_{ω_k}(θ), π on the simplex. It is monotone with
f' = Σ_k π_k f_{ω_k}'; its inverse has no closed form and is found by bisection.

**Non-compact projection** (NCP, Sec. 2.3): θ ↦ tan(θ/2) to the real line, an increasing
affine map there, and back with 2·arctan; mixed the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.bijector import Bijector
from common.manifolds import TWO_PI, check_angles, wrap_angle

__all__ = ["ConvexMixture", "MobiusMixture", "NCPMixture", "mobius", "ncp", "omega_from_params"]


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


class ConvexMixture(Bijector):
    """f(θ) = Σ_k π_k f_k(θ) on each of ``num_features`` angles, for K circle maps f_k that
    fix 0 and are increasing on [0, 2π] (Rezende et al. 2020, Eq. (7)); π = softmax(logits).
    f is again such a map, with ldj = Σ_d log Σ_k π_k f_k'(θ_d).

    ``forward`` is the closed form; ``inverse`` solves f(θ) = y by bisection to
    ``inverse_tol`` (radians), using that f is increasing on [0, 2π], then takes one Newton
    step so the result is differentiable (implicit gradients). For reverse-KL training, where
    samples must be differentiable, use ``Inverse(...)`` so the closed form is the sampling
    direction. Subclasses define the components. Shapes: ``(B, D) → (B, D)``, in [0, 2π).
    """

    def __init__(self, num_features: int, num_components: int, inverse_tol: float = 1e-10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_features, num_components))
        self.inverse_tol = inverse_tol

    def _components(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """f_k(θ) and log f_k'(θ) for ``theta`` ``(B, D)``: two ``(B, D, K)`` tensors."""
        raise NotImplementedError

    def _map(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        angles, log_derivs = self._components(theta)
        log_pi = torch.log_softmax(self.logits, dim=-1)  # (D, K)
        y = (log_pi.exp() * angles).sum(-1)
        log_deriv = torch.logsumexp(log_pi + log_derivs, dim=-1)  # (B, D)
        return y, log_deriv

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(x)
        y, log_deriv = self._map(x)
        return y, log_deriv.sum(-1)

    @torch.no_grad()
    def _bisect(self, y: Tensor) -> Tensor:
        lo, hi = torch.zeros_like(y), torch.full_like(y, TWO_PI)
        while (hi - lo).max() > self.inverse_tol:
            mid = (lo + hi) / 2
            below = self._map(mid)[0] < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            if (hi - lo).max() < torch.finfo(y.dtype).eps * TWO_PI:
                break  # the dtype's resolution, not the tolerance, is the limit
        return (lo + hi) / 2

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(z)
        x0 = self._bisect(z)
        # One Newton step from the bisection root: the same point, but differentiable, with
        # dx/dz = 1/f'(x) and parameter gradients by the implicit function theorem.
        y0, log_deriv = self._map(x0)
        x = x0 - (y0 - z) * (-log_deriv).exp()
        return x, -log_deriv.sum(-1)


class MobiusMixture(ConvexMixture):
    """Convex combination of K rotated Möbius maps f_{ω_k} per angle (Sec. 2.1)."""

    def __init__(self, num_features: int, num_components: int, inverse_tol: float = 1e-10):
        super().__init__(num_features, num_components, inverse_tol)
        self.w = nn.Parameter(0.1 * torch.randn(num_features, num_components, 2))

    def _components(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return mobius(theta.unsqueeze(-1), omega_from_params(self.w))  # (B, D, K) each


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


class NCPMixture(ConvexMixture):
    """Convex combination of K non-compact projections per angle (Sec. 2.3)."""

    def __init__(self, num_features: int, num_components: int, inverse_tol: float = 1e-10):
        super().__init__(num_features, num_components, inverse_tol)
        self.log_alpha = nn.Parameter(0.1 * torch.randn(num_features, num_components))
        self.beta = nn.Parameter(0.1 * torch.randn(num_features, num_components))

    def _components(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return ncp(theta.unsqueeze(-1), self.log_alpha, self.beta)  # (B, D, K) each
