"""IAF: Improved Variational Inference with Inverse Autoregressive Flow (Kingma, Salimans,
Jozefowicz, Chen, Sutskever & Welling, NeurIPS 2016; arXiv:1606.04934).

A VAE (:class:`common.flows.vae.VAE`) whose posterior is a diagonal Gaussian followed by
``depth`` IAF steps (:class:`common.flows.autoregressive.InverseAutoregressive`), each a MADE
conditioned on the encoder's context h, with the order reversed between steps (IAF,
Sec. 4 and Algorithm 1) and, by default, the gated update z ← σ ⊙ z + (1 − σ) ⊙ m. Depth 0
is the diagonal-Gaussian posterior the paper compares against (Table 1).

Encoder and decoder are MLPs (the paper's are ResNets for 28×28 MNIST; at 8×8 an MLP does).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from common.data import Dataset
from common.flows.autoregressive import GatedAffine, InverseAutoregressive
from common.flows.bijector import Compose
from common.flows.elementwise import Affine
from common.flows.nets import MLP
from common.flows.vae import VAE
from common.run.config import StrictModel

__all__ = ["VAEModel", "build_vae"]


class VAEModel(StrictModel):
    """An IAF-posterior VAE on binarised images (module docstring)."""

    name: Literal["vae"] = "vae"
    latent_features: int = Field(16, gt=0, description="L, the latent dimension")
    hidden_features: int = Field(256, gt=0, description="units per hidden layer, encoder "
                                 "and decoder")  # fmt: skip
    num_hidden: int = Field(2, ge=1, description="hidden layers of the encoder and decoder")
    depth: int = Field(0, ge=0, description="IAF steps in the posterior; 0: diagonal Gaussian")
    context_features: int = Field(16, ge=0, description="C, the encoder's context h for IAF")
    iaf_hidden_features: int = Field(128, gt=0, description="units per hidden layer of each "
                                     "IAF step's MADE")  # fmt: skip
    iaf_num_hidden: int = Field(2, ge=1, description="hidden layers of each IAF MADE")
    update: Literal["gated", "affine"] = Field(
        "gated", description="gated: z ← σ ⊙ z + (1 − σ) ⊙ m (IAF, Algorithm 1); affine: "
        "z ← z·exp(s) + m",
    )  # fmt: skip
    activation: Literal["relu", "elu", "tanh"] = "elu"


def build_vae(cfg: VAEModel, data: Dataset) -> VAE:
    D, L = data.num_dims, cfg.latent_features
    C = cfg.context_features if cfg.depth else 0
    encoder = MLP(D, 2 * L + C, cfg.hidden_features, cfg.num_hidden, cfg.activation)
    decoder = MLP(L, D, cfg.hidden_features, cfg.num_hidden, cfg.activation)
    posterior = None
    if cfg.depth:
        update = GatedAffine if cfg.update == "gated" else partial(Affine, scale_bound=None)
        steps = []
        for k in range(cfg.depth):
            order = torch.arange(L) if k % 2 == 0 else torch.arange(L).flip(0)
            steps.append(InverseAutoregressive(
                L, update, cfg.iaf_hidden_features, num_hidden=cfg.iaf_num_hidden,
                order=order, context_features=C, activation=cfg.activation, seed=k,
            ))  # fmt: skip
        posterior = Compose(*steps)
    return VAE(_Flat(encoder), decoder, posterior, L, C)


class _Flat(nn.Module):
    """Flattens ``(B, ...)`` images before the encoder."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
