"""Baseline densities every paper is compared against, and what the papers' model builders
share (data preprocessing, the multi-scale models' shape check)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from common.data import Dataset
from common.flows.bijector import Compose
from common.flows.dequantize import Logit, UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.flows.layers import ElementwiseAffine, Reshape
from common.run.config import ConfigError, DiagonalGaussianModel

__all__ = [
    "build_diagonal_gaussian",
    "data_preprocessing",
    "fit_diagonal_gaussian",
    "multiscale_image_shape",
    "with_baseline",
]


def multiscale_image_shape(
    data: Dataset, model: str, key: str, value: int, halvings: int
) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``data`` for a multi-scale ``model`` whose config key ``key``
    (= ``value``) halves H and W ``halvings`` times; a :class:`ConfigError` naming the key
    where the data is not discrete images or the sizes do not divide."""
    if not data.is_image or not data.num_levels:
        raise ConfigError(f"{model} needs image data, not {data.name!r}")
    C, H, W = data.event_shape
    if H % 2**halvings or W % 2**halvings:
        raise ConfigError(f"model.{key}={value} needs H and W divisible by {2**halvings}; "
                          f"{data.name} is {H}×{W}")  # fmt: skip
    return C, H, W


def data_preprocessing(data: Dataset) -> tuple[UniformDequantization | None, list]:
    """The dequantization layer for discrete data and the flattening of images to ``(B, D)``."""
    dequant = UniformDequantization(data.num_levels) if data.num_levels else None
    layers = [Reshape(data.event_shape, (data.num_dims,))] if len(data.event_shape) > 1 else []
    return dequant, layers


def build_diagonal_gaussian(cfg: DiagonalGaussianModel, data: Dataset) -> Flow:
    """x ~ N(μ, diag σ²) per dimension (on the dequantized [0, 1] scale for images, or after a
    logit if ``cfg.logit_alpha`` is set): the model with no dependence between dimensions.
    With ``cfg.fit == 'closed_form'`` it is returned fitted (:func:`fit_diagonal_gaussian`)."""
    dequant, layers = data_preprocessing(data)
    if cfg.logit_alpha is not None:
        layers.append(Logit(cfg.logit_alpha))
    layers.append(ElementwiseAffine(data.num_dims, shift=True))
    flow = Flow(Compose(*layers), StandardNormal(data.num_dims), dequant)
    if cfg.fit == "closed_form":
        fit_diagonal_gaussian(flow, data.x_train, cfg.fit_draws)
    return flow


@torch.no_grad()
def fit_diagonal_gaussian(flow: Flow, x_train: Tensor, draws: int) -> None:
    """Set the last layer of a :func:`build_diagonal_gaussian` flow to the maximum-likelihood
    fit on ``x_train``.

    Every layer before the Gaussian (dequantization, flattening, logit) is fixed, and their
    ldj does not depend on μ and σ, so the likelihood of the whole model is maximised by the
    Gaussian maximum-likelihood fit to the preprocessed data y:

        μ_d = E[y_d],   σ²_d = E[(y_d − μ_d)²]   (the biased variance: the MLE),

    the expectation over the training set and, for discrete data, over the dequantization
    noise u (the expected log-likelihood E_u log p(x + u) that training maximises), estimated
    from ``draws`` noise draws of the whole set, in float64. The affine layer maps
    y ↦ (y − μ)/σ: log_scale = −log σ, shift = −μ/σ."""
    *preprocess, affine = flow.transform.layers
    rounds = draws if flow.dequantization is not None else 1  # continuous data: one pass
    total = total_sq = 0.0
    for _ in range(rounds):
        y, _ = flow.dequantize(x_train)
        for layer in preprocess:
            y, _ = layer(y)
        y = y.double()
        total, total_sq = total + y.sum(0), total_sq + (y * y).sum(0)
    n = len(x_train) * rounds
    mean = total / n
    std = (total_sq / n - mean**2).clamp_min(1e-12).sqrt()
    affine.log_scale.copy_(-std.log())
    affine.shift.copy_(-mean / std)


def with_baseline(
    build: Callable[[Any, Dataset], Flow] | Mapping[type, Callable[[Any, Dataset], Flow]],
) -> Callable[[Any, Dataset], Flow]:
    """A paper's ``build_model(cfg, data)``: its own ``build`` for its model configs (a
    function, or a mapping from each model-config class to its builder), and
    :func:`build_diagonal_gaussian` for the baseline every paper runs beside them."""
    builders = dict(build) if isinstance(build, Mapping) else None

    def build_model(cfg: Any, data: Dataset) -> Flow:
        if isinstance(cfg, DiagonalGaussianModel):
            return build_diagonal_gaussian(cfg, data)
        if builders is not None:
            return builders[type(cfg)](cfg, data)
        return build(cfg, data)

    return build_model
