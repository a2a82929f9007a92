"""FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models (Grathwohl,
Chen, Bettencourt, Sutskever & Duvenaud, ICLR 2019; arXiv:1810.01367).

:class:`FFJORDModel` on vectors: ``num_blocks`` continuous normalizing flows in a row, each
dz/dt = f(t, z) with f an :class:`~common.flows.continuous.ODENet` of FFJORD's layer types
(concatsquash by default) and tanh or softplus, a trainable end time, the log-det by the exact
trace or Hutchinson's estimator (the probe fixed per solve), dopri5 or rk4, optionally the
adjoint method and the kinetic-energy / Jacobian-Frobenius regularisers of Finlay et al.
(2020). Everything lives in ``common/`` (:mod:`common.flows.continuous`); this file only
assembles it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.continuous import CNF, ODENet
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.run.baselines import with_baseline
from common.run.config import ConfigError, StrictModel
from common.run.vector_models import (
    GlowMLPModel,
    RealNVPMLPModel,
    build_glow_mlp,
    build_realnvp_mlp,
)

__all__ = ["FFJORDModel", "build_ffjord", "build_model"]


class FFJORDModel(StrictModel):
    """FFJORD on vectors (module docstring). Defaults: the paper's 2-D toy model (one block,
    3 concatsquash layers of 64 units, tanh, exact trace, dopri5 at 1e-5)."""

    name: Literal["ffjord"] = "ffjord"
    num_blocks: int = Field(1, ge=1, description="CNF blocks in a row")
    hidden_features: int = Field(64, gt=0, description="units per hidden layer of f")
    hidden_multiple: int | None = Field(
        None, gt=0, description="if set, units per hidden layer = this × D (the tabular configs)"
    )
    num_hidden: int = Field(3, ge=1, description="hidden layers of f")
    layer_type: Literal["concatsquash", "concat", "ignore"] = "concatsquash"
    activation: Literal["tanh", "softplus"] = "tanh"
    divergence: Literal["exact", "hutchinson"] = "exact"
    noise: Literal["gaussian", "rademacher"] = "gaussian"
    end_time: float = Field(0.5, gt=0, description="initial T (FFJORD's time_length)")
    train_end_time: bool = Field(True, description="learn T")
    solver: Literal["dopri5", "rk4"] = "dopri5"
    atol: float = Field(1e-5, gt=0)
    rtol: float = Field(1e-5, gt=0)
    step_size: float = Field(0.05, gt=0, le=1, description="rk4: step in s ∈ [0, 1]")
    adjoint: bool = Field(False, description="gradients by the adjoint method")
    kinetic_energy: float = Field(0.0, ge=0, description="weight of ∫‖f‖² dt (Finlay et al.)")
    jacobian_frobenius: float = Field(0.0, ge=0, description="weight of ∫‖∂f/∂z‖²_F dt")

    @model_validator(mode="after")
    def _width(self) -> FFJORDModel:
        if self.hidden_multiple is not None and "hidden_features" in self.model_fields_set:
            raise ValueError("set hidden_features or hidden_multiple, not both")
        return self


def build_ffjord(cfg: FFJORDModel, data: Dataset) -> Flow:
    if data.is_image or data.num_levels:
        raise ConfigError(f"model 'ffjord' is for continuous vectors, not {data.name!r}")
    d = data.num_dims
    width = cfg.hidden_features if cfg.hidden_multiple is None else cfg.hidden_multiple * d
    blocks: list[Bijector] = [
        CNF(
            ODENet(d, [width] * cfg.num_hidden, cfg.layer_type, cfg.activation),
            T=cfg.end_time,
            train_T=cfg.train_end_time,
            divergence=cfg.divergence,
            noise=cfg.noise,
            solver=cfg.solver,
            atol=cfg.atol,
            rtol=cfg.rtol,
            step_size=cfg.step_size,
            adjoint=cfg.adjoint,
            kinetic_energy=cfg.kinetic_energy,
            jacobian_frobenius=cfg.jacobian_frobenius,
        )
        for _ in range(cfg.num_blocks)
    ]
    return Flow(Compose(*blocks), StandardNormal(d))


build_model = with_baseline(
    {  # these models and the diagonal-Gaussian baseline
        FFJORDModel: build_ffjord,
        GlowMLPModel: build_glow_mlp,  # the toy comparison's coupling flows
        RealNVPMLPModel: build_realnvp_mlp,
    }
)
