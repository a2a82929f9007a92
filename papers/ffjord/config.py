"""The typed configs, model builder and objective of ``python -m papers.ffjord.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.ffjord.train --config papers/ffjord/configs/smoke/moons_ffjord.yaml``
"""

from __future__ import annotations

from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import GlowMLPModel, RealNVPMLPModel
from papers.ffjord.model import FFJORDModel, FFJORDMultiscaleModel, build_model

__all__ = [
    "CONFIG",
    "FFJORDConfig",
    "OBJECTIVE",
    "build_model",
]  # build_model: the entry point's builder


class FFJORDConfig(RunConfig):
    model: model_union(
        FFJORDModel, FFJORDMultiscaleModel, GlowMLPModel, RealNVPMLPModel, DiagonalGaussianModel
    )  # type: ignore[valid-type]


CONFIG = FFJORDConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)
