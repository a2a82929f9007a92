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
from common.flows.sphere import (
    ExpMapFlow,
    LinearQuadraticPotential,
    QuadraticPotential,
    RadialPotential,
    RecursiveSphereFlow,
)
from common.flows.torus import AutoregressiveTorusFlow
from common.run.config import ConfigError, StrictModel
from common.run.targets import Target

__all__ = [
    "ExpMapModel",
    "RecursiveSphereModel",
    "TorusFlowModel",
    "build_expmap_flow",
    "build_model",
    "build_recursive_sphere_flow",
    "build_torus_flow",
]


class TorusFlowModel(StrictModel):
    """Autoregressive flow on T² (Sec. 3): ``num_layers`` layers, the coordinate order reversed
    between them; conditionals from ``family`` with ``num_components`` Möbius centres, NCP
    projections or spline bins; conditioner MLPs of ``num_hidden`` × ``hidden_features`` units."""

    name: Literal["torus_autoregressive"] = "torus_autoregressive"
    family: Literal["mobius", "spline", "ncp"]
    num_layers: int = Field(2, gt=0)
    num_components: int = Field(8, gt=0)
    hidden_features: int = Field(64, gt=0, description="width of the conditioner MLPs")
    num_hidden: int = Field(2, ge=0)


class RecursiveSphereModel(StrictModel):
    """The recursive Möbius-spline flow on S² (Sec. 4.1), N_T = 1: a ``spline_bins``-bin spline
    on the height, then a convex mixture of ``mobius_centres`` Möbius maps on the azimuth,
    conditioned on the new height."""

    name: Literal["sphere_recursive"] = "sphere_recursive"
    mobius_centres: int = Field(12, gt=0)
    spline_bins: int = Field(32, gt=0)
    hidden_features: int = Field(64, gt=0, description="width of the conditioner MLPs")
    num_hidden: int = Field(2, ge=0)


class ExpMapModel(StrictModel):
    """N_T = ``num_layers`` stacked exponential-map flows (Sec. 4.2): EMSRE (``radial``, K =
    ``num_components`` radial terms per layer) or EMP (``linear_quadratic``,
    the paper's; ``quadratic``, an even variant)."""

    name: Literal["sphere_expmap"] = "sphere_expmap"
    potential: Literal["radial", "linear_quadratic", "quadratic"] = Field(
        ..., description="'radial': EMSRE; 'linear_quadratic': the paper's EMP, μᵀx + ½xᵀAx; "
        "'quadratic': an even EMP, ½xᵀAx (not in the paper)",
    )  # fmt: skip
    num_layers: int = Field(1, gt=0)
    num_components: int = Field(1, gt=0, description="radial terms per layer (EMSRE only)")


def _check_domain(cfg, target: Target, kind: str) -> None:
    if target.domain.kind != kind:
        raise ConfigError(f"model {cfg.name!r} lives on a {kind}, target {target.name!r} on a "
                          f"{target.domain.kind}")  # fmt: skip


def build_torus_flow(cfg: TorusFlowModel, target: Target) -> Flow:
    _check_domain(cfg, target, "torus")
    dim, layers = target.domain.dim, []
    for i in range(cfg.num_layers):
        if i:
            layers.append(Reverse(dim))
        cmap = circle_map(cfg.family, cfg.num_components)
        layers.append(AutoregressiveTorusFlow(dim, cmap, cfg.hidden_features, cfg.num_hidden))
    return Flow(Inverse(Compose(*layers)), UniformTorus(dim))


def build_recursive_sphere_flow(cfg: RecursiveSphereModel, target: Target) -> Flow:
    _check_domain(cfg, target, "sphere")
    cmap = circle_map("mobius", cfg.mobius_centres)
    layer = RecursiveSphereFlow(cmap, cfg.spline_bins, cfg.hidden_features, cfg.num_hidden)
    return Flow(Inverse(Compose(layer)), UniformSphere(2))


def build_expmap_flow(cfg: ExpMapModel, target: Target) -> Flow:
    _check_domain(cfg, target, "sphere")
    if cfg.potential != "radial" and cfg.num_components != 1:
        raise ConfigError("model.num_components applies to the radial potential (EMSRE) only")

    def potential():
        if cfg.potential == "radial":
            return RadialPotential(cfg.num_components)
        if cfg.potential == "linear_quadratic":
            return LinearQuadraticPotential()
        return QuadraticPotential()

    layers = [ExpMapFlow(potential()) for _ in range(cfg.num_layers)]
    return Flow(Inverse(Compose(*layers)), UniformSphere(2))


BUILDERS = {
    TorusFlowModel: build_torus_flow,
    RecursiveSphereModel: build_recursive_sphere_flow,
    ExpMapModel: build_expmap_flow,
}


def build_model(cfg: TorusFlowModel | RecursiveSphereModel | ExpMapModel, target: Target) -> Flow:
    """The flow of ``cfg`` on ``target``'s manifold; raises ConfigError on a mismatch."""
    return BUILDERS[type(cfg)](cfg, target)
