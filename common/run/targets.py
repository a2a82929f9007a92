"""Unnormalised target densities for reverse-KL fits: a log density and the domain it lives on.

A :class:`Target` gives log p̃(x) for points of its :class:`Domain` and, where known, the exact
log normaliser log Z w.r.t. the domain's measure. Domains:

- ``torus`` Tᴰ = [0, 2π)ᴰ, Lebesgue measure on the angles (points ``(B, D)``);
- ``sphere`` Sᴰ ⊂ Rᴰ⁺¹, surface measure (points ``(B, D+1)``, unit vectors);
- ``box`` [a, b]ᴰ: the density is zero outside, so a flow fitted to it must map into the box;
- ``plane`` Rᴰ, with a box [a, b]ᴰ that holds all but a negligible part of the mass
  ("effectively bounded"): quadrature and figures use the box.

Every 2-D domain has a midpoint grid (:meth:`Domain.grid`), on which :func:`density_on_grid`
integrates a density: the log Z of a target without a closed form, and the check that a
trained flow's density has mass 1.

The Euclidean energies U1–U4 of Rezende & Mohamed, "Variational Inference with Normalizing
Flows" (ICML 2015, arXiv:1505.05770, Table 1 and Fig. 3), p̃ = exp(−U):

    U1(z) = ½((‖z‖ − 2)/0.4)² − log(exp(−½((z₁ − 2)/0.6)²) + exp(−½((z₁ + 2)/0.6)²))
    U2(z) = ½((z₂ − w₁(z))/0.4)²
    U3(z) = −log(exp(−½((z₂ − w₁)/0.35)²) + exp(−½((z₂ − w₁ + w₂)/0.35)²))
    U4(z) = −log(exp(−½((z₂ − w₁)/0.4)²) + exp(−½((z₂ − w₁ + w₃)/0.35)²))

with w₁ = sin(2πz₁/4), w₂ = 3·exp(−½((z₁ − 1)/0.6)²), w₃ = 3·σ((z₁ − 1)/0.3). U1 decays in
every direction (a ring of radius 2): it lives on the plane, effectively inside [−4, 4]².
U2–U4 do not decay along z₁ (their mass over R² is infinite); as in the paper's figures they
are densities on the box [−4, 4]². Their log Z come from quadrature on a 2000² grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import torch
from torch import Tensor

from common.flows.manifolds import sphere_grid, torus_grid

__all__ = ["ENERGIES", "Domain", "EnergyTarget", "Target", "density_on_grid"]


@dataclass(frozen=True)
class Domain:
    """Where a target lives (see the module docstring); ``bounds`` = (a, b) of the box, for the
    ``box`` and ``plane`` kinds."""

    kind: Literal["torus", "sphere", "box", "plane"]
    dim: int = 2
    bounds: tuple[float, float] = (-4.0, 4.0)

    def grid(self, n: int) -> tuple[Tensor, float, dict[str, Tensor]]:
        """Midpoint grid with n nodes per coordinate: points ``(n², ·)`` (first coordinate
        slowest), the cell measure, and the nodes per axis. 2-D domains only."""
        if self.dim != 2:
            raise ValueError(f"quadrature grids exist for 2-D domains only, not {self.dim}-D")
        if self.kind == "torus":
            return torus_grid(n)
        if self.kind == "sphere":
            return sphere_grid(n)
        a, b = self.bounds
        nodes = a + (torch.arange(n, dtype=torch.float64) + 0.5) * ((b - a) / n)
        x1, x2 = torch.meshgrid(nodes, nodes, indexing="ij")
        points = torch.stack([x1.ravel(), x2.ravel()], dim=-1).to(torch.get_default_dtype())
        return points, ((b - a) / n) ** 2, {"x1": nodes, "x2": nodes}


class Target(Protocol):
    """An unnormalised density p̃ on ``domain``: ``log_unnormalized(x)`` ``(B,)`` for points
    ``(B, ·)``; ``log_z`` the exact log normaliser w.r.t. the domain's measure, or None."""

    name: str
    domain: Domain
    log_z: float | None

    def log_unnormalized(self, x: Tensor) -> Tensor: ...


@torch.no_grad()
def density_on_grid(
    log_density: Callable[[Tensor], Tensor], domain: Domain, n: int, batch_size: int = 20000
) -> tuple[Tensor, float, dict[str, Tensor]]:
    """log density at the midpoint grid of ``domain`` (n nodes per coordinate), reshaped
    ``(n, n)``, the quadrature of its exponential (the mass), and the grid's nodes."""
    points, cell, coords = domain.grid(n)
    values = torch.cat([log_density(chunk) for chunk in points.split(batch_size)])
    mass = (torch.logsumexp(values.double(), 0).exp() * cell).item()
    return values.reshape(n, n), mass, coords


def _bump(t: Tensor, width: float) -> Tensor:
    return -0.5 * (t / width) ** 2  # the log of exp(−½(t/w)²)


def _u1(z1: Tensor, z2: Tensor) -> Tensor:
    ring = 0.5 * ((torch.sqrt(z1**2 + z2**2) - 2) / 0.4) ** 2
    return ring - torch.logaddexp(_bump(z1 - 2, 0.6), _bump(z1 + 2, 0.6))


def _u2(z1: Tensor, z2: Tensor) -> Tensor:
    return -_bump(z2 - torch.sin(math.pi * z1 / 2), 0.4)


def _u3(z1: Tensor, z2: Tensor) -> Tensor:
    w1, w2 = torch.sin(math.pi * z1 / 2), 3 * torch.exp(_bump(z1 - 1, 0.6))
    return -torch.logaddexp(_bump(z2 - w1, 0.35), _bump(z2 - w1 + w2, 0.35))


def _u4(z1: Tensor, z2: Tensor) -> Tensor:
    w1, w3 = torch.sin(math.pi * z1 / 2), 3 * torch.sigmoid((z1 - 1) / 0.3)
    return -torch.logaddexp(_bump(z2 - w1, 0.4), _bump(z2 - w1 + w3, 0.35))


ENERGIES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Domain]] = {
    "u1": (_u1, Domain("plane")),
    "u2": (_u2, Domain("box")),
    "u3": (_u3, Domain("box")),
    "u4": (_u4, Domain("box")),
}


@dataclass(frozen=True)
class EnergyTarget:
    """p̃ = exp(−U) for one of Rezende & Mohamed's energies U1–U4 (``name`` = "u1" … "u4");
    zero outside the box for U2–U4. log Z by quadrature (2000² midpoint nodes)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in ENERGIES:
            raise ValueError(f"unknown energy {self.name!r}; allowed: {sorted(ENERGIES)}")

    @property
    def domain(self) -> Domain:
        return ENERGIES[self.name][1]

    @cached_property
    def log_z(self) -> float:
        _, mass, _ = density_on_grid(self.log_unnormalized, self.domain, 2000)
        return math.log(mass)

    def log_unnormalized(self, x: Tensor) -> Tensor:
        energy, domain = ENERGIES[self.name]
        log_p = -energy(x[:, 0], x[:, 1])
        if domain.kind == "box":
            a, b = domain.bounds
            inside = ((x >= a) & (x <= b)).all(dim=-1)
            log_p = torch.where(inside, log_p, -math.inf)
        return log_p
