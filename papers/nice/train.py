"""``python -m papers.nice.train --config papers/nice/configs/cpu/digits_nice.yaml [--set k=v]``"""

from __future__ import annotations

from common.run.cli import run_cli
from common.run.config import DiagonalGaussianModel, RunConfig, model_union
from common.run.objectives import MaximumLikelihood
from papers.nice.model import NiceModel, build_model


class NiceConfig(RunConfig):
    model: model_union(NiceModel, DiagonalGaussianModel)  # type: ignore[valid-type]


CONFIG = NiceConfig  # the config class of this paper's experiments (found by the tests)
OBJECTIVE = MaximumLikelihood  # how its runs train (common.run.load rebuilds with it)


def main(argv: list[str] | None = None) -> None:
    run_cli(NiceConfig, build_model, argv, paper="nice", objective=OBJECTIVE)


if __name__ == "__main__":
    main()
