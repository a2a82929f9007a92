"""The typed configs, model builder and objective of ``python -m papers.tori_spheres.train``
(:mod:`common.run.entry` imports this module once the command line has parsed).

``python -m papers.tori_spheres.train --config papers/tori_spheres/configs/cpu/<exp>.yaml``

Fits one flow to one analytic target by reverse KL (:class:`common.run.objectives.ReverseKL`)
and evaluates it.
"""

from __future__ import annotations

from functools import partial

from common.run.config import StrictModel, VariationalRunConfig, model_union
from common.run.objectives import ReverseKL
from papers.tori_spheres.model import (
    ExpMapModel,
    RecursiveSphereModel,
    TorusFlowModel,
    build_model,
)
from papers.tori_spheres.targets import TargetName, make_target

__all__ = [
    "CONFIG",
    "OBJECTIVE",
    "TargetConfig",
    "ToriSpheresConfig",
    "build_model",
]  # build_model: the entry point's builder


class TargetConfig(StrictModel):
    name: TargetName


class ToriSpheresConfig(VariationalRunConfig):
    target: TargetConfig
    model: model_union(TorusFlowModel, RecursiveSphereModel, ExpMapModel)  # type: ignore[valid-type]


CONFIG = ToriSpheresConfig  # the config class of this paper's experiments (found by the tests)


OBJECTIVE = partial(ReverseKL, build_target=make_target)  # common.run.load rebuilds with it
