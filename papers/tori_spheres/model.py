"""The paper's flows as configs and builders (Rezende et al. 2020): autoregressive flows on T²
with each circle-flow family, the recursive Möbius-spline flow on S², and the exponential-map
flows EMSRE and EMP on S². The layers themselves live in common/ (circle, torus, sphere).

Every model is ``Flow(Inverse(f_N ∘ … ∘ f_1), uniform base)``: the layers' ``forward`` is the
paper's map f from base samples to the target (closed form for every family), so sampling —
what reverse-KL training does at every step — never needs a numerical inverse; evaluating the
density at given points (figures, quadrature) inverts f (bisection for the Möbius and NCP
mixtures, Newton for the exponential maps).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.flows.bijector import Compose, Inverse, Reverse
from common.flows.circle import circle_map
from common.flows.flow import Flow
from common.flows.manifolds import UniformSphere, UniformTorus
from common.flows.sphere import ExpMapFlow, QuadraticPotential, RadialPotential, RecursiveSphereFlow
from common.flows.torus import AutoregressiveTorusFlow
from common.run.config import ConfigError, StrictModel

__all__ = ["ExpMapModel", "RecursiveSphereModel", "TorusFlowModel", "build_model"]


class TorusFlowModel(StrictModel):
    """Autoregressive flow on T² (Sec. 3): ``num_layers`` layers, the coordinate order reversed
    between them; conditionals from ``family`` with ``num_components`` Möbius centres, NCP
    projections or spline bins; conditioner MLPs of ``num_hidden`` × ``hidden`` units."""

    name: Literal["torus_autoregressive"] = "torus_autoregressive"
    family: Literal["mobius", "spline", "ncp"]
    num_layers: int = Field(2, gt=0)
    num_components: int = Field(8, gt=0)
    hidden: int = Field(64, gt=0)
    num_hidden: int = Field(2, ge=0)


class RecursiveSphereModel(StrictModel):
    """The recursive Möbius-spline flow on S² (Sec. 4.1), N_T = 1: a ``spline_bins``-bin spline
    on the height, then a convex mixture of ``mobius_centres`` Möbius maps on the azimuth,
    conditioned on the new height."""

    name: Literal["sphere_recursive"] = "sphere_recursive"
    mobius_centres: int = Field(12, gt=0)
    spline_bins: int = Field(32, gt=0)
    hidden: int = Field(64, gt=0)
    num_hidden: int = Field(2, ge=0)


class ExpMapModel(StrictModel):
    """N_T = ``num_layers`` stacked exponential-map flows (Sec. 4.2): EMSRE (``radial``, K =
    ``num_components`` radial terms per layer) or EMP (``quadratic``)."""

    name: Literal["sphere_expmap"] = "sphere_expmap"
    potential: Literal["radial", "quadratic"]
    num_layers: int = Field(1, gt=0)
    num_components: int = Field(1, gt=0, description="radial terms per layer (EMSRE only)")


def build_model(cfg, target) -> Flow:
    """The flow of ``cfg`` on ``target``'s manifold; raises ConfigError on a mismatch."""
    manifold, dim = "torus" if cfg.name == "torus_autoregressive" else "sphere", target.domain.dim
    if manifold != target.domain.kind:
        raise ConfigError(
            f"model {cfg.name!r} lives on a {manifold}, target {target.name!r} on a "
            f"{target.domain.kind}"
        )
    if cfg.name == "torus_autoregressive":
        layers = []
        for i in range(cfg.num_layers):
            if i:
                layers.append(Reverse(dim))
            cmap = circle_map(cfg.family, cfg.num_components)
            layers.append(AutoregressiveTorusFlow(dim, cmap, cfg.hidden, cfg.num_hidden))
        return Flow(Inverse(Compose(*layers)), UniformTorus(dim))
    if cfg.name == "sphere_recursive":
        layer = RecursiveSphereFlow(
            circle_map("mobius", cfg.mobius_centres), cfg.spline_bins, cfg.hidden, cfg.num_hidden
        )
        return Flow(Inverse(Compose(layer)), UniformSphere(2))
    if cfg.potential == "quadratic" and cfg.num_components != 1:
        raise ConfigError("model.num_components applies to the radial potential (EMSRE) only")
    layers = [
        ExpMapFlow(
            RadialPotential(cfg.num_components)
            if cfg.potential == "radial"
            else QuadraticPotential()
        )
        for _ in range(cfg.num_layers)
    ]
    return Flow(Inverse(Compose(*layers)), UniformSphere(2))
