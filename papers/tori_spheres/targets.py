"""The paper's target densities on T² and S² (Rezende et al., "Normalizing Flows on Tori and
Spheres", ICML 2020, Sec. 5), unnormalised, with their exact log-normalisers.

Measures: Lebesgue on [0, 2π)² for T², the surface measure for S².

- T² unimodal:   p̃(θ) = exp(cos(θ₁ − 4.18) + cos(θ₂ − 5.96))
- T² multimodal: p̃(θ) = (1/3) Σ_i exp(cos(θ₁ − a_i) + cos(θ₂ − b_i)),
                 (a, b) ∈ {(0.21, 2.85), (1.89, 6.18), (3.77, 1.56)}
- T² correlated: p̃(θ) = exp(cos(θ₁ + θ₂ − 1.94))
- S² four modes: p̃(x) = Σ_{i=1..4} exp(10 μ_iᵀx)

Normalisers: ∫ exp(cos(θ − a)) dθ = 2π I₀(1) over a period, so log Z = 2 log(2π I₀(1)) for the
first two and log(4π² I₀(1)) for the correlated one (substitute θ₁ + θ₂ for θ₁); on S²,
∫ exp(κ μᵀx) dA = 4π sinh(κ)/κ, so log Z = log(16π sinh(10)/10).

**The μ₃ correction.** The paper lists the S² modes in spherical coordinates and prints μ₃'s
azimuth as 0.5; its figure, and independent reproductions, need 5.0 (a dropped digit). The
Euclidean vectors below use 5.0: μ₃ = (0.2341, −0.7914, −0.5646) has azimuth
atan2(−0.7914, 0.2341) = 5.000 rad. With 0.5 it would be (0.7202, 0.3935, −0.5646), a
different target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from common.flows.manifolds import check_angles, check_sphere
from common.run.targets import Domain

__all__ = ["S2_MODES", "SphereTarget", "TorusTarget", "make_target"]

TargetName = Literal["t2_unimodal", "t2_multimodal", "t2_correlated", "s2_four_modes"]

T2_MULTIMODAL_CENTRES = ((0.21, 2.85), (1.89, 6.18), (3.77, 1.56))
S2_MODES = (
    (0.0541, 0.7629, -0.6442),
    (0.2919, 0.4546, 0.8415),
    (0.2341, -0.7914, -0.5646),  # azimuth 5.0, not the printed 0.5 (see the module docstring)
    (-0.4999, -0.5788, 0.6442),
)
S2_CONCENTRATION = 10.0


def _log_i0(x: float) -> float:
    return math.log(torch.special.i0(torch.tensor(x, dtype=torch.float64)).item())


@dataclass(frozen=True)
class TorusTarget:
    """A T² target: ``log_unnormalized`` of angles ``(B, 2)`` → ``(B,)``."""

    name: str
    domain: Domain = Domain("torus", dim=2)

    @property
    def log_z(self) -> float:
        if self.name == "t2_correlated":
            return math.log(4 * math.pi**2) + _log_i0(1.0)
        return 2 * (math.log(2 * math.pi) + _log_i0(1.0))

    def log_unnormalized(self, theta: Tensor) -> Tensor:
        check_angles(theta)
        t1, t2 = theta[:, 0], theta[:, 1]
        if self.name == "t2_unimodal":
            return torch.cos(t1 - 4.18) + torch.cos(t2 - 5.96)
        if self.name == "t2_correlated":
            return torch.cos(t1 + t2 - 1.94)
        terms = torch.stack(
            [torch.cos(t1 - a) + torch.cos(t2 - b) for a, b in T2_MULTIMODAL_CENTRES], dim=-1
        )
        return torch.logsumexp(terms, dim=-1) - math.log(3)


@dataclass(frozen=True)
class SphereTarget:
    """The S² four-mode target: ``log_unnormalized`` of unit vectors ``(B, 3)`` → ``(B,)``."""

    name: str = "s2_four_modes"
    domain: Domain = Domain("sphere", dim=2)

    @property
    def log_z(self) -> float:
        k = S2_CONCENTRATION
        return math.log(16 * math.pi) + k + math.log(-math.expm1(-2 * k)) - math.log(2 * k)

    def log_unnormalized(self, x: Tensor) -> Tensor:
        check_sphere(x)
        mu = torch.tensor(S2_MODES, dtype=x.dtype, device=x.device)
        mu = mu / mu.norm(dim=-1, keepdim=True)  # the printed 4 digits are not exactly unit
        return torch.logsumexp(S2_CONCENTRATION * x @ mu.T, dim=-1)


def make_target(cfg) -> TorusTarget | SphereTarget:
    """The target named by a :class:`papers.tori_spheres.train.TargetConfig`."""
    if cfg.name == "s2_four_modes":
        return SphereTarget()
    return TorusTarget(cfg.name)
