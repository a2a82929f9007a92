"""The typed configs, model builder and objective of ``python -m papers.iresnet.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.iresnet.train --config papers/iresnet/configs/smoke/moons_iresnet.yaml``
"""

from __future__ import annotations

from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import GlowMLPModel, RealNVPMLPModel
from papers.iresnet.model import IResNetModel, MultiScaleIResNetModel, build_model

__all__ = [
    "CONFIG",
    "IResNetConfig",
    "OBJECTIVE",
    "build_model",
]  # build_model: the entry point's builder


class IResNetConfig(RunConfig):
    model: model_union(
        IResNetModel, MultiScaleIResNetModel, GlowMLPModel, RealNVPMLPModel, DiagonalGaussianModel
    )  # type: ignore[valid-type]


CONFIG = IResNetConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)
