"""Baseline densities every paper is compared against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.data import Dataset
from common.flows.bijector import Compose
from common.flows.dequantize import Logit, UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.flows.layers import ElementwiseAffine, Reshape
from common.run.config import DiagonalGaussianModel

__all__ = ["build_diagonal_gaussian", "data_preprocessing", "with_baseline"]


def data_preprocessing(data: Dataset) -> tuple[UniformDequantization | None, list]:
    """The dequantization layer for discrete data and the flattening of images to ``(B, D)``."""
    dequant = UniformDequantization(data.num_levels) if data.num_levels else None
    layers = [Reshape(data.event_shape, (data.num_dims,))] if len(data.event_shape) > 1 else []
    return dequant, layers


def build_diagonal_gaussian(cfg: DiagonalGaussianModel, data: Dataset) -> Flow:
    """x ~ N(μ, diag σ²) per dimension (on the dequantized [0, 1] scale for images, or after a
    logit if ``cfg.logit_alpha`` is set): the model with no dependence between dimensions."""
    dequant, layers = data_preprocessing(data)
    if cfg.logit_alpha is not None:
        layers.append(Logit(cfg.logit_alpha))
    layers.append(ElementwiseAffine(data.num_dims, shift=True))
    return Flow(Compose(*layers), StandardNormal(data.num_dims), dequant)


def with_baseline(build: Callable[[Any, Dataset], Flow]) -> Callable[[Any, Dataset], Flow]:
    """A paper's ``build_model(cfg, data)``: its own ``build`` for its model configs, and
    :func:`build_diagonal_gaussian` for the baseline every paper runs beside them."""

    def build_model(cfg: Any, data: Dataset) -> Flow:
        if isinstance(cfg, DiagonalGaussianModel):
            return build_diagonal_gaussian(cfg, data)
        return build(cfg, data)

    return build_model
