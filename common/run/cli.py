"""The entry point every paper shares: ``python -m papers.<paper>.train --config FILE [--set k=v]``.

It parses, validates the config before any compute, and runs the one training loop
(:func:`common.run.loop.train`) with the paper's objective: maximum likelihood by default, or
e.g. reverse KL to a target for the tori and spheres paper. Known failures (bad config,
missing data, NaNs) end with a one-paragraph message and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.data import ChecksumError, DatasetError, DatasetNotFoundError
from common.flows.bijector import InputOutsideDomainError
from common.flows.flow import Flow
from common.run.config import ConfigByModel, ConfigError, RunBase, load_config
from common.run.distributed import Ranks
from common.run.entry import build_parser
from common.run.loop import CheckpointError, NonFiniteLossError, StoppedAt, request_stop, train
from common.run.objectives import MaximumLikelihood, Objective
from common.run.summary import RunSummary
from common.run.tracking import NullTracker, Tracker, TrackingError, default_tracking_uri

# Failures with a known cause: one paragraph on stderr and exit status 1 (2 for a config
# error), instead of a traceback. Anything else is a bug and keeps its traceback.
KNOWN_FAILURES = (
    ConfigError, DatasetNotFoundError, ChecksumError, DatasetError, NonFiniteLossError,
    InputOutsideDomainError, CheckpointError, TrackingError,
)  # fmt: skip

__all__ = ["run_cli"]


def run_cli(
    config_cls: type[RunBase] | ConfigByModel,
    build_model: Callable[[Any, Any], Flow],
    argv: list[str] | None = None,
    paper: str = "<paper>",
    objective: Callable[[Any, Callable], Objective] = MaximumLikelihood,
) -> RunSummary | StoppedAt:
    """Parse ``argv``, load and validate the config, and train ``objective(cfg, build_model)``
    (a class such as :class:`~common.run.objectives.MaximumLikelihood`, a
    ``functools.partial`` of one, or a function choosing one by the config)."""
    args = build_parser(paper).parse_args(argv)
    # SIGTERM (what Snakemake, Slurm and `kill` send) ends the current step, then unwinds like
    # Ctrl-C: the MLflow run is marked KILLED instead of being left RUNNING.
    previous = signal.signal(signal.SIGTERM, request_stop)

    try:
        cfg = load_config(config_cls, args.config, args.overrides)
        workdir = args.workdir or Path("runs/manual", cfg.paper, cfg.experiment, f"seed{cfg.seed}")
        tracker = (  # under torchrun, rank 0 alone opens the store
            NullTracker()
            if args.no_tracking or not Ranks.from_env().is_main
            else Tracker(args.tracking_uri or default_tracking_uri(), cfg.paper)
        )
        result = train(
            cfg, objective(cfg, build_model), workdir, tracker, args.stop_after,
            progress=not args.no_progress, continue_with_changes=args.continue_with_changes,
        )  # fmt: skip
        if isinstance(result, StoppedAt) and Ranks.from_env().is_main:
            print(f"stopped after step {result.step} with a checkpoint in {workdir}: run the "
                  "same command without --stop-after (or with a larger one) to resume",
                  file=sys.stderr)  # fmt: skip
        return result
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    except KNOWN_FAILURES as exc:
        if isinstance(exc, InputOutsideDomainError):
            exc = f"{exc} (the data lies outside the model's domain: check the dataset)"
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2 if isinstance(exc, ConfigError) else 1) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
