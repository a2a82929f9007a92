"""The typed configs, model builder and objective of ``python -m papers.nice.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.nice.train --config papers/nice/configs/cpu/digits_nice.yaml [--set k=v]``
"""

from __future__ import annotations

from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from papers.nice.model import NiceModel, build_model

__all__ = [
    "CONFIG",
    "NiceConfig",
    "OBJECTIVE",
    "build_model",
]  # build_model: the entry point's builder


class NiceConfig(RunConfig):
    model: model_union(NiceModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = NiceConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)
