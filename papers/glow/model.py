"""Glow: Generative Flow with Invertible 1×1 Convolutions (Kingma & Dhariwal, NeurIPS 2018;
arXiv:1807.03039).

One step of flow (Sec. 3, Fig. 2a) is

    ActNorm → invertible 1×1 convolution → affine coupling,

and the multi-scale architecture (Fig. 2b) has L levels: each squeezes, applies K steps, and
(but the last) splits off half the channels, scored under a Gaussian whose mean and log-std
come from a zero-initialised convolution of the kept half. The top latent has a learned
Gaussian prior. The coupling network is conv3×3 → ReLU → conv1×1 → ReLU → zero-init conv3×3
and the coupling scale is sigmoid(h + 2), as in the authors' code. Samples are drawn at a
temperature T (the base N(0, T²I)).

For the permutation ablation (Fig. 3) the 1×1 convolution can be replaced by a channel
reversal (RealNVP's choice) or a fixed random shuffle, and the coupling can be additive.

Preprocessing: uniform dequantization to [0, 1); the authors' extra shift by −0.5 is left to
the first ActNorm, whose data-dependent init removes the mean anyway.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from common.data import Dataset
from common.flows.bijector import Bijector, Permutation, Reverse
from common.flows.coupling import ImageCoupling
from common.flows.dequantize import UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.elementwise import Additive, SigmoidAffine
from common.flows.flow import Flow
from common.flows.image import ActNorm, InvertibleConv1x1, multi_scale
from common.flows.nets import GlowConditioner
from common.run.baselines import multiscale_image_shape, with_baseline
from common.run.config import StrictModel

__all__ = ["GlowModel", "build_glow", "build_model"]


class GlowModel(StrictModel):
    """Glow's hyper-parameters; the defaults are the paper's CIFAR-10 model (Sec. 5)."""

    name: Literal["glow"] = "glow"
    num_levels: int = Field(3, ge=1, description="L: levels (each starts with a squeeze)")
    steps_per_level: int = Field(32, ge=1, description="K: steps of flow per level")
    hidden_channels: int = Field(512, gt=0, description="width of the coupling network")
    permutation: Literal["conv_lu", "conv", "shuffle", "reverse"] = Field(
        "conv_lu", description="1×1 conv (LU or plain), fixed random shuffle, or reversal"
    )
    coupling: Literal["affine", "additive"] = "affine"
    split_prior: Literal["learned", "fixed"] = Field(
        "learned", description="prior of the factored-out halves: zero-init conv, or N(0, I)"
    )
    learn_top: bool = Field(True, description="learned mean and log-std of the top prior")


def _permutation(num_channels: int, kind: str) -> Bijector:
    if kind == "reverse":
        return Reverse(num_channels, dim=1)
    if kind == "shuffle":  # drawn from the global RNG: fixed by the run's seed
        return Permutation(torch.randperm(num_channels), dim=1)
    return InvertibleConv1x1(num_channels, lu=kind == "conv_lu")


def _step(num_channels: int, cfg: GlowModel) -> list[Bijector]:
    """ActNorm → permutation → coupling on ``num_channels`` channels."""

    def net(n_in: int, n_out: int) -> GlowConditioner:
        return GlowConditioner(n_in, n_out, cfg.hidden_channels)

    elementwise = SigmoidAffine if cfg.coupling == "affine" else Additive
    # built first, so that its network draws its initial weights before the permutation does
    coupling = ImageCoupling(num_channels, elementwise, net)
    return [ActNorm(num_channels), _permutation(num_channels, cfg.permutation), coupling]


def build_glow(cfg: GlowModel, data: Dataset) -> Flow:
    C, H, W = multiscale_image_shape(data, "Glow's multi-scale model", "num_levels",
                                     cfg.num_levels, cfg.num_levels)  # fmt: skip

    def level(_: int, shape: tuple[int, int, int]) -> list[Bijector]:  # K steps per level
        return [layer for _ in range(cfg.steps_per_level) for layer in _step(shape[0], cfg)]

    transform = multi_scale((C, H, W), cfg.num_levels, level, cfg.split_prior, cfg.learn_top)
    return Flow(transform, StandardNormal(data.num_dims), UniformDequantization(data.num_levels))


build_model = with_baseline(build_glow)  # this paper's models and the diagonal-Gaussian baseline
