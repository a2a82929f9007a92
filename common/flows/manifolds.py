"""Circles, tori and spheres: coordinates, domains and uniform base distributions
(Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020, arXiv:2002.02428).

Every density here states its measure:

- on the torus Tᴰ = [0, 2π)ᴰ (the circle is D = 1): Lebesgue measure on the angles, so the
  uniform density is (2π)⁻ᴰ, log p = −D·log 2π;
- on the sphere Sᴰ = {x ∈ Rᴰ⁺¹ : ‖x‖ = 1}: the surface measure, so the uniform density is
  1/|Sᴰ| with |Sᴰ| = 2π^((D+1)/2) / Γ((D+1)/2) (4π for S²).

Angles are tensors ``(B, D)`` in [0, 2π); sphere points are ``(B, D+1)`` unit vectors. Inputs
outside the declared domain raise :class:`~common.flows.bijector.InputOutsideDomainError`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from common.flows.bijector import InputOutsideDomainError
from common.flows.distributions import BaseDistribution

__all__ = [
    "TWO_PI",
    "UniformSphere",
    "UniformTorus",
    "check_angles",
    "check_sphere",
    "sphere_grid",
    "sphere_log_area",
    "torus_grid",
    "wrap_angle",
]

TWO_PI = 2 * math.pi


def wrap_angle(theta: Tensor) -> Tensor:
    """θ mod 2π, in [0, 2π) (``torch.remainder`` keeps the sign of the divisor)."""
    return torch.remainder(theta, TWO_PI)


def check_angles(theta: Tensor, name: str = "angles", atol: float = 1e-6) -> None:
    """Raise if any angle lies outside [0, 2π] (a tolerance absorbs float rounding). Skipped
    inside ``torch.compile`` (a data-dependent raise would split the graph)."""
    if torch.compiler.is_compiling():
        return
    if ((theta < -atol) | (theta > TWO_PI + atol)).any() or not torch.isfinite(theta).all():
        raise InputOutsideDomainError(
            f"{name} must lie in [0, 2π); got range [{theta.min().item():.4g}, "
            f"{theta.max().item():.4g}]. Wrap them with common.flows.manifolds.wrap_angle."
        )


def check_sphere(x: Tensor, name: str = "points", atol: float = 1e-4) -> None:
    """Raise if any point is not on the unit sphere (‖x‖ = 1 within ``atol``). Skipped inside
    ``torch.compile``."""
    if torch.compiler.is_compiling():
        return
    err = (x.norm(dim=-1) - 1).abs()
    if not (err <= atol).all():
        raise InputOutsideDomainError(
            f"{name} must lie on the unit sphere; the largest |‖x‖ − 1| is {err.max().item():.3g}"
        )


def sphere_log_area(dim: int) -> float:
    """log |Sᴰ| = log 2 + ((D+1)/2)·log π − log Γ((D+1)/2); |S¹| = 2π, |S²| = 4π."""
    return math.log(2.0) + (dim + 1) / 2 * math.log(math.pi) - math.lgamma((dim + 1) / 2)


def torus_grid(n: int) -> tuple[Tensor, float, dict[str, Tensor]]:
    """The n × n midpoint grid of T² = [0, 2π)²: points ``(n², 2)`` (θ₁ varying slowest), the
    cell area (2π/n)² and the nodes per axis. For a smooth periodic density the midpoint rule
    converges faster than any power of 1/n."""
    nodes = (torch.arange(n, dtype=torch.float64) + 0.5) * (TWO_PI / n)
    t1, t2 = torch.meshgrid(nodes, nodes, indexing="ij")
    points = torch.stack([t1.ravel(), t2.ravel()], dim=-1).to(torch.get_default_dtype())
    return points, (TWO_PI / n) ** 2, {"theta1": nodes, "theta2": nodes}


def sphere_grid(n: int) -> tuple[Tensor, float, dict[str, Tensor]]:
    """An n × n midpoint grid of S² in the area-preserving cylindrical chart (h, φ) ∈
    [−1, 1] × [0, 2π) (dA = dh dφ): unit vectors ``(n², 3)`` (h varying slowest), the cell
    area (2/n)(2π/n) and the nodes per axis. Averaged over φ, a smooth density on S² is a
    smooth function of h, so the midpoint rule in h is second order."""
    h = -1 + (torch.arange(n, dtype=torch.float64) + 0.5) * (2 / n)
    phi = (torch.arange(n, dtype=torch.float64) + 0.5) * (TWO_PI / n)
    hh, pp = torch.meshgrid(h, phi, indexing="ij")
    rho = (1 - hh**2).sqrt()
    points = torch.stack([rho * pp.cos(), rho * pp.sin(), hh], dim=-1).reshape(-1, 3)
    return points.to(torch.get_default_dtype()), (2 / n) * (TWO_PI / n), {"h": h, "phi": phi}


class UniformTorus(BaseDistribution):
    """Uniform on Tᴰ = [0, 2π)ᴰ w.r.t. Lebesgue measure: log p = −D·log 2π for every θ.
    ``temperature`` has no meaning on a compact space and must be 1."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.dim = dim

    def log_prob(self, theta: Tensor) -> Tensor:
        self._check(theta)
        check_angles(theta)
        return theta.new_full((theta.shape[0],), -self.dim * math.log(TWO_PI))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        if temperature != 1.0:
            raise ValueError("a uniform base on the torus has no temperature")
        a = self._anchor
        return TWO_PI * torch.rand(n, self.dim, device=a.device, dtype=a.dtype)


class UniformSphere(BaseDistribution):
    """Uniform on Sᴰ ⊂ Rᴰ⁺¹ w.r.t. the surface measure: log p = −log |Sᴰ|. Sampled as a
    normalised standard Gaussian vector (rotation invariance)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim + 1)
        self.dim = dim

    def log_prob(self, x: Tensor) -> Tensor:
        self._check(x)
        check_sphere(x)
        return x.new_full((x.shape[0],), -sphere_log_area(self.dim))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        if temperature != 1.0:
            raise ValueError("a uniform base on the sphere has no temperature")
        a = self._anchor
        g = torch.randn(n, self.dim + 1, device=a.device, dtype=a.dtype)
        return g / g.norm(dim=-1, keepdim=True)
