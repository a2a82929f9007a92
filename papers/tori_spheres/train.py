"""``python -m papers.tori_spheres.train --config papers/tori_spheres/configs/cpu/<exp>.yaml``

Fits one flow to one analytic target by reverse KL (:class:`common.run.objectives.ReverseKL`)
and evaluates it.
"""

from __future__ import annotations

from functools import partial

from common.run.cli import run_cli
from common.run.config import StrictModel, VariationalRunConfig, model_union
from common.run.objectives import ReverseKL
from papers.tori_spheres.model import (
    ExpMapModel,
    RecursiveSphereModel,
    TorusFlowModel,
    build_model,
)
from papers.tori_spheres.targets import TargetName, make_target


class TargetConfig(StrictModel):
    name: TargetName


class ToriSpheresConfig(VariationalRunConfig):
    target: TargetConfig
    model: model_union(TorusFlowModel, RecursiveSphereModel, ExpMapModel)  # type: ignore[valid-type]


CONFIG = ToriSpheresConfig  # the config class of this paper's experiments (found by the tests)


OBJECTIVE = partial(ReverseKL, build_target=make_target)  # common.run.load rebuilds with it


def main(argv: list[str] | None = None) -> None:
    run_cli(ToriSpheresConfig, build_model, argv, paper="tori_spheres", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
