"""Models on vectors that more than one paper runs.

- :class:`RealNVPMLPModel`: RealNVP's affine couplings on vectors (Dinh et al. 2017,
  arXiv:1605.08803, Eq. (7), with MLP s/t networks): the RealNVP paper's 2-D toys and the
  "Real NVP (5/10)" baseline of MAF's Table 1 (Papamakarios et al. 2017, Sec. 4).
- :class:`GlowMLPModel`: Glow's step of flow on vectors (Kingma & Dhariwal 2018,
  arXiv:1807.03039, Sec. 3: ActNorm → invertible linear map (the 1×1 convolution of a vector)
  → affine coupling): the Glow rows of the i-ResNet and FFJORD toy comparisons (their 2-D
  figures set Glow beside their own model).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.data import Dataset
from common.flows.bijector import Bijector, Compose
from common.flows.coupling import Coupling, alternating_mask, half_mask
from common.flows.distributions import StandardNormal
from common.flows.elementwise import Affine, SigmoidAffine
from common.flows.flow import Flow
from common.flows.image import ActNorm, BatchNorm
from common.flows.logdet import LULinear
from common.flows.nets import MLP
from common.run.config import ConfigError, StrictModel

__all__ = ["GlowMLPModel", "RealNVPMLPModel", "build_glow_mlp", "build_realnvp_mlp"]


class RealNVPMLPModel(StrictModel):
    """RealNVP on vectors (the 2-D toys; the form MAF's tabular baselines use): affine
    couplings z₂ = x₂·exp(s) + t on alternating halves of the coordinates, s and t from one
    MLP of the other half, batch norm (as a bijector) after every coupling."""

    name: Literal["realnvp_mlp"] = "realnvp_mlp"
    num_couplings: int = Field(8, ge=2, description="affine couplings (masks alternate)")
    hidden_features: int = Field(64, gt=0, description="width of each s/t MLP layer")
    num_hidden: int = Field(2, ge=1, description="hidden layers per s/t MLP")
    batch_norm: bool = Field(True, description="BatchNorm bijector after each coupling")


def _num_features(model: str, data: Dataset) -> int:
    if data.is_image or data.num_levels:
        raise ConfigError(f"{model} is the model for continuous vectors, not {data.name!r}")
    return data.num_dims


def _coupling_mlp(hidden_features: int, num_hidden: int):
    """A coupling's network factory: MLPs whose output layer starts at zero."""

    def mlp(n_in: int, n_out: int) -> MLP:
        return MLP(n_in, n_out, hidden_features, num_hidden, zero_init=True)

    return mlp


def build_realnvp_mlp(cfg: RealNVPMLPModel, data: Dataset) -> Flow:
    d = _num_features("realnvp_mlp", data)
    mlp = _coupling_mlp(cfg.hidden_features, cfg.num_hidden)
    layers: list[Bijector] = []
    for k in range(cfg.num_couplings):
        layers.append(Coupling(alternating_mask(d, parity=k % 2), Affine, mlp))
        if cfg.batch_norm:
            layers.append(BatchNorm(d))
    return Flow(Compose(*layers), StandardNormal(d))


class GlowMLPModel(StrictModel):
    """Glow on vectors: ``num_steps`` steps of ActNorm (data-dependent init) → LU-parametrised
    invertible linear map (random rotation init, a seed per step) → affine coupling of the
    second half of the coordinates on the first, scale sigmoid(h + 2) as in Glow's code, the
    network an MLP whose output layer starts at zero (so each coupling starts as the fixed
    scaling σ(2) ≈ 0.88 of the second half)."""

    name: Literal["glow_mlp"] = "glow_mlp"
    num_steps: int = Field(8, ge=1, description="steps of flow")
    hidden_features: int = Field(64, gt=0, description="width of each coupling MLP layer")
    num_hidden: int = Field(2, ge=1, description="hidden layers per coupling MLP")


def build_glow_mlp(cfg: GlowMLPModel, data: Dataset) -> Flow:
    d = _num_features("glow_mlp", data)
    mlp = _coupling_mlp(cfg.hidden_features, cfg.num_hidden)
    layers: list[Bijector] = []
    for k in range(cfg.num_steps):
        # the linear map mixes every coordinate, so one fixed split serves every step
        layers += [ActNorm(d), LULinear(d, seed=k), Coupling(half_mask(d, 0), SigmoidAffine, mlp)]
    return Flow(Compose(*layers), StandardNormal(d))
