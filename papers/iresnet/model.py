"""i-ResNet: Invertible Residual Networks (Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen,
ICML 2019; arXiv:1811.00995), with Residual Flows' unbiased log-det as an option (Chen et al.
2019, arXiv:1906.02735).

Two architectures, both stacks of ActNorm → residual block x + g(x) with Lip(g) < 1 (g's maps
spectrally normalised to c, 1-Lipschitz activations), each block's log-det by the truncated
series (i-ResNet), the Russian roulette (Residual Flows) or exactly:

- :class:`IResNetModel`, vectors (the 2-D toys): g an MLP;
- :class:`MultiScaleIResNetModel`, images (the paper's MNIST and CIFAR-10 density models):
  uniform dequantization, then L levels of squeeze → blocks → split-off half
  (:func:`common.flows.image.multi_scale`; the authors' strides 1, 2, 2 after their initial
  squeeze), g the bottleneck conv 3×3 → 1×1 → 3×3, and a learned diagonal Gaussian prior
  over every latent dimension (the authors' ``learn_prior``).

Everything used here lives in ``common/`` (:mod:`common.flows.residual`,
:mod:`common.flows.image`); this file only assembles the architectures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.dequantize import UniformDequantization
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.flows.image import ActNorm, multi_scale
from common.flows.layers import ElementwiseAffine
from common.flows.residual import ResidualBlock, lipschitz_conv_net, lipschitz_mlp
from common.run.baselines import multiscale_image_shape, with_baseline
from common.run.config import ConfigError, StrictModel
from common.run.vector_models import (
    GlowMLPModel,
    RealNVPMLPModel,
    build_glow_mlp,
    build_realnvp_mlp,
)

__all__ = [
    "IResNetModel",
    "MultiScaleIResNetModel",
    "build_iresnet",
    "build_model",
    "build_multiscale_iresnet",
]


class _Residual(StrictModel):
    """What every i-ResNet block shares: the Lipschitz bound and each block's log-det."""

    coeff: float = Field(0.9, gt=0, lt=1, description="spectral-norm bound c < 1 per layer")
    n_power_iterations: int = Field(1, ge=0, description="power iterations per training step")
    logdet: Literal["series", "unbiased", "exact"] = Field(
        "series", description="each block's log-det: i-ResNet's truncated series (biased), "
        "Residual Flows' Russian roulette (unbiased), or exact (small D)",
    )  # fmt: skip
    n_terms: int = Field(5, ge=1, description="series: terms of the power series")
    n_probes: int = Field(1, ge=1, description="Hutchinson probes per trace")
    actnorm: bool = Field(True, description="ActNorm before each block")

    def block(self, num_channels: int, g) -> list[Bijector]:
        """[ActNorm →] x + g(x), on ``num_channels`` channels (features, for vectors)."""
        residual = ResidualBlock(g, logdet=self.logdet, n_terms=self.n_terms,
                                 n_probes=self.n_probes)  # fmt: skip
        return [ActNorm(num_channels), residual] if self.actnorm else [residual]


class IResNetModel(_Residual):
    """i-ResNet on vectors (module docstring). Defaults: the paper's toy setup at a CPU's size
    (its 2-D figure uses 100 blocks of 3 layers × 128 units; i-ResNet, Appendix)."""

    name: Literal["iresnet"] = "iresnet"
    num_blocks: int = Field(6, ge=1, description="residual blocks (each after an ActNorm)")
    hidden_features: int = Field(64, gt=0, description="units per hidden layer of g")
    num_hidden: int = Field(2, ge=1, description="hidden layers of g")
    activation: Literal["lipswish", "elu"] = "lipswish"


class MultiScaleIResNetModel(_Residual):
    """i-ResNet's multi-scale density model (module docstring). Defaults: the paper's CIFAR-10
    model (Sec. 5: 3 scales × 16 blocks, 512 channels, c = 0.9, ELU, 5 terms, 1 probe)."""

    name: Literal["iresnet_multiscale"] = "iresnet_multiscale"
    num_levels: int = Field(3, ge=1, description="levels (each starts with a squeeze)")
    blocks_per_level: int = Field(16, ge=1, description="residual blocks per level")
    hidden_channels: int = Field(512, gt=0, description="channels inside g")
    activation: Literal["lipswish", "elu"] = "elu"
    n_power_iterations: int = Field(5, ge=0, description="power iterations per training step")
    learn_prior: bool = Field(True, description="learned mean and std of every latent dim")


def build_iresnet(cfg: IResNetModel, data: Dataset) -> Flow:
    if data.is_image or data.num_levels:
        raise ConfigError(f"model 'iresnet' is for continuous vectors; {data.name!r} needs "
                          "'iresnet_multiscale'")  # fmt: skip
    d = data.num_dims
    layers: list[Bijector] = []
    for k in range(cfg.num_blocks):
        g = lipschitz_mlp(d, cfg.hidden_features, cfg.num_hidden, cfg.coeff,
                          cfg.n_power_iterations, cfg.activation, seed=k)  # fmt: skip
        layers += cfg.block(d, g)
    return Flow(Compose(*layers), StandardNormal(d))


def build_multiscale_iresnet(cfg: MultiScaleIResNetModel, data: Dataset) -> Flow:
    C, H, W = multiscale_image_shape(data, "model 'iresnet_multiscale'", "num_levels",
                                     cfg.num_levels, cfg.num_levels)  # fmt: skip

    def level(k: int, shape: tuple[int, int, int]) -> list[Bijector]:
        layers: list[Bijector] = []
        for b in range(cfg.blocks_per_level):
            g = lipschitz_conv_net(shape, cfg.hidden_channels, cfg.coeff, cfg.n_power_iterations,
                                   cfg.activation, input_activation=k + b > 0,
                                   seed=k * cfg.blocks_per_level + b)  # fmt: skip
            layers += cfg.block(shape[0], g)
        return layers

    transform = multi_scale((C, H, W), cfg.num_levels, level, split_prior="fixed")
    if cfg.learn_prior:  # N(μ, diag σ²) over every latent dimension, as a bijection
        transform = Compose(transform, ElementwiseAffine(data.num_dims))
    return Flow(transform, StandardNormal(data.num_dims), UniformDequantization(data.num_levels))


build_model = with_baseline(
    {  # these models and the diagonal-Gaussian baseline
        IResNetModel: build_iresnet,
        MultiScaleIResNetModel: build_multiscale_iresnet,
        GlowMLPModel: build_glow_mlp,  # the toy comparison's coupling flows
        RealNVPMLPModel: build_realnvp_mlp,
    }
)
