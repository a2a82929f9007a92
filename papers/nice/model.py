"""NICE: Non-linear Independent Components Estimation (Dinh, Krueger & Bengio, ICLR 2015
workshop; arXiv:1410.8516).

    h = f(x) = S · (g_K ∘ … ∘ g_1)(x),   log p(x) = Σ_d log p_H(h_d) + Σ_d s_d   (Sec. 3.3)

Each g_k is an additive coupling layer (Eq. (4)) that leaves one half of the dimensions
unchanged and adds to the other half an MLP of the first; the partition alternates between
odd and even indices (Sec. 5.1). Additive couplings have unit Jacobian determinant, so the
diagonal scaling S = diag(exp s) is the model's only volume change. The prior p_H is the
standard logistic (Sec. 3.4).

Everything used here lives in ``common/``: NICE is a preset over the shared core.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.data import Dataset
from common.flows.bijector import Compose
from common.flows.coupling import Coupling, alternating_mask
from common.flows.distributions import StandardLogistic, StandardNormal
from common.flows.elementwise import Additive
from common.flows.flow import Flow
from common.flows.layers import ElementwiseAffine
from common.flows.nets import MLP
from common.run.baselines import data_preprocessing, with_baseline
from common.run.config import StrictModel

__all__ = ["NiceModel", "build_model", "build_nice"]


class NiceModel(StrictModel):
    """NICE's hyper-parameters; the defaults are the paper's MNIST architecture (Sec. 5.1)."""

    name: Literal["nice"] = "nice"
    num_couplings: int = Field(4, ge=2, description="additive coupling layers")
    hidden_features: int = Field(1000, gt=0, description="width of each coupling MLP layer")
    num_hidden: int = Field(5, ge=1, description="hidden layers per coupling MLP")
    activation: Literal["relu", "tanh", "elu", "gelu"] = "relu"
    prior: Literal["logistic", "gaussian"] = "logistic"


def build_nice(cfg: NiceModel, data: Dataset) -> Flow:
    dequant, layers = data_preprocessing(data)  # dequantize to [0, 1), flatten to (B, D)
    d = data.num_dims

    def mlp(n_in: int, n_out: int) -> MLP:
        return MLP(n_in, n_out, cfg.hidden_features, cfg.num_hidden, cfg.activation)

    for k in range(cfg.num_couplings):
        mask = alternating_mask(d, parity=k % 2)  # unchanged half: even, then odd, ...
        layers.append(Coupling(mask, Additive, mlp))
    layers.append(ElementwiseAffine(d, shift=False))  # S = diag(exp s), Sec. 3.3
    base = StandardLogistic(d) if cfg.prior == "logistic" else StandardNormal(d)
    return Flow(Compose(*layers), base, dequant)


build_model = with_baseline(build_nice)  # this paper's models and the diagonal-Gaussian baseline
