"""The runs a report is made of: each run's typed summary (``metrics.json``), grouped by
experiment, with the MLflow store for what a summary does not hold (per-step histories)."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from common.run.summary import RunSummary

__all__ = ["Group", "Run", "fmt", "load_groups", "read_benchmark", "table"]

Stat = tuple[float, float, int]  # mean, sample std, number of seeds


def read_benchmark(folder: Path) -> dict[str, float] | None:
    """The job's ``benchmark.tsv`` that Snakemake's ``benchmark:`` directive wrote beside the
    run (None for a run trained outside the pipeline): ``s`` (wall seconds of the whole job:
    start-up, training, test evaluation), ``max_rss`` (peak resident memory, MB) and
    ``cpu_time`` (seconds); NaN where Snakemake could not measure (it writes ``NA``)."""
    path = Path(folder) / "benchmark.tsv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return None

    def number(key: str) -> float:
        try:
            return float(rows[-1][key])
        except (KeyError, TypeError, ValueError):
            return math.nan

    return {key: number(key) for key in ("s", "max_rss", "cpu_time")}


@dataclass
class Run:
    """One run: its summary, the folder holding it (figures are relative to it) and the
    pipeline job's benchmark (:func:`read_benchmark`)."""

    summary: RunSummary
    folder: Path
    benchmark: dict[str, float] | None = None


@dataclass
class Group:
    """All seeds of one experiment, sorted by seed."""

    experiment: str
    dataset: str
    model: str
    runs: list[Run] = field(default_factory=list)

    @property
    def first(self) -> RunSummary:
        return self.runs[0].summary

    def values(self, metric: str) -> list[float]:
        return [r.summary.metrics[metric] for r in self.runs if metric in r.summary.metrics]

    def stat(self, metric: str, sign: float = 1.0) -> Stat | None:
        v = [sign * x for x in self.values(metric)]
        if not v:
            return None
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)

    def mean_wall(self) -> float:
        return statistics.fmean(r.summary.wall_time_s for r in self.runs)

    def benchmark(self, key: str, reduce=statistics.fmean) -> float | None:
        """``reduce`` of a benchmark column over the seeds; None unless every seed has it."""
        values = [r.benchmark[key] if r.benchmark else math.nan for r in self.runs]
        return None if any(math.isnan(v) for v in values) else reduce(values)


def load_groups(metrics_files: list[Path]) -> dict[str, Group]:
    """Read every summary and group the runs by experiment."""
    groups: dict[str, Group] = {}
    for path in metrics_files:
        s = RunSummary.read(path)
        if not s.run_id:
            raise ValueError(f"{path} has no MLflow run id: was it trained with --no-tracking?")
        group = groups.setdefault(s.experiment, Group(s.experiment, s.dataset, s.model))
        folder = Path(path).parent
        group.runs.append(Run(s, folder, read_benchmark(folder)))
    for g in groups.values():
        g.runs.sort(key=lambda r: r.summary.seed)
    return groups


def fmt(stat: Stat | None, digits: int = 3) -> str:
    if stat is None:
        return "—"
    mean, std, n = stat
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, one line per row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]
