"""The typed configs, model builder and objective of ``python -m papers.maf_iaf.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.maf_iaf.train --config papers/maf_iaf/configs/cpu/<exp>.yaml [--set k=v]``

MADE, MAF and Real NVP experiments are trained by maximum likelihood; IAF's VAEs
(``model.name: vae``) by the ELBO (:class:`common.run.objectives.VariationalAutoencoder`).
"""

from __future__ import annotations

from common.run.config import (
    ConfigByModel,
    DiagonalGaussianModel,
    RunConfig,
    VAERunConfig,
    model_union,
)
from common.run.objectives import MaximumLikelihood, VariationalAutoencoder
from common.run.vector_models import RealNVPMLPModel
from papers.maf_iaf.model import MAFModel, build_model
from papers.maf_iaf.vae import VAEModel

__all__ = [
    "CONFIG",
    "IAFConfig",
    "MAFConfig",
    "OBJECTIVE",
    "build_model",
]  # build_model: the entry point's builder


class MAFConfig(RunConfig):
    model: model_union(MAFModel, RealNVPMLPModel, DiagonalGaussianModel)  # type: ignore[valid-type]


class IAFConfig(VAERunConfig):
    model: VAEModel


CONFIG = ConfigByModel(MAFConfig, vae=IAFConfig)  # this paper's config classes (for the tests)


def objective(cfg, build):
    if isinstance(cfg, IAFConfig):
        return VariationalAutoencoder(cfg, build)
    return MaximumLikelihood(cfg, build)


OBJECTIVE = objective  # how its runs train (common.run.load rebuilds with it)
