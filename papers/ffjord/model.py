"""FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models (Grathwohl,
Chen, Bettencourt, Sutskever & Duvenaud, ICLR 2019; arXiv:1810.01367).

:class:`FFJORDModel` on vectors: ``num_blocks`` continuous normalizing flows in a row, each
dz/dt = f(t, z) with f an :class:`~common.flows.continuous.ODENet` of FFJORD's layer types
(concatsquash by default) and tanh or softplus, a trainable end time, the log-det by the exact
trace or Hutchinson's estimator (the probe fixed per solve), dopri5 or rk4, optionally the
adjoint method and the kinetic-energy / Jacobian-Frobenius regularisers of Finlay et al.
(2020). :class:`FFJORDMultiscaleModel` on images: the authors' multi-scale arrangement of
CNFs with convolutional dynamics on both sides of each squeeze (their ODE-NVP). Everything
lives in ``common/`` (:mod:`common.flows.continuous`); this file only
assembles it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.continuous import CNF, ODEConvNet, ODENet
from common.flows.dequantize import Logit, UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.flows.image import multi_scale
from common.run.baselines import multiscale_image_shape, with_baseline
from common.run.config import ConfigError, StrictModel
from common.run.vector_models import (
    GlowMLPModel,
    RealNVPMLPModel,
    build_glow_mlp,
    build_realnvp_mlp,
)

__all__ = [
    "FFJORDModel",
    "FFJORDMultiscaleModel",
    "authors_num_scales",
    "build_ffjord",
    "build_ffjord_multiscale",
    "build_model",
]


class _Solver(StrictModel):
    """What every FFJORD block shares: the end time, the trace, the solver, the regularisers."""

    end_time: float = Field(0.5, gt=0, description="initial T (FFJORD's time_length)")
    train_end_time: bool = Field(True, description="learn T")
    divergence: Literal["exact", "hutchinson"] = "exact"
    noise: Literal["gaussian", "rademacher"] = "gaussian"
    solver: Literal["dopri5", "rk4"] = "dopri5"
    atol: float = Field(1e-5, gt=0, description="dopri5's tolerances in training")
    rtol: float = Field(1e-5, gt=0)
    test_atol: float | None = Field(None, gt=0, description="in evaluation (default: atol)")
    test_rtol: float | None = Field(None, gt=0, description="in evaluation (default: rtol)")
    step_size: float = Field(0.05, gt=0, le=1, description="rk4: step in s ∈ [0, 1]")
    adjoint: bool = Field(False, description="gradients by the adjoint method")
    kinetic_energy: float = Field(0.0, ge=0, description="weight of ∫‖f‖² dt (Finlay et al.)")
    jacobian_frobenius: float = Field(0.0, ge=0, description="weight of ∫‖∂f/∂z‖²_F dt")

    def cnf(self, net: nn.Module) -> CNF:
        return CNF(
            net,
            T=self.end_time,
            train_T=self.train_end_time,
            divergence=self.divergence,
            noise=self.noise,
            solver=self.solver,
            atol=self.atol,
            rtol=self.rtol,
            test_atol=self.test_atol,
            test_rtol=self.test_rtol,
            step_size=self.step_size,
            adjoint=self.adjoint,
            kinetic_energy=self.kinetic_energy,
            jacobian_frobenius=self.jacobian_frobenius,
        )


class FFJORDModel(_Solver):
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

    @model_validator(mode="after")
    def _width(self) -> FFJORDModel:
        if self.hidden_multiple is not None and "hidden_features" in self.model_fields_set:
            raise ValueError("set hidden_features or hidden_multiple, not both")
        return self


class FFJORDMultiscaleModel(_Solver):
    """FFJORD's multi-scale image model (the authors' ODE-NVP, ``train_cnf.py --multiscale``):
    the logit of α + (1 − 2α)x, then per scale ``blocks_per_side`` CNFs → squeeze →
    ``blocks_per_side`` CNFs → factor out half, the last scale CNFs alone; every f an
    :class:`~common.flows.continuous.ODEConvNet` (3×3 concat convolutions, softplus), the trace
    by Hutchinson's estimator with Rademacher probes, T = 1 fixed (the authors' CNF default).
    Scales: halve while H and W are at least 4 (the authors' rule) unless ``num_scales``."""

    name: Literal["ffjord_multiscale"] = "ffjord_multiscale"
    num_scales: int | None = Field(None, ge=1, description="scales (default: the authors' rule)")
    blocks_per_side: int = Field(2, ge=1, description="CNF blocks before and after a squeeze")
    hidden_channels: list[int] = Field([64, 64, 64], min_length=1, description="widths of f")
    activation: Literal["tanh", "softplus"] = "softplus"
    logit_alpha: float = Field(1e-6, ge=0, lt=0.5, description="logit preprocessing's α")
    end_time: float = Field(1.0, gt=0, description="T (FFJORD's time_length)")
    train_end_time: bool = Field(False, description="learn T")
    divergence: Literal["exact", "hutchinson"] = "hutchinson"
    noise: Literal["gaussian", "rademacher"] = "rademacher"


def build_ffjord(cfg: FFJORDModel, data: Dataset) -> Flow:
    if data.is_image or data.num_levels:
        raise ConfigError(f"model 'ffjord' is for continuous vectors, not {data.name!r}; "
                          "images take 'ffjord_multiscale'")  # fmt: skip
    d = data.num_dims
    width = cfg.hidden_features if cfg.hidden_multiple is None else cfg.hidden_multiple * d
    blocks: list[Bijector] = [
        cfg.cnf(ODENet(d, [width] * cfg.num_hidden, cfg.layer_type, cfg.activation))
        for _ in range(cfg.num_blocks)
    ]
    return Flow(Compose(*blocks), StandardNormal(d))


def authors_num_scales(height: int, width: int) -> int:
    """The authors' number of scales: how often H and W halve while both are at least 4
    (MNIST 28 → 3, CIFAR-10 32 → 4, digits 8 → 2)."""
    n = 0
    while height >= 4 and width >= 4:
        n, height, width = n + 1, height // 2, width // 2
    return n


def build_ffjord_multiscale(cfg: FFJORDMultiscaleModel, data: Dataset) -> Flow:
    # the authors' rule reads H and W (the check below refuses anything but images)
    scales = cfg.num_scales or (authors_num_scales(*data.event_shape[1:]) if data.is_image else 1)
    C, H, W = multiscale_image_shape(data, "model 'ffjord_multiscale'", "num_scales", scales,
                                     scales - 1)  # fmt: skip

    def blocks(k: int, shape: tuple[int, int, int]) -> list[Bijector]:
        nets = (ODEConvNet(shape[0], cfg.hidden_channels, cfg.activation)
                for _ in range(cfg.blocks_per_side))  # fmt: skip
        return [cfg.cnf(net) for net in nets]

    transform = multi_scale((C, H, W), scales, blocks, split_prior="fixed",
                            pre_steps=blocks, squeeze_last=False)  # fmt: skip
    return Flow(
        Compose(Logit(cfg.logit_alpha), transform),
        StandardNormal(data.num_dims),
        UniformDequantization(data.num_levels),
    )


build_model = with_baseline(
    {  # these models and the diagonal-Gaussian baseline
        FFJORDModel: build_ffjord,
        FFJORDMultiscaleModel: build_ffjord_multiscale,
        GlowMLPModel: build_glow_mlp,  # the toy comparison's coupling flows
        RealNVPMLPModel: build_realnvp_mlp,
    }
)
