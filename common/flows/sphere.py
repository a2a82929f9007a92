"""Flows on the sphere S² ⊂ R³ (Rezende et al., "Normalizing Flows on Tori and Spheres", ICML
2020, arXiv:2002.02428, Sec. 4). Points are unit vectors ``(B, 3)``; densities are w.r.t. the
surface measure, and ldj is the log-determinant of the differential between tangent planes in
orthonormal frames.

**Cylindrical coordinates.** x = (√(1−h²) cos φ, √(1−h²) sin φ, h) with height h ∈ [−1, 1] and
azimuth φ ∈ [0, 2π). The surface element is dA = dh dφ (Archimedes), so the chart preserves
area: a density on S² is the same number as a density in (h, φ), and a map's ldj w.r.t. the
surface measure is log |det ∂(h', φ')/∂(h, φ)|. The tests check every sphere flow this way
(:class:`InCylindricalCoordinates`).

**Recursive flow** (Sec. 4.1): Sᴰ ≅ [−1, 1] × Sᴰ⁻¹ with x = (h, √(1−h²)·u). An interval spline
moves the height, then a flow on Sᴰ⁻¹ (on S²: a circle flow on the azimuth) conditioned on the
new height moves the rest. On Sᴰ the
surface element is (1−h²)^{(D−2)/2} dh dA_{D−1}, so the ldj gains
((D−2)/2)·[log(1−h'²) − log(1−h²)]: zero on S², which is why (h, φ) are used.

**Exponential-map flows** (Sec. 4.2): f(x) = exp_x(v(x)) with v = P_x ∇ψ(x) the Riemannian
gradient of a potential ψ on R³ (P_x = I − xxᵀ) and exp_x(v) = cos‖v‖·x + sin‖v‖·v/‖v‖.
Taking the variation of the geodesic t ↦ exp_x(t·v(x)) (a Jacobi field on a sphere of
curvature 1), in the frame (u, n) = (v/‖v‖, x × u) at x and its parallel transport at f(x):

    df = diag(1, cos r) + diag(1, sin r / r) · H,     r = ‖v‖,

with H the Riemannian Hessian of ψ in that frame, H = Eᵀ ∇²ψ E − (xᵀ∇ψ) I, E = [u n].
f is a diffeomorphism when ψ is c-convex (Sei 2013); two families:

- EMSRE, a sum of radial exponentials ψ(x) = Σ_k (α_k/β_k) exp(β_k(μ_kᵀx − 1)), β_k > 0,
  α_k ≥ 0, Σ_k α_k ≤ 1 (the paper's condition; here Σ α_k < 1 strictly, via a slack logit);
- EMP, the paper's ψ(x) = μᵀx + ½ xᵀAx with ‖μ‖₁ + ‖A‖₁ < 1 (entrywise ℓ1;
  :class:`LinearQuadraticPotential` says why the ½ and the entrywise norm), and an even
  variant ψ(x) = ½ xᵀAx (:class:`QuadraticPotential`). For the even one, with r cot r ≥
  (s/2)·cot(s/2) for the eigenvalue spread s of A (|v| ≤ s/2 and H ⪰ −s·I), det df > 0
  everywhere when s < 2·arctan(1/2) ≈ 0.927, and a local diffeomorphism of S² homotopic to
  the identity is a diffeomorphism. ‖A‖_F < 0.45 is enforced, so s < 0.9.

Neither has a closed-form inverse: ``inverse`` runs Newton's method on the sphere to
``inverse_tol`` (in float64 whatever the input dtype), then one differentiable Newton step
(implicit gradients).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import Bijector
from common.flows.circle import CircleMap, MobiusMixtureMap
from common.flows.manifolds import check_angles, check_sphere, wrap_angle
from common.flows.nets import MLP
from common.flows.splines import rational_quadratic_spline

__all__ = [
    "ExpMapFlow",
    "InCylindricalCoordinates",
    "LinearQuadraticPotential",
    "QuadraticPotential",
    "RadialPotential",
    "RecursiveSphereFlow",
    "SphereInverseError",
    "from_cylindrical",
    "to_cylindrical",
]


class SphereInverseError(RuntimeError):
    """Newton's method did not invert an exponential-map flow to the stated tolerance."""


