"""``python -m papers.iresnet.train --config papers/iresnet/configs/smoke/moons_iresnet.yaml``"""

from __future__ import annotations

from common.run.cli import run_cli
from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from common.run.vector_models import GlowMLPModel, RealNVPMLPModel
from papers.iresnet.model import IResNetModel, MultiScaleIResNetModel, build_model


class IResNetConfig(RunConfig):
    model: model_union(
        IResNetModel, MultiScaleIResNetModel, GlowMLPModel, RealNVPMLPModel, DiagonalGaussianModel
    )  # type: ignore[valid-type]


CONFIG = IResNetConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)


def main(argv: list[str] | None = None) -> None:
    run_cli(IResNetConfig, build_model, argv, paper="iresnet", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
