"""The figures of a report: validation curves and the ablation's curves from the MLflow
histories, the index's bar chart, and the runs' own figures (sample grids, densities),
copied from the run folders as their summaries list them, and 2-D densities side by side."""

from __future__ import annotations

import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.files import save_figure
from common.run.plotting import plt, save_density_comparison
from common.run.reports.runs import Group, table

__all__ = [
    "ablation_figure",
    "curves_figure",
    "density_comparison",
    "density_figure",
    "index_figure",
    "sample_figures",
]


def _history(client, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, metric)}


def curves_figure(
    client,
    groups: list[Group],
    dataset: str,
    path: Path,
    metric: str = "val/nll",
    ylabel: str = "validation NLL (nats / example)",
    title: str | None = None,
) -> Path:
    """``metric`` against steps, every seed of every experiment on ``dataset`` (``title``
    replaces the default "<dataset>: <ylabel>, every seed")."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, g in enumerate(groups):
        for j, run in enumerate(g.runs):
            hist = _history(client, run.summary.run_id, metric)
            label = g.experiment if j == 0 else None
            ax.plot(
                list(hist), list(hist.values()), color=f"C{i}", alpha=0.8, linewidth=1, label=label
            )
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if metric.endswith("kl"):
        ax.set_yscale("log")
    ax.set_title(title or f"{dataset}: {ylabel}, every seed", fontsize=9)
    ax.grid(alpha=0.3)
    if len(groups) > 4:  # beside the axes, where it hides no curve
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def ablation_figure(client, groups: list[tuple[str, list[Group]]], path: Path, title: str) -> Path:
    """Validation bpd against training steps: mean over seeds (line) and min–max (band);
    colour = position in the paper's order, line style = group."""
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for gi, (_, members) in enumerate(groups):
        for mi, g in enumerate(members):
            curves = [_history(client, run.summary.run_id, "val/bpd") for run in g.runs]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[c[t] for t in steps] for c in curves])  # (seeds, steps)
            color = f"C{mi}"
            ax.plot(
                steps,
                values.mean(0),
                styles[gi % 4],
                color=color,
                linewidth=1.4,
                label=f"{g.experiment} (n={len(curves)})",
            )
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits / dim")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def index_figure(entries: list[tuple[str, str, Group]], path: Path) -> Path:
    """Test bits/dim per paper: bars at the mean, dots at the seeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.45 * len(entries)))
    for i, (_, _, g) in enumerate(entries):
        values = g.values("test/bpd")
        ax.barh(i, statistics.fmean(values), color=f"C{i}", alpha=0.6)
        ax.plot(values, [i] * len(values), "k.", markersize=5)
    ax.set_yticks(range(len(entries)), [label for label, _, _ in entries])
    ax.invert_yaxis()
    ax.set_xlabel("test bits / dim (bars: mean, dots: seeds; lower is better)")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _copy(g: Group, record, name: str, fig_dir: Path) -> Path:
    source = g.runs[0].folder / record.path
    if not source.exists():
        raise FileNotFoundError(f"{source} is listed in its run's metrics.json but missing")
    target = fig_dir / name
    shutil.copyfile(source, target)
    return target


def sample_figures(g: Group, fig_dir: Path, rel: Path) -> list[str]:
    """Sample grids of the first seed, one column per temperature."""
    records = sorted(
        (f for f in g.first.figures if f.kind == "samples"), key=lambda f: f.temperature
    )
    if not records:
        return []
    cells = []
    for record in records:
        t = record.temperature
        suffix = "" if t == 1.0 else f"_T{t:g}"
        target = _copy(g, record, f"{g.experiment}_samples{suffix}.png", fig_dir)
        cells.append((t, f"![{g.experiment} samples at T = {t:g}]({rel / target.name})"))
    seed = g.first.seed
    if len(cells) == 1:
        return [f"`{g.experiment}` (seed {seed}): samples", "", cells[0][1], ""]
    header = [f"T = {t:g}" for t, _ in cells]
    return [
        f"`{g.experiment}` (seed {seed}): samples at base temperature T (N(0, T²I))",
        "",
        *table(header, [[c for _, c in cells]]),
        "",
    ]


def density_figure(g: Group, fig_dir: Path, rel: Path) -> list[str]:
    """The target-vs-model density figure of the first seed, where the run saved one."""
    record = g.first.figure("density")
    if record is None:
        return []
    target = _copy(g, record, f"{g.experiment}_density.png", fig_dir)
    return [
        f"`{g.experiment}` (seed {g.first.seed}): target and model densities",
        "",
        f"![{g.experiment} density]({rel / target.name})",
        "",
    ]


def density_comparison(groups: list[Group], fig_dir: Path, rel: Path) -> list[str]:
    """The first seed's 2-D densities (``density_grid`` figures) side by side: a row per
    dataset with two or more such models, a column per model (the experiment's name without
    its dataset prefix), the data histogram first. Empty if no dataset has two."""
    by_dataset: dict[str, dict[str, dict]] = defaultdict(dict)
    for g in sorted(groups, key=lambda g: g.experiment):
        record = g.first.figure("density_grid")
        if record is None:
            continue
        source = g.runs[0].folder / record.path
        if not source.exists():
            raise FileNotFoundError(f"{source} is listed in its run's metrics.json but missing")
        with np.load(source) as f:
            grid = {k: f[k] for k in f.files}
        label = g.experiment.removeprefix(f"{g.dataset}_")
        by_dataset[g.dataset][label] = grid
    rows = [(d, next(iter(m.values())), m) for d, m in sorted(by_dataset.items()) if len(m) > 1]
    if not rows:
        return []
    columns = sorted({label for _, _, models in rows for label in models})
    path = save_density_comparison(rows, columns, fig_dir / "densities_2d.png")
    return [
        "",
        "## 2-D densities side by side",
        "",
        "Each model's density exp(log p) on a grid (first seed; exact log-det where the run "
        "is scored exactly), beside the test data's histogram:",
        "",
        f"![2-D densities]({rel / path.name})",
        "",
    ]
