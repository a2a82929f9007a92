"""Paper entry points that answer ``--help`` and argument errors before importing torch.

``python -m papers.<paper>.train`` runs ``papers/<paper>/train.py``, which is two lines::

    main, __getattr__ = entry_point("nice")
    if __name__ == "__main__": main()

The command line is parsed here with argparse alone (a tenth of a second); only then are the
paper's typed configs, model builder and objective imported from ``papers/<paper>/config.py``
(``CONFIG``, ``build_model``, ``OBJECTIVE``: torch, pydantic and the flow library, seconds) and
handed to :func:`common.run.cli.run_cli`. ``papers.<paper>.train.CONFIG`` and every other name
of the config module still resolve, through the module's ``__getattr__`` (PEP 562), so
``from papers.nice.train import NiceConfig`` keeps working.

This module must stay free of heavy imports: that is its reason to exist.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "entry_point"]


def build_parser(paper: str) -> argparse.ArgumentParser:
    """The command line every paper's entry point shares."""
    parser = argparse.ArgumentParser(
        prog=f"python -m papers.{paper}.train",
        description=f"Train and evaluate one {paper} experiment.",
    )
    # fmt: off
    add = parser.add_argument
    add("--config", required=True, type=Path, help="experiment YAML file")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.optim.lr=3e-4 (repeatable)")
    add("--workdir", type=Path,
        help="run outputs (default: runs/manual/<paper>/<experiment>/seed<k>)")
    add("--tracking-uri", default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///<repo>/runs/mlflow.db)")
    add("--no-tracking", action="store_true", help="log nothing to MLflow")
    add("--stop-after", type=int, default=None,
        help="checkpoint and exit after N steps (resume by running the same command again)")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--continue-with-changes", action="store_true",
        help="continue from the workdir's last checkpoint although the config's optimisation "
             "settings changed (learning rate, clipping, schedule, budget, patience); the "
             "change is recorded in the run")
    # fmt: on
    return parser


def entry_point(paper: str) -> tuple[Callable[..., Any], Callable[[str], Any]]:
    """``(main, __getattr__)`` for ``papers/<paper>/train.py``: ``main(argv)`` parses, then
    imports ``papers.<paper>.config`` and trains; ``__getattr__`` forwards to that module."""
    module = f"papers.{paper}.config"

    def main(argv: list[str] | None = None):
        build_parser(paper).parse_args(argv)  # --help and bad arguments end here, fast
        from common.run.cli import run_cli

        config = importlib.import_module(module)
        return run_cli(config.CONFIG, config.build_model, argv, paper=paper,
                       objective=config.OBJECTIVE)  # fmt: skip

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module-level hook of PEP 562)
        if name.startswith("__"):  # dunder lookups (pickle, doctest) are not config names
            raise AttributeError(name)
        return getattr(importlib.import_module(module), name)

    return main, __getattr__
