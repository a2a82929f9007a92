"""The typed configs, model builder and objective of ``python -m papers.glow.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.glow.train --config papers/glow/configs/cpu/<exp>.yaml [--set k=v]``
"""

from __future__ import annotations

from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from papers.glow.model import GlowModel, build_model

__all__ = [
    "CONFIG",
    "GlowConfig",
    "OBJECTIVE",
    "build_model",
]  # build_model: the entry point's builder


class GlowConfig(RunConfig):
    model: model_union(GlowModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = GlowConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)
