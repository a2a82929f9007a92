"""Measurements a paper's report shows beside its runs: things timed or counted by a module of
the paper (``measurements`` in papers/<paper>/paper.yaml; e.g. MAF's density-vs-sampling
cost), run by the pipeline's ``measure`` rule into ``runs/<profile>/<paper>/measurements/
<name>.json``.

A measurement file holds ``title``, ``intro`` (Markdown), ``environment`` (where it was
measured), a table (``columns``, ``rows``) and optionally ``plot``: ``xlabel``, ``ylabel`` and
``series`` (label → ``[[x, y], ...]``), drawn on log-log axes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from common.files import save_figure, write_atomic
from common.run.plotting import plt
from common.run.reports.runs import table

__all__ = ["measurement_cli", "measurement_section"]

REQUIRED = ("title", "intro", "environment", "columns", "rows")


def _plot(plot: dict, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs_all = set()
    for i, (label, points) in enumerate(plot["series"].items()):
        xs, ys = zip(*points, strict=True)
        xs_all.update(xs)
        # markers and dashes differ too: series that coincide (e.g. MAF's density and IAF's
        # sampling) stay visible on top of each other
        ax.plot(xs, ys, color=f"C{i}", label=label, marker="os^D"[i % 4],
                linestyle=["-", "--", ":", "-."][i % 4], markersize=8 - 1.5 * (i % 4))  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=plot["xlabel"], ylabel=plot["ylabel"], title=title)
    ax.set_xticks(sorted(xs_all), [f"{x:g}" for x in sorted(xs_all)])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def measurement_section(path: Path, fig_dir: Path, rel: Path) -> list[str]:
    """The report's section for the measurement file ``path``: its intro, table and plot."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"measurement {path} lacks {missing}")
    lines = ["", f"## {data['title']}", "", data["intro"], "",
             f"Measured on: {data['environment']}.", ""]  # fmt: skip
    lines += table(data["columns"], [[str(v) for v in row] for row in data["rows"]])
    if data.get("plot"):
        figure = _plot(data["plot"], fig_dir / f"{Path(path).stem}.png", data["title"])
        lines += ["", f"![{data['title']}]({rel / figure.name})", ""]
    return lines


def measurement_cli(
    module: str, doc: str, profiles: list[str], measure: Callable[[str], dict],
    argv: list[str] | None = None,
) -> Path:  # fmt: skip
    """The command line of a measurement module: ``python -m <module> --profile P --out F``
    writes ``measure(P)`` (a dict in the format above) to ``F`` as JSON, atomically."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    parser.add_argument("--profile", choices=sorted(profiles), default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="the measurement's JSON file")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(measure(args.profile), indent=1))
    print(f"wrote {args.out}")
    return args.out
