"""i-ResNet: Invertible Residual Networks (Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen,
ICML 2019; arXiv:1811.00995), with Residual Flows' unbiased log-det as an option (Chen et al.
2019, arXiv:1906.02735).

:class:`IResNetModel` on vectors: ``num_blocks`` times ActNorm → residual block x + g(x), g an
MLP of spectrally normalised linear maps (coefficient c < 1) and 1-Lipschitz activations
(LipSwish or ELU); the log-det of each block by the truncated series (i-ResNet), the Russian
roulette (Residual Flows) or exactly. Everything used here lives in ``common/``
(:mod:`common.flows.residual`); this file only assembles the architecture. The multi-scale
image model is not written yet.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.distributions import StandardNormal
from common.flows.flow import Flow
from common.flows.image import ActNorm
from common.flows.residual import LipSwish, ResidualBlock, SpectralNormLinear
from common.run.baselines import with_baseline
from common.run.config import ConfigError, StrictModel

__all__ = ["IResNetModel", "build_iresnet", "build_model"]


class IResNetModel(StrictModel):
    """i-ResNet on vectors (module docstring). Defaults: the paper's toy setup at a CPU's size
    (its 2-D figure uses 100 blocks of 3 layers × 128 units; i-ResNet, Appendix)."""

    name: Literal["iresnet"] = "iresnet"
    num_blocks: int = Field(6, ge=1, description="residual blocks (each after an ActNorm)")
    hidden_features: int = Field(64, gt=0, description="units per hidden layer of g")
    num_hidden: int = Field(2, ge=1, description="hidden layers of g")
    coeff: float = Field(0.9, gt=0, lt=1, description="spectral-norm bound c < 1 per layer")
    n_power_iterations: int = Field(1, ge=0, description="power iterations per training step")
    activation: Literal["lipswish", "elu"] = "lipswish"
    logdet: Literal["series", "unbiased", "exact"] = Field(
        "series", description="each block's log-det: i-ResNet's truncated series (biased), "
        "Residual Flows' Russian roulette (unbiased), or exact (small D)",
    )  # fmt: skip
    n_terms: int = Field(5, ge=1, description="series: terms of the power series")
    n_probes: int = Field(1, ge=1, description="Hutchinson probes per trace")
    actnorm: bool = Field(True, description="ActNorm before each block")


def _g(d: int, cfg: IResNetModel, seed: int) -> nn.Sequential:
    widths = [d] + [cfg.hidden_features] * cfg.num_hidden + [d]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i:
            layers.append(LipSwish() if cfg.activation == "lipswish" else nn.ELU())
        layers.append(SpectralNormLinear(n_in, n_out, cfg.coeff, cfg.n_power_iterations,
                                         seed=seed * 100 + i))  # fmt: skip
    return nn.Sequential(*layers)


def build_iresnet(cfg: IResNetModel, data: Dataset) -> Flow:
    if data.is_image or data.num_levels:
        raise ConfigError(f"the i-ResNet model here is for continuous vectors; {data.name!r} "
                          "needs the multi-scale image model (not written yet)")  # fmt: skip
    d = data.num_dims
    layers: list[Bijector] = []
    for k in range(cfg.num_blocks):
        if cfg.actnorm:
            layers.append(ActNorm(d))
        layers.append(ResidualBlock(_g(d, cfg, k), logdet=cfg.logdet, n_terms=cfg.n_terms,
                                    n_probes=cfg.n_probes))  # fmt: skip
    return Flow(Compose(*layers), StandardNormal(d))


build_model = with_baseline(build_iresnet)
