"""Generate ``reports/<paper>.md`` from MLflow runs and ``papers/<paper>/paper.yaml``.

Every number in a report is read back from the MLflow store (the run ids come from the
``metrics.json`` files the pipeline produced); paper numbers are read from ``paper.yaml`` and
always labelled as the paper's. Each of our numbers carries the scale it was obtained at.

    python -m common.reports --paper nice --profile cpu \
        --metrics runs/cpu/nice/*/seed*/metrics.json --out reports/nice.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.plotting import plt
from common.tracking import default_tracking_uri

__all__ = ["generate_report"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Group:
    """All seeds of one experiment."""

    experiment: str
    dataset: str
    model: str
    runs: list[Any] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.data.metrics[metric] for r in self.runs if metric in r.data.metrics]

    def stat(self, metric: str, sign: float = 1.0) -> tuple[float, float, int] | None:
        v = [sign * x for x in self.values(metric)]
        if not v:
            return None
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)

    def tag(self, key: str) -> str:
        return self.runs[0].data.tags.get(key, "?")


def fmt(stat: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stat is None:
        return "—"
    mean, std, n = stat
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def _load_runs(tracking_uri: str, metrics_files: list[Path]) -> dict[str, Group]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    groups: dict[str, Group] = {}
    for path in metrics_files:
        payload = json.loads(Path(path).read_text())
        if not payload.get("run_id"):
            raise ValueError(f"{path} has no MLflow run id: was it trained with --no-tracking?")
        run = client.get_run(payload["run_id"])
        exp = run.data.tags["experiment"]
        group = groups.setdefault(exp, Group(exp, run.data.tags["dataset"], run.data.tags["model"]))
        group.runs.append(run)
    for g in groups.values():
        g.runs.sort(key=lambda r: int(r.data.tags["seed"]))
    return groups


def _curves_figure(client, groups: list[Group], dataset: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, g in enumerate(groups):
        for j, run in enumerate(g.runs):
            hist = client.get_metric_history(run.info.run_id, "val/nll")
            steps = [m.step for m in hist]
            ax.plot(steps, [m.value for m in hist], color=f"C{i}", alpha=0.8, linewidth=1,
                    label=g.model if j == 0 else None)  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("validation NLL (nats / example)")
    ax.set_title(f"{dataset}: validation NLL, every seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _verdict_vs_baseline(model: Group, baseline: Group) -> str:
    a, b = model.stat("test/nll"), baseline.stat("test/nll")
    if a is None or b is None:
        return "—"
    gain = b[0] - a[0]
    spread = max(a[1], b[1], 1e-9)
    if gain > 0 and gain > 3 * spread:
        return f"**{model.model} better** by {gain:.2f} nats/example (> 3 × seed std)"
    if gain > 0:
        return f"{model.model} better by {gain:.2f} nats/example, within 3 × seed std"
    return f"**{model.model} not better** ({-gain:.2f} nats/example worse)"


def _claim_row(claim: dict, groups: dict[str, Group], profile: str) -> list[str]:
    exp = claim.get("experiment")
    paper_value = f"{claim['value']} {claim['unit']}"
    if not exp:
        return [claim["table"], claim["dataset"], paper_value, "—", "—", "—",
                f"not reproduced: {claim.get('why_not', 'no experiment for it')}"]  # fmt: skip
    if exp not in groups:
        return [claim["table"], claim["dataset"], paper_value, "—", "—", "—",
                f"not run at the `{profile}` scale; run `snakemake reproduce_{claim['paper']} "
                f"--config profile={claim.get('scale', 'paper')}`"]  # fmt: skip
    g = groups[exp]
    sign = -1.0 if claim.get("negate") else 1.0
    stat = g.stat(claim["metric"], sign)
    ours = fmt(stat, 2)
    compute = f"{g.tag('device')}, {_mean_wall(g):.0f} s/seed"
    if stat is None:
        verdict = "metric missing from the runs"
    else:
        higher = claim.get("higher_is_better", True)
        diff = (stat[0] - claim["value"]) * (1 if higher else -1)
        tol = claim.get("tolerance", 0.0)
        verdict = "reproduced" if diff >= -tol else f"missed by {abs(diff):.2f} {claim['unit']}"
    return [claim["table"], claim["dataset"], paper_value, ours, g.tag("scale"), compute, verdict]


def _mean_wall(g: Group) -> float:
    return statistics.fmean(float(r.data.metrics.get("train/wall_time_s", 0.0)) for r in g.runs)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def generate_report(
    paper: str,
    profile: str,
    metrics_files: list[Path],
    out: Path,
    tracking_uri: str,
    baseline: str = "diagonal_gaussian",
) -> Path:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    meta = yaml.safe_load((REPO_ROOT / "papers" / paper / "paper.yaml").read_text())
    groups = _load_runs(tracking_uri, metrics_files)
    out = Path(out)
    fig_dir = out.parent / "figures" / paper
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    rel = fig_dir.relative_to(out.parent)

    lines = [
        f"# {meta['title']} — reproduction report",
        "",
        f"{meta['citation']}  ",
        f"<{meta['url']}>",
        "",
        f"Generated by `python -m common.reports` from {sum(len(g.runs) for g in groups.values())}"
        f" MLflow runs at the **`{profile}`** profile (`snakemake reproduce_{paper}"
        f"{'' if profile == 'cpu' else f' --config profile={profile}'}`). Do not edit by hand.",
        "",
        "## The paper's numbers beside ours",
        "",
        'Paper numbers are quoted from the paper; "ours" is mean ± std over seeds at the scale',
        "shown. A row with no number of ours was not run at this profile.",
        "",
    ]
    for claim in meta["claims"]:
        claim.setdefault("paper", paper)
    rows = [_claim_row(c, groups, profile) for c in meta["claims"]]
    lines += _table(["source", "dataset", "paper", "ours", "scale", "compute", "verdict"], rows)

    by_dataset: dict[str, list[Group]] = defaultdict(list)
    for g in groups.values():
        by_dataset[g.dataset].append(g)
    lines += [
        "",
        f"## Our experiments (scale: `{profile}`)",
        "",
        "Test metrics of the best-validation checkpoint; NLL in nats per example of the data "
        "as stored (discrete levels for images, dequantization included; raw values for 2-D "
        "sets), bpd = NLL / (D ln 2). "
        f"Baseline: `{baseline}`, an independent Gaussian per dimension.",
        "",
    ]
    rows = []
    for dataset, gs in sorted(by_dataset.items()):
        gs.sort(key=lambda g: (g.model == baseline, g.experiment))
        base = next((g for g in gs if g.model == baseline), None)
        for g in gs:
            verdict = "baseline" if g is base else (
                _verdict_vs_baseline(g, base) if base else "no baseline run")  # fmt: skip
            rows.append([
                dataset, f"`{g.experiment}`", fmt(g.stat("test/nll")), fmt(g.stat("test/bpd")),
                f"{int(g.tag('num_params')):,}", f"{_mean_wall(g):.1f} s", g.tag("device"), verdict,
            ])  # fmt: skip
    lines += _table(
        ["dataset", "experiment", "test NLL (nats)", "test bpd", "params", "train time/seed",
         "device", "vs baseline"], rows,
    )  # fmt: skip

    lines += ["", "## Figures", ""]
    for dataset, gs in sorted(by_dataset.items()):
        curves = _curves_figure(client, gs, dataset, fig_dir / f"{dataset}_curves.png")
        lines += [f"### {dataset}", "", f"![validation curves]({rel / curves.name})", ""]
        for g in gs:
            run = g.runs[0]
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
            if "figures/samples.png" not in artifacts:
                continue
            local = client.download_artifacts(run.info.run_id, "figures/samples.png", str(fig_dir))
            target = fig_dir / f"{g.experiment}_samples.png"
            shutil.move(local, target)
            lines += [f"`{g.experiment}` (seed {run.data.tags['seed']}): samples",
                      "", f"![{g.experiment} samples]({rel / target.name})", ""]  # fmt: skip
    shutil.rmtree(fig_dir / "figures", ignore_errors=True)

    commits = sorted({(r.data.tags.get("git_commit", "?")[:10], r.data.tags.get("git_dirty"))
                      for g in groups.values() for r in g.runs})  # fmt: skip
    data_hashes = sorted({f"{g.dataset}: {g.tag('data_md5')}" for g in groups.values()})
    lines += [
        "## Provenance",
        "",
        "- code: " + ", ".join(f"`{c}`{' (dirty)' if d == 'True' else ''}" for c, d in commits),
        "- data (MD5 of the `.npz` each run read): " + "; ".join(f"`{h}`" for h in data_hashes),
        "- MLflow runs: " + ", ".join(
            f"`{g.experiment}`: " + " ".join(f"`{r.info.run_id[:8]}`" for r in g.runs)
            for g in sorted(groups.values(), key=lambda g: g.experiment)
        ),
        "",
    ]  # fmt: skip
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.reports", description=__doc__)
    parser.add_argument("--paper", required=True)
    parser.add_argument("--profile", required=True, choices=["smoke", "cpu", "paper"])
    parser.add_argument("--metrics", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tracking-uri", default=default_tracking_uri())
    args = parser.parse_args(argv)
    path = generate_report(args.paper, args.profile, args.metrics, args.out, args.tracking_uri)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
