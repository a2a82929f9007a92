"""The typed summary every run writes (``metrics.json``) and every report reads.

One record per run: who it is (paper, experiment, seed, scale), what it ran (model, data and
its hash, parameter count, code commit, device, threads, training budget), how it ended
(steps, best step, early stop, wall time), its final metrics, and its figures with what each
one shows. Reports read these fields instead of parsing figure names or re-reading config
values from MLflow params; MLflow keeps the per-step histories and the artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from common.files import write_atomic
from common.run.config import StrictModel

__all__ = [
    "Budget",
    "Continuation",
    "FigureRecord",
    "RunSummary",
    "SummaryError",
]


class SummaryError(ValueError):
    """A ``metrics.json`` that is missing, unreadable or not a run summary."""


class Budget(StrictModel):
    """The training budget of a run, as configured."""

    max_steps: int
    batch_size: int
    eval_every: int
    optimizer: str
    lr: float
    patience: int | None = None


class FigureRecord(StrictModel):
    """A figure the run saved: ``path`` relative to the run's folder (also its MLflow
    artifact path); ``temperature`` for sample grids drawn at a base temperature.
    ``density_grid``: a 2-D model's density on a grid (``.npz``, see
    :func:`common.run.plotting.density_grid_2d`), for side-by-side figures in reports."""

    kind: Literal["curves", "samples", "density", "density_grid"]
    path: str
    temperature: float | None = None


class Continuation(StrictModel):
    """A run continued from its checkpoint at ``step`` with changed settings
    (``--continue-with-changes``): each changed config key with its [old, new] values."""

    step: int
    changes: dict[str, list[Any]]


class RunSummary(StrictModel):
    """What ``metrics.json`` holds (see the module docstring)."""

    run_id: str | None
    paper: str
    experiment: str
    scale: str
    seed: int
    dataset: str
    model: str
    num_params: int
    data_md5: str
    git_commit: str
    git_dirty: bool
    device: str
    threads: int  # per process
    processes: int = 1  # data-parallel processes (torchrun) of the call that finished the run
    budget: Budget
    steps: int
    best_step: int
    stopped_early: bool
    wall_time_s: float
    metrics: dict[str, float]
    figures: list[FigureRecord] = []
    continuations: list[Continuation] = []

    def write(self, path: str | Path) -> Path:
        return write_atomic(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SummaryError(f"{path} does not exist: has the run finished?") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            raise SummaryError(
                f"{path} is not a run summary written by this version of the trainer ({exc}). "
                "Re-run the experiment to regenerate it."
            ) from None

    def figure(self, kind: str, temperature: float | None = None) -> FigureRecord | None:
        return next(
            (f for f in self.figures if f.kind == kind and f.temperature == temperature), None
        )
