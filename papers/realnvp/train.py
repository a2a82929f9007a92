"""``python -m papers.realnvp.train --config papers/realnvp/configs/cpu/<exp>.yaml [--set k=v]``"""

from __future__ import annotations

from common.run.cli import run_cli
from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import RealNVPMLPModel
from papers.realnvp.model import RealNVPModel, build_model


class RealNVPConfig(RunConfig):
    model: model_union(RealNVPModel, RealNVPMLPModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = RealNVPConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)


def main(argv: list[str] | None = None) -> None:
    run_cli(RealNVPConfig, build_model, argv, paper="realnvp", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
