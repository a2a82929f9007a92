"""RealNVP: Density estimation using Real NVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017;
arXiv:1605.08803).

Affine coupling layers (Eq. (7)) with checkerboard and channel-wise masks (Sec. 3.4), in a
multi-scale architecture (Sec. 3.6): at each scale but the last

    3 checkerboard couplings → squeeze → 3 channel couplings → factor out half the channels,

and 4 checkerboard couplings at the last scale. The factored-out halves are scored under a
fixed N(0, I) prior (``Split(prior='fixed')``). s and t come from one ResNet with weight
normalisation (Sec. 4.1); s = a_c · tanh(·). Batch normalisation, as a bijector with its
log-det, follows every coupling (Sec. 3.7). Images enter in logit space,
y = logit(α + (1 − 2α)·x) with α = 0.05 (the authors' code; the paper's text writes
α + (1 − α)x), and that map's log-det is part of the likelihood, hence of bits/dim.

On vectors (the 2-D toys) the same affine coupling runs on alternating halves of the
coordinates with MLP s/t networks (``RealNVPMLPModel``, in ``common.run.vector_models``: MAF
runs it too, as its Table 1 baseline).

Everything used here lives in ``common/``; this file only assembles the architecture.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.coupling import ImageCoupling
from common.flows.dequantize import Logit, UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.elementwise import LearnedBoundAffine
from common.flows.flow import Flow
from common.flows.image import BatchNorm, Split, Squeeze
from common.flows.layers import Reshape
from common.flows.nets import ResNetConditioner
from common.run.baselines import multiscale_image_shape, with_baseline
from common.run.config import StrictModel
from common.run.vector_models import RealNVPMLPModel, build_realnvp_mlp

__all__ = ["RealNVPModel", "build_model", "build_realnvp"]


class RealNVPModel(StrictModel):
    """RealNVP's hyper-parameters; the defaults are the paper's CIFAR-10 model (Sec. 4.1)."""

    name: Literal["realnvp"] = "realnvp"
    num_scales: int = Field(2, ge=1, description="scales; all but the last end in a split")
    num_blocks: int = Field(8, ge=1, description="residual blocks per s/t ResNet")
    hidden_channels: int = Field(64, gt=0, description="feature maps of the s/t ResNets")
    double_per_scale: bool = Field(
        False, description="double the ResNets' feature maps at each coarser scale, as the "
        "authors' code does (the paper does not say)",
    )  # fmt: skip
    batch_norm: bool = Field(True, description="BatchNorm bijector after each coupling and "
                             "batch norm inside the ResNets")  # fmt: skip
    scale_l2: float = Field(5e-5, ge=0, description="L2 on the weight-norm scales (Sec. 4.1)")
    logit_alpha: float = Field(0.05, gt=0, lt=0.5, description="logit(α + (1 − 2α)x); α > 0: "
                               "a dequantized float32 pixel can round to exactly 1")  # fmt: skip


def _coupling(
    num_channels: int, mask: str, parity: int, cfg: RealNVPModel, scale: int
) -> list[Bijector]:
    width = cfg.hidden_channels * (2**scale if cfg.double_per_scale else 1)

    def resnet(n_in: int, n_out: int) -> ResNetConditioner:
        return ResNetConditioner(n_in, n_out, width, cfg.num_blocks, cfg.batch_norm,
                                 cfg.scale_l2)  # fmt: skip

    layers: list[Bijector] = [
        ImageCoupling(num_channels, LearnedBoundAffine, resnet, mask, parity)  # s = a·tanh(ŝ)
    ]
    if cfg.batch_norm:
        layers.append(BatchNorm(num_channels))
    return layers


def _scale(shape: tuple[int, int, int], scale: int, cfg: RealNVPModel) -> Bijector:
    """The flow from scale ``scale`` on, for inputs of ``shape`` = (C, H, W); ends flat."""
    C, H, W = shape
    layers: list[Bijector] = []
    if scale == cfg.num_scales - 1:  # the last scale: 4 checkerboard couplings
        for k in range(4):
            layers += _coupling(C, "checkerboard", k % 2, cfg, scale)
        return Compose(*layers, Reshape(shape, (C * H * W,)))
    for k in range(3):
        layers += _coupling(C, "checkerboard", k % 2, cfg, scale)
    layers.append(Squeeze())  # (C, H, W) → (4C, H/2, W/2)
    for k in range(3):
        layers += _coupling(4 * C, "channel", k % 2, cfg, scale)
    squeezed = (4 * C, H // 2, W // 2)
    inner = _scale((2 * C, H // 2, W // 2), scale + 1, cfg)  # half the channels go on
    return Compose(*layers, Split(inner, squeezed, prior="fixed"))


def build_realnvp(cfg: RealNVPModel, data: Dataset) -> Flow:
    C, H, W = multiscale_image_shape(data, "RealNVP's multi-scale model", "num_scales",
                                     cfg.num_scales, cfg.num_scales - 1)  # fmt: skip
    transform = Compose(Logit(cfg.logit_alpha), _scale((C, H, W), 0, cfg))
    return Flow(transform, StandardNormal(data.num_dims), UniformDequantization(data.num_levels))


def _build(cfg: RealNVPModel | RealNVPMLPModel, data: Dataset) -> Flow:
    if isinstance(cfg, RealNVPMLPModel):
        return build_realnvp_mlp(cfg, data)
    return build_realnvp(cfg, data)


build_model = with_baseline(_build)  # this paper's models and the diagonal-Gaussian baseline
