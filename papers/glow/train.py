"""``python -m papers.glow.train --config papers/glow/configs/cpu/<exp>.yaml [--set k=v]``"""

from __future__ import annotations

from common.run.cli import run_cli
from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from papers.glow.model import GlowModel, build_model


class GlowConfig(RunConfig):
    model: model_union(GlowModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = GlowConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)


def main(argv: list[str] | None = None) -> None:
    run_cli(GlowConfig, build_model, argv, paper="glow", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
