"""The typed configs, model builder and objective of ``python -m papers.realnvp.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.realnvp.train --config papers/realnvp/configs/cpu/<exp>.yaml [--set k=v]``
"""

from __future__ import annotations

from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import RealNVPMLPModel
from papers.realnvp.model import RealNVPModel, build_model

__all__ = [
    "CONFIG",
    "OBJECTIVE",
    "RealNVPConfig",
    "build_model",
]  # build_model: the entry point's builder


class RealNVPConfig(RunConfig):
    model: model_union(RealNVPModel, RealNVPMLPModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = RealNVPConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)
