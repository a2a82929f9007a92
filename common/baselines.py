"""Baseline densities every paper is compared against."""

from __future__ import annotations

from common.bijector import Compose
from common.config import DiagonalGaussianModel
from common.data import Dataset
from common.dequantize import Logit, UniformDequantization
from common.distributions import StandardNormal
from common.flow import Flow
from common.layers import ElementwiseAffine, Reshape

__all__ = ["build_diagonal_gaussian", "data_preprocessing"]


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
