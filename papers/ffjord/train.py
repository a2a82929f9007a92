"""``python -m papers.ffjord.train --config papers/ffjord/configs/smoke/moons_ffjord.yaml``"""

from __future__ import annotations

from common.run.cli import run_cli
from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import GlowMLPModel, RealNVPMLPModel
from papers.ffjord.model import FFJORDModel, FFJORDMultiscaleModel, build_model


class FFJORDConfig(RunConfig):
    model: model_union(
        FFJORDModel, FFJORDMultiscaleModel, GlowMLPModel, RealNVPMLPModel, DiagonalGaussianModel
    )  # type: ignore[valid-type]


CONFIG = FFJORDConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)


def main(argv: list[str] | None = None) -> None:
    run_cli(FFJORDConfig, build_model, argv, paper="ffjord", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
