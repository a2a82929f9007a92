"""MAF and MADE: Masked Autoregressive Flow for Density Estimation (Papamakarios, Pavlakou &
Murray, NeurIPS 2017; arXiv:1705.07057), with MADE (Germain et al. 2015, arXiv:1502.03509).

One config, :class:`MAFModel`, spans the rows of MAF's Table 1:

- **MADE**: one masked autoregressive layer with Gaussian conditionals, x_d = μ_d + σ_d u_d
  (``num_layers: 1``, ``batch_norm: false``);
- **MADE MoG**: no layers, the autoregressive mixture of Gaussians as the density
  (``num_layers: 0``, ``base: mog``; Sec. 3.3);
- **MAF (K)**: K such layers, the order reversed between layers, batch norm after each
  (Sec. 3.1 and 3.4); **MAF MoG (K)**: the same over a MADE MoG base.

With ``map: spline`` each layer is an autoregressive neural spline flow (Durkan et al. 2019)
instead. Images are flattened and, with ``logit_alpha``, taken to logit space (Sec. 4.3). The
"Real NVP" rows are :class:`~common.run.vector_models.RealNVPMLPModel`; IAF is in
:mod:`papers.maf_iaf.vae`.

Everything used here lives in ``common/``; this file only assembles the architecture.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from pydantic import Field

from common.data import Dataset
from common.flows.autoregressive import MADEMoG, MaskedAutoregressive
from common.flows.bijector import Bijector, Compose
from common.flows.dequantize import Logit
from common.flows.distributions import BaseDistribution, StandardNormal
from common.flows.elementwise import Affine, RationalQuadraticSpline
from common.flows.flow import Flow
from common.flows.image import BatchNorm
from common.flows.vae import VAE
from common.run.baselines import data_preprocessing, with_baseline
from common.run.config import ConfigError, StrictModel
from common.run.vector_models import RealNVPMLPModel, build_realnvp_mlp
from papers.maf_iaf.vae import VAEModel, build_vae

__all__ = ["MAFModel", "build_maf", "build_model"]


class MAFModel(StrictModel):
    """MADE, MADE MoG, MAF and MAF MoG (module docstring). Defaults: MAF (5) of the BSDS300
    column of Table 1 (two hidden layers of 512 ReLU units per MADE)."""

    name: Literal["maf"] = "maf"
    num_layers: int = Field(5, ge=0, description="masked autoregressive layers (MADEs)")
    hidden_features: int = Field(512, gt=0, description="units per hidden layer of each MADE")
    num_hidden: int = Field(2, ge=1, description="hidden layers per MADE")
    activation: Literal["relu", "tanh", "elu"] = Field("relu", description="tanh for GAS")
    degrees: Literal["sequential", "random"] = Field(
        "sequential", description="MADE's hidden degrees (random for CIFAR-10 in the paper)"
    )
    batch_norm: bool = Field(True, description="a batch-norm bijector after every layer")
    map: Literal["affine", "spline"] = Field(
        "affine", description="each layer's elementwise map: affine (MAF) or a "
        "rational-quadratic spline (an autoregressive neural spline flow)",
    )  # fmt: skip
    scale_bound: float | None = Field(
        None, gt=0, description="affine only: log-scale bounded to ±c by c·tanh(·/c); null: "
        "unbounded, as in MAF",
    )  # fmt: skip
    num_bins: int = Field(8, ge=2, description="spline only: bins")
    spline_bound: float = Field(4.0, gt=0, description="spline only: the interval [-B, B]")
    base: Literal["gaussian", "mog"] = Field(
        "gaussian", description="the density under the layers: N(0, I), or a MADE MoG"
    )
    num_components: int = Field(10, ge=2, description="mog only: components per conditional")
    logit_alpha: float | None = Field(
        None, gt=0, lt=0.5, description="image data: logit(α + (1 − 2α)x) first (MAF: 1e-6 "
        "for MNIST, 0.05 for CIFAR-10)",
    )  # fmt: skip


def _order(num_features: int, k: int) -> torch.Tensor:
    """The order of layer k: 1…D for even k, reversed for odd k (MAF, Sec. 3.1)."""
    order = torch.arange(num_features)
    return order if k % 2 == 0 else order.flip(0)


def build_maf(cfg: MAFModel, data: Dataset) -> Flow:
    if data.is_image and cfg.logit_alpha is None:
        raise ConfigError(f"{data.name!r} is image data: set model.logit_alpha (MAF, Sec. 4.3)")
    if cfg.num_layers == 0 and cfg.base == "gaussian":
        raise ConfigError("model.num_layers: 0 with base 'gaussian' is a fixed N(0, I); use "
                          "base: mog (MADE MoG) or add layers")  # fmt: skip
    D, C = data.num_dims, data.context_features  # C: one-hot labels of a conditional run
    if C and cfg.base == "mog":
        raise ConfigError("a class-conditional MAF needs base: gaussian (the MADE MoG base "
                          "takes no context)")  # fmt: skip
    dequant, layers = data_preprocessing(data)
    if cfg.logit_alpha is not None:
        layers.append(Logit(cfg.logit_alpha))
    if cfg.map == "affine":
        elementwise = partial(Affine, scale_bound=cfg.scale_bound)
    else:
        elementwise = partial(RationalQuadraticSpline, num_bins=cfg.num_bins,
                              bound=cfg.spline_bound)  # fmt: skip
    made = {"hidden_features": cfg.hidden_features, "num_hidden": cfg.num_hidden,
            "degrees": cfg.degrees, "activation": cfg.activation}  # fmt: skip
    flow_layers: list[Bijector] = []
    for k in range(cfg.num_layers):
        flow_layers.append(MaskedAutoregressive(D, elementwise, order=_order(D, k), seed=k,
                                                context_features=C, **made))  # fmt: skip
        if cfg.batch_norm:
            flow_layers.append(BatchNorm(D))
    base: BaseDistribution = StandardNormal(D)
    if cfg.base == "mog":
        k = cfg.num_layers
        base = MADEMoG(D, cfg.num_components, order=_order(D, k), seed=k, **made)
    return Flow(Compose(*layers, *flow_layers), base, dequant)


def _build(cfg: MAFModel | RealNVPMLPModel | VAEModel, data: Dataset) -> Flow | VAE:
    if isinstance(cfg, RealNVPMLPModel):
        return build_realnvp_mlp(cfg, data)
    if isinstance(cfg, VAEModel):
        return build_vae(cfg, data)
    return build_maf(cfg, data)


# MAF's models, Real NVP, the diagonal-Gaussian baseline, and IAF's VAEs
build_model = with_baseline(_build)