def to_cylindrical(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, 3)`` unit vectors → height h = x₃ ``(B,)`` and azimuth φ ∈ [0, 2π) ``(B,)``."""
    return x[:, 2].clamp(-1, 1), wrap_angle(torch.atan2(x[:, 1], x[:, 0]))


def from_cylindrical(h: Tensor, phi: Tensor) -> Tensor:
    """Height ``(B,)`` and azimuth ``(B,)`` → ``(B, 3)`` unit vectors."""
    rho = (1 - h**2).clamp_min(0).sqrt()
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), h], dim=-1)


class RecursiveSphereFlow(Bijector):
    """The recursive flow on S² (Sec. 4.1), as the map data ← base it defines:

        h' = s(h; p),    φ' = g(φ; c(h')),    x' = (√(1−h'²) cos φ', √(1−h'²) sin φ', h'),

    s a rational-quadratic spline on [−1, 1] with ``num_bins`` bins and free parameters p (the
    flow on the first factor of [−1, 1] × S¹), g a circle flow (by default the paper's convex
    mixture of Möbius maps) whose parameters come from an MLP on the new height h'.
    ldj = log s'(h) + log g'(φ) (dA = dh dφ). ``forward`` is this map (closed form);
    ``inverse`` reads the conditioner from the known h' and inverts s and g (bisection for a
    mixture). Shapes: ``(B, 3) → (B, 3)``.
    """

    def __init__(
        self,
        circle_map: CircleMap | None = None,
        num_bins: int = 32,
        hidden_features: int = 64,
        num_hidden: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.map = circle_map or MobiusMixtureMap(12)
        self.num_bins = num_bins
        g = generator  # None: the global RNG (seeded by the run)
        # equal bins and softplus(0.5413) ≈ 1 knot derivatives: the identity at the start
        self.height_params = nn.Parameter(
            torch.cat([torch.zeros(2 * num_bins), torch.full((num_bins + 1,), 0.5413)])
        )
        # near-identity angle map, components kept distinct
        self.conditioner = MLP(1, self.map.num_params, hidden_features, num_hidden)
        self.conditioner.init_output(0.01, self.map.initial_params(g))

    def _height(self, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        K, p = self.num_bins, self.height_params.expand(h.shape[0], -1)
        return rational_quadratic_spline(
            h, p[:, :K], p[:, K : 2 * K], p[:, 2 * K :], (-1.0, 1.0), inverse
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_sphere(x)
        h, phi = to_cylindrical(x)
        h_out, ldj_height = self._height(h, inverse=False)
        phi_out, ldj_angle = self.map(phi, self.conditioner(h_out.unsqueeze(-1)))
        return from_cylindrical(h_out, phi_out), ldj_height + ldj_angle

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_sphere(z)
        h_out, phi_out = to_cylindrical(z)
        phi, ldj_angle = self.map.inverse(phi_out, self.conditioner(h_out.unsqueeze(-1)))
        h, ldj_height = self._height(h_out, inverse=True)
        return from_cylindrical(h, phi), ldj_height + ldj_angle


HessianForms = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


class RadialPotential(nn.Module):
    """EMSRE's ψ(x) = Σ_k (α_k/β_k) exp(β_k(μ_kᵀx − 1)), K components (Sec. 4.2).
    μ_k = m_k/‖m_k‖, β_k = softplus(b_k), α = the first K entries of softmax([a, a_0]), so
    α_k > 0 and Σ α_k < 1. ``forward(x)`` returns ∇ψ ``(B, 3)`` and the Hessian's three forms
    in a tangent frame, (u, n) ↦ (uᵀ∇²ψu, uᵀ∇²ψn, nᵀ∇²ψn) ``(B,)`` each, with
    ∇²ψ = Σ_k α_k β_k e^{β_k(μ_kᵀx−1)} μ_kμ_kᵀ."""

    def __init__(self, num_components: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.randn(num_components, 3, generator=generator))
        # β ∈ [1, 2] at the start
        beta = 1 + torch.rand(num_components, generator=generator)
        self.b = nn.Parameter(beta + torch.log(-torch.expm1(-beta)))  # softplus⁻¹
        self.a = nn.Parameter(torch.zeros(num_components + 1))

    def forward(self, x: Tensor) -> tuple[Tensor, HessianForms]:
        mu = F.normalize(self.m, dim=-1)  # (K, 3)
        beta = F.softplus(self.b)
        alpha = torch.softmax(self.a, dim=0)[:-1]
        e = alpha * torch.exp(beta * (x @ mu.T - 1))  # (B, K)
        weight = e * beta

        def hess_forms(u: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            mu_u, mu_n = u @ mu.T, n @ mu.T  # (B, K): μ_kᵀu, μ_kᵀn
            wu = weight * mu_u
            return (wu * mu_u).sum(-1), (wu * mu_n).sum(-1), (weight * mu_n * mu_n).sum(-1)

        return e @ mu, hess_forms


def _tanh_shrink(n: Tensor) -> Tensor:
    """tanh(n)/n for a norm n ≥ 0, smooth at 0 (1 − n²/3 there): multiplying a parameter of
    norm n by it gives norm tanh(n) < 1, and the identity near 0."""
    return torch.where(n > 1e-6, torch.tanh(n) / n.clamp_min(1e-6), 1 - n**2 / 3)


def _quadratic_forms(A: Tensor) -> HessianForms:
    """(u, n) ↦ (uᵀAu, uᵀAn, nᵀAn) for a symmetric ``A``: the forms of the Hessian A."""

    def hess_forms(u: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        Au = u @ A
        return _dot(Au, u), _dot(Au, n), _dot(n @ A, n)

    return hess_forms


class LinearQuadraticPotential(nn.Module):
    """The paper's EMP potential (Sec. 4.2, its S² table): ψ(x) = μᵀx + ½ xᵀAx, A symmetric,
    with ‖μ‖₁ + ‖A‖₁ < 1, ‖A‖₁ the sum of |A_ij| over all entries.

    Parametrised as (μ, A) = tanh(n)/n · (m, S), S = (B + Bᵀ)/2, n = ‖m‖₁ + ‖S‖₁, so the
    constraint holds for any free (m, B). ``forward(x)`` returns ∇ψ = μ + Ax and the forms of
    ∇²ψ = A.

    The factor ½ and the entrywise norm are what keep the map a bijection. The paper writes
    ψ = μᵀx + xᵀAx. Read literally, with ∇ψ = μ + 2Ax, a map at the constraint folds: an
    adversarial search found det df = −0.99. With the operator 1-norm (largest column sum) in
    place of the entrywise one, det df = −0.99 again. With ½ and the entrywise norm, the same
    search only reaches det df → 0⁺ at the boundary (e.g. ‖μ‖ = 1 at x = μ), and the strict
    inequality keeps it positive (``tests/test_tori_spheres.py``)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.m = nn.Parameter(0.1 * torch.randn(3, generator=generator))
        self.B = nn.Parameter(0.1 * torch.randn(3, 3, generator=generator))

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(μ, A) with ‖μ‖₁ + ‖A‖₁ = tanh(‖m‖₁ + ‖S‖₁) < 1."""
        S = (self.B + self.B.T) / 2
        scale = _tanh_shrink(self.m.abs().sum() + S.abs().sum())
        return scale * self.m, scale * S

    def forward(self, x: Tensor) -> tuple[Tensor, HessianForms]:
        mu, A = self.coefficients()
        return mu + x @ A, _quadratic_forms(A)


class QuadraticPotential(nn.Module):
    """An even EMP, ψ(x) = ½ xᵀAx, with A = 0.45·tanh(‖S‖_F)·S/‖S‖_F, S = (B + Bᵀ)/2, so that
    ‖A‖₂ ≤ ‖A‖_F < 0.45 and the eigenvalue spread of A stays below 0.9 (see the module
    docstring). Not the paper's form (:class:`LinearQuadraticPotential`): without the linear
    term every such flow is symmetric under x ↦ −x. ``forward(x)`` returns ∇ψ = Ax and the
    forms of A."""

    MAX_NORM = 0.45

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.B = nn.Parameter(0.1 * torch.randn(3, 3, generator=generator))

    def matrix(self) -> Tensor:
        S = (self.B + self.B.T) / 2
        return self.MAX_NORM * _tanh_shrink(S.norm()) * S

    def forward(self, x: Tensor) -> tuple[Tensor, HessianForms]:
        A = self.matrix()
        return x @ A, _quadratic_forms(A)


class ExpMapFlow(Bijector):
    """f(x) = exp_x(P_x ∇ψ(x)) on S² for a potential ``potential`` (Sec. 4.2; the math is in
    the module docstring). ``forward`` is f in closed form with the analytic ldj; ``inverse``
    is Newton's method. Shapes: ``(B, 3) → (B, 3)``."""

    def __init__(self, potential: nn.Module, inverse_tol: float = 1e-10, max_iter: int = 100):
        super().__init__()
        self.potential = potential
        self.inverse_tol = inverse_tol
        self.max_iter = max_iter

    def _map(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor, Tensor, Tensor]:
        """f(x); the entries (M11, M12, M21, M22) of the differential in the frame (u, n) at x
        and (u', n) at f(x), u' the transport of u; and u, n, u'. Written with scalars per
        point rather than batched 2×2 matrices: this runs at every training step."""
        grad, hess_forms = self.potential(x)
        xg = _dot(x, grad)
        v = grad - xg.unsqueeze(-1) * x  # P_x ∇ψ
        r = v.norm(dim=-1)
        small = r < 1e-9
        u = v / r.clamp_min(1e-9).unsqueeze(-1)
        # v ≈ 0: any tangent frame will do (df → I + H, frame-invariant); under torch.compile
        # the branch is skipped (samples hit v = 0 exactly with probability 0)
        if not torch.compiler.is_compiling() and small.any():
            axis = F.one_hot(x.abs().argmin(-1), 3).to(x.dtype)  # least aligned with x
            u = torch.where(small.unsqueeze(-1), F.normalize(axis - _dot(axis, x)[:, None] * x,
                                                             dim=-1), u)  # fmt: skip
        n = torch.linalg.cross(x, u)
        cos_r, sinc_r = torch.cos(r), torch.sinc(r / math.pi)  # sin r / r, smooth at 0
        y = cos_r.unsqueeze(-1) * x + sinc_r.unsqueeze(-1) * v
        h_uu, h12, h_nn = hess_forms(u, n)
        h11, h22 = h_uu - xg, h_nn - xg
        M = (1 + h11, h12, sinc_r * h12, cos_r + sinc_r * h22)
        u_out = -torch.sin(r).unsqueeze(-1) * x + cos_r.unsqueeze(-1) * u
        return y, M, u, n, u_out

    @staticmethod
    def _logdet(M: tuple[Tensor, ...]) -> Tensor:
        return torch.log(M[0] * M[3] - M[1] * M[2])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_sphere(x)
        y, M, *_ = self._map(x)
        return y, self._logdet(M)

    def _newton_step(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """One Newton step for f(x) = target; returns the new x and the residual before the
        step, the tangent projection of target − f(x) (≈ log_{f(x)}(target) near the root)."""
        y, (m11, m12, m21, m22), u, n, u_out = self._map(x)
        e = target - _dot(target, y).unsqueeze(-1) * y
        c1, c2 = _dot(e, u_out), _dot(e, n)
        det = m11 * m22 - m12 * m21
        d1, d2 = (m22 * c1 - m12 * c2) / det, (m11 * c2 - m21 * c1) / det  # M⁻¹ c
        step = d1.unsqueeze(-1) * u + d2.unsqueeze(-1) * n
        t = step.norm(dim=-1, keepdim=True)
        x_new = torch.cos(t) * x + torch.sinc(t / math.pi) * step  # exp_x(step)
        return x_new, e.norm(dim=-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_sphere(z)
        # Iterate in float64 on a float64 copy (float32 stalls near 1e-5 rad for points where
        # v = P_x∇ψ nearly cancels), then round back for the differentiable step.
        f64 = copy.deepcopy(self).double()
        with torch.no_grad():
            target = F.normalize(z.double(), dim=-1)  # on the sphere to float64 precision
            x = target.clone()
            for _ in range(self.max_iter):
                x, residual = f64._newton_step(x, target)
                if residual.max() < self.inverse_tol:
                    break
            else:
                raise SphereInverseError(
                    f"Newton's method left a residual of {residual.max().item():.3g} rad "
                    f"after {self.max_iter} iterations (tolerance {self.inverse_tol:g})"
                )
            x = x.to(z.dtype)
        # One more step, differentiable, from the root: dx/dz = (df)⁻¹ and implicit gradients.
        x, _ = self._newton_step(x, z)
        _, M, *_ = self._map(x)
        return x, -self._logdet(M)


class InCylindricalCoordinates(Bijector):
    """A sphere bijector seen in the area-preserving chart (h, φ): ``(B, 2) → (B, 2)``, the
    same ldj. ``check_bijector`` on it compares a sphere flow's ldj (surface measure) with the
    autograd Jacobian in intrinsic coordinates. Keep test points off the poles and φ = 0."""

    def __init__(self, layer: Bijector) -> None:
        super().__init__()
        self.layer = layer

    def _through(self, hp: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        check_angles(hp[:, 1], "azimuths")
        x = from_cylindrical(hp[:, 0], hp[:, 1])
        y, ldj = (self.layer.inverse if inverse else self.layer)(x)
        h, phi = to_cylindrical(y)
        return torch.stack([h, phi], dim=-1), ldj

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._through(x, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._through(z, inverse=True)
