"""Generate ``reports/<paper>.md`` from MLflow runs and ``papers/<paper>/paper.yaml``, and the
cross-paper index ``reports/README.md``.

Every number in a report is read back from the MLflow store (the run ids come from the
``metrics.json`` files the pipeline produced); paper numbers are read from ``paper.yaml`` and
always labelled as the paper's. Each of our numbers carries the scale it was obtained at.

    python -m common.run.reports paper --paper nice --profile cpu \
        --metrics runs/cpu/nice/*/seed*/metrics.json --out reports/nice.md
    python -m common.run.reports index --profile cpu --papers nice realnvp glow \
        --metrics runs/cpu/*/digits_*/seed*/metrics.json --out reports/README.md

``paper.yaml`` keys: ``title``, ``citation``, ``url``, ``index_experiment`` (the run that stands
for the paper in the index), ``claims`` (the paper's numbers: ``table``, ``dataset``, ``value``,
``unit``, and either ``experiment`` + ``metric`` [+ ``negate``, ``higher_is_better``,
``tolerance``, ``scale``] or ``why_not``), and optionally ``ablation`` (``title``,
``paper_says``, ``groups``: name → experiments in the paper's order, best first).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.run.plotting import plt
from common.run.tracking import default_tracking_uri

__all__ = ["generate_report"]

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _curves_figure(
    client, groups: list[Group], dataset: str, path: Path, metric: str = "val/nll",
    ylabel: str = "validation NLL (nats / example)",
) -> Path:  # fmt: skip
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, g in enumerate(groups):
        for j, run in enumerate(g.runs):
            hist = client.get_metric_history(run.info.run_id, metric)
            steps = [m.step for m in hist]
            ax.plot(steps, [m.value for m in hist], color=f"C{i}", alpha=0.8, linewidth=1,
                    label=g.experiment if j == 0 else None)  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if metric.endswith("kl"):
        ax.set_yscale("log")
    ax.set_title(f"{dataset}: {ylabel}, every seed", fontsize=9)
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


def _nll_section(by_dataset: dict[str, list[Group]], profile: str, baseline: str) -> list[str]:
    """Test NLL and bpd per experiment, each flow against the Gaussian baseline."""
    lines = [
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
    return lines


def _metric_section(spec: dict, by_dataset: dict[str, list[Group]], profile: str) -> list[str]:
    """The ``report`` block of paper.yaml: ``intro``, ``metrics`` (columns: ``key``, ``label``,
    ``digits``) and optionally ``goal`` (``metric``, ``at_most``, ``label``): a verdict per
    experiment and, per dataset, whether the best experiment meets it."""
    lines = ["", f"## Our experiments (scale: `{profile}`)", "", spec["intro"], ""]
    goal = spec.get("goal")
    header = ["dataset", "experiment", *(m["label"] for m in spec["metrics"]), "params",
              "train time/seed"] + ([goal["label"]] if goal else [])  # fmt: skip
    rows, verdicts = [], []
    for dataset, gs in sorted(by_dataset.items()):
        gs.sort(key=lambda g: g.experiment)
        for g in gs:
            row = [dataset, f"`{g.experiment}`"]
            row += [fmt(g.stat(m["key"]), m.get("digits", 3)) for m in spec["metrics"]]
            row += [f"{int(g.tag('num_params')):,}", f"{_mean_wall(g):.1f} s"]
            if goal:
                stat = g.stat(goal["metric"])
                row.append("—" if stat is None else ("yes" if stat[0] <= goal["at_most"] else
                                                    "**no**"))  # fmt: skip
            rows.append(row)
        if goal:
            scored = [(g.stat(goal["metric"]), g) for g in gs if g.stat(goal["metric"])]
            if scored:
                (mean, std, n), best = min(scored, key=lambda t: t[0][0])
                met = "meets" if mean <= goal["at_most"] else "**misses**"
                verdicts.append(f"- {dataset}: the best, `{best.experiment}`, {met} "
                                f"{goal['label']} ({mean:.3f} ± {std:.3f}, n={n}).")  # fmt: skip
    lines += _table(header, rows)
    if verdicts:
        lines += ["", f"**Verdicts ({goal['label']}, on the mean over seeds):**", "", *verdicts]
    return [*lines, ""]


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
        if claim.get("two_sided"):  # "within ±tol of the paper", better or worse
            verdict = (f"reproduced (within ±{tol:g})" if abs(diff) <= tol else
                       f"{'better' if diff > 0 else 'worse'} than the paper by {abs(diff):.2f} "
                       f"{claim['unit']} (more than ±{tol:g})")  # fmt: skip
        else:
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


def _stat_text(stat: tuple[float, float, int] | None) -> str:
    return "—" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def _separated(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Whether two seed means differ by more than 2 standard errors of their difference."""
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    return abs(a[0] - b[0]) > 2 * se


def _ablation_verdict(name: str, expected: list[Group], metric: str) -> str:
    """Does the observed ranking (lower ``metric`` is better) match the paper's order?"""
    stats = {g.experiment: g.stat(metric) for g in expected}
    if any(v is None for v in stats.values()):
        return f"{name}: some runs are missing, no verdict."
    observed = sorted(stats, key=lambda e: stats[e][0])
    order = " < ".join(f"`{e}` ({stats[e][0]:.3f})" for e in observed)
    wanted = [g.experiment for g in expected]
    pairs = list(zip(observed[:-1], observed[1:], strict=True))
    unresolved = [f"`{a}` vs `{b}`" for a, b in pairs if not _separated(stats[a], stats[b])]
    noise = ""
    if unresolved:
        noise = " Within seed noise (< 2 standard errors apart): " + ", ".join(unresolved) + "."
    if len(unresolved) == len(pairs):
        return (f"{name}: **not resolved at this scale**: every neighbouring pair is within seed "
                f"noise (< 2 standard errors apart); observed means {order}.")  # fmt: skip
    if observed == wanted:
        strength = "**holds**" if not unresolved else "**holds in the means**"
        return f"{name}: the paper's ordering {strength}: {order}.{noise}"
    best = ""
    if observed[0] == wanted[0]:
        best = f" The paper's best, `{wanted[0]}`, is best here too; the rest of the order differs."
    return f"{name}: the paper's ordering **does not hold**: observed {order}.{best}{noise}"


def _ablation_figure(client, groups: list[tuple[str, list[Group]]], path: Path, title: str):
    """Validation bpd against training steps: mean over seeds (line) and min–max (band);
    colour = position in the paper's order, line style = group."""
    import numpy as np

    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for gi, (_, members) in enumerate(groups):
        for mi, g in enumerate(members):
            curves = []
            for run in g.runs:
                hist = client.get_metric_history(run.info.run_id, "val/bpd")
                curves.append({m.step: m.value for m in hist})
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[c[t] for t in steps] for c in curves])  # (seeds, steps)
            color = f"C{mi}"
            ax.plot(steps, values.mean(0), styles[gi % 4], color=color, linewidth=1.4,
                    label=f"{g.experiment} (n={len(curves)})")  # fmt: skip
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits / dim")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _ablation_section(client, meta: dict, groups: dict[str, Group], fig_dir: Path, rel: Path):
    ab = meta["ablation"]
    present = [(name, [groups[e] for e in exps if e in groups]) for name, exps in
               ab["groups"].items()]  # fmt: skip
    if not any(members for _, members in present):
        return ["", f"## Ablation: {ab['title']}", "", "No ablation runs at this profile.", ""]
    fig = _ablation_figure(client, present, fig_dir / "ablation_curves.png", ab["title"])
    lines = [
        "", f"## Ablation: {ab['title']}", "",
        f"**The paper:** {ab['paper_says']}", "",
        f"![ablation curves]({rel / fig.name})", "",
        "Validation bits/dim during training (line: mean over seeds; band: min–max). Test "
        "bits/dim of the best-validation checkpoint, mean ± std over seeds:", "",
    ]  # fmt: skip
    rows = []
    for name, members in present:
        for g in members:
            rank = ab["groups"][name].index(g.experiment) + 1
            rows.append([name, str(rank), f"`{g.experiment}`", _stat_text(g.stat("test/bpd")),
                         _stat_text(g.stat("best_val/bpd")), str(len(g.runs))])  # fmt: skip
    lines += _table(["group", "paper's rank", "experiment", "test bpd", "val bpd", "seeds"], rows)
    lines += ["", "**Verdict at this scale:**", ""]
    for name, members in present:
        missing = [e for e in ab["groups"][name] if e not in groups]
        if missing:
            lines.append(f"- {name}: not every variant ran at this profile (missing: "
                         f"{', '.join(f'`{e}`' for e in missing)}), no verdict.")  # fmt: skip
        else:
            lines.append(f"- {_ablation_verdict(name, members, 'test/bpd')}")
    return [*lines, ""]


def _sample_figures(client, g: Group, fig_dir: Path, rel: Path) -> list[str]:
    """Sample grids of the first seed, one column per temperature."""
    run = g.runs[0]
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures"))
    found = []
    for path in artifacts:
        name = Path(path).name
        if name == "samples.png":
            found.append((1.0, path))
        elif name.startswith("samples_T") and name.endswith(".png"):
            found.append((float(name[len("samples_T") : -len(".png")]), path))
    if not found:
        return []
    cells = []
    for t, path in sorted(found):
        local = client.download_artifacts(run.info.run_id, path, str(fig_dir))
        suffix = "" if t == 1.0 else f"_T{t:g}"
        target = fig_dir / f"{g.experiment}_samples{suffix}.png"
        shutil.move(local, target)
        cells.append((t, f"![{g.experiment} samples at T = {t:g}]({rel / target.name})"))
    seed = run.data.tags["seed"]
    if len(cells) == 1:
        return [f"`{g.experiment}` (seed {seed}): samples", "", cells[0][1], ""]
    header = [f"T = {t:g}" for t, _ in cells]
    return [f"`{g.experiment}` (seed {seed}): samples at base temperature T (N(0, T²I))", "",
            *_table(header, [[c for _, c in cells]]), ""]  # fmt: skip


def _density_figure(client, g: Group, fig_dir: Path, rel: Path) -> list[str]:
    """The target-vs-model density figure of the first seed, where the run saved one."""
    run = g.runs[0]
    names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    if "density.png" not in names:
        return []
    local = client.download_artifacts(run.info.run_id, "figures/density.png", str(fig_dir))
    target = fig_dir / f"{g.experiment}_density.png"
    shutil.move(local, target)
    seed = run.data.tags["seed"]
    return [f"`{g.experiment}` (seed {seed}): target and model densities", "",
            f"![{g.experiment} density]({rel / target.name})", ""]  # fmt: skip


def _compute_lines(groups: dict[str, Group]) -> list[str]:
    runs = [r for g in groups.values() for r in g.runs]
    total = sum(float(r.data.metrics.get("train/wall_time_s", 0.0)) for r in runs)
    devices = sorted({r.data.tags.get("device", "?") for r in runs})
    threads = sorted({r.data.params.get("threads", "?") for r in runs})
    rows = []
    for g in sorted(groups.values(), key=lambda g: g.experiment):
        steps = [int(r.data.params.get("train.max_steps", 0)) for r in g.runs]
        rows.append([f"`{g.experiment}`", f"{int(g.tag('num_params')):,}", f"{max(steps):,}",
                     g.runs[0].data.params.get("train.batch_size", "?"),
                     f"{_mean_wall(g):.1f} s", str(len(g.runs))])  # fmt: skip
    return [
        "## Compute used", "",
        f"{len(runs)} training runs, {total / 60:.1f} min of training in all on "
        f"{', '.join(devices)} ({'/'.join(threads)} torch thread(s) per run; wall time of the "
        "training loop, without start-up and the final test evaluation).", "",
        *_table(["experiment", "params", "max steps", "batch", "train time/seed", "seeds"], rows),
        "",
    ]  # fmt: skip


def _reproduce_command(paper: str, profile: str) -> str:
    return f"snakemake reproduce_{paper}" + (
        "" if profile == "cpu" else f" --config profile={profile}"
    )


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
    meta = _paper_meta(paper)
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
        "Generated by `python -m common.run.reports` from "
        f"{sum(len(g.runs) for g in groups.values())} MLflow runs at the **`{profile}`**"
        f" profile (`{_reproduce_command(paper, profile)}`)."
        " Do not edit by hand.",
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
    spec = meta.get("report")
    if spec:  # the paper's own metrics (e.g. KL and ESS of variational fits)
        lines += _metric_section(spec, by_dataset, profile)
    else:
        lines += _nll_section(by_dataset, profile, baseline)

    if "ablation" in meta:
        lines += _ablation_section(client, meta, groups, fig_dir, rel)

    lines += ["", "## Figures", ""]
    for dataset, gs in sorted(by_dataset.items()):
        curve_args = (spec["curve_metric"], spec["curve_label"]) if spec else ()
        curves = _curves_figure(client, gs, dataset, fig_dir / f"{dataset}_curves.png",
                                *curve_args)  # fmt: skip
        lines += [f"### {dataset}", "", f"![validation curves]({rel / curves.name})", ""]
        for g in gs:
            lines += _sample_figures(client, g, fig_dir, rel)
            lines += _density_figure(client, g, fig_dir, rel)
    shutil.rmtree(fig_dir / "figures", ignore_errors=True)

    lines += _compute_lines(groups)
    lines += _provenance_lines(groups.values())
    out.write_text("\n".join(lines))
    return out


def _paper_meta(paper: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "papers" / paper / "paper.yaml").read_text())


def _provenance_lines(groups) -> list[str]:
    groups = sorted(groups, key=lambda g: (g.runs[0].data.tags.get("paper", ""), g.experiment))
    commits = sorted({(r.data.tags.get("git_commit", "?")[:10], r.data.tags.get("git_dirty"))
                      for g in groups for r in g.runs})  # fmt: skip
    data_hashes = sorted({f"{g.dataset}: {g.tag('data_md5')}" for g in groups})
    return [
        "## Provenance",
        "",
        "- code: " + ", ".join(f"`{c}`{' (dirty)' if d == 'True' else ''}" for c, d in commits),
        "- data (MD5 of the `.npz` each run read): " + "; ".join(f"`{h}`" for h in data_hashes),
        "- MLflow runs: " + ", ".join(
            f"`{g.experiment}`: " + " ".join(f"`{r.info.run_id[:8]}`" for r in g.runs)
            for g in groups
        ),
        "",
    ]  # fmt: skip


def generate_index(
    profile: str,
    papers: list[str],
    metrics_files: list[Path],
    out: Path,
    tracking_uri: str,
    baseline: tuple[str, str] = ("nice", "digits_gaussian"),
) -> Path:
    """``reports/README.md``: every paper's report and headline claim, and one table of the
    papers' ``index_experiment`` runs side by side (with the baseline), budgets stated."""
    payloads = [json.loads(Path(f).read_text()) for f in metrics_files]
    files_by_paper: dict[str, list[Path]] = defaultdict(list)
    best_steps: dict[tuple[str, str], list[int]] = defaultdict(list)
    for path, payload in zip(metrics_files, payloads, strict=True):
        files_by_paper[payload["paper"]].append(Path(path))
        best_steps[payload["paper"], payload["experiment"]].append(payload["best_step"])
    groups = {p: _load_runs(tracking_uri, fs) for p, fs in files_by_paper.items()}
    out = Path(out)
    report_dir = out.parent
    suffix = "" if profile == "cpu" else f" --config profile={profile}"

    lines = [
        "# Reproduction reports",
        "",
        "The index of this repository's reports: one per paper, generated from MLflow runs by "
        f"`python -m common.run.reports`. This page is generated at the **`{profile}`** profile by "
        f"`snakemake all{suffix}`. Do not edit by hand.",
        "",
        "## Papers",
        "",
    ]
    rows = []
    for paper in papers:
        meta = _paper_meta(paper)
        claim = next((c for c in meta["claims"] if c.get("experiment")), meta["claims"][0])
        report = report_dir / f"{paper}.md"
        link = f"[{paper}.md]({paper}.md)" if report.exists() else "not generated yet"
        rows.append([meta["title"], link, f"`{_reproduce_command(paper, profile)}`",
                     f"{claim['table']}: {claim['dataset']} {claim['value']} {claim['unit']} "
                     f"(the paper's, at `{claim.get('scale', 'paper')}` scale)"])  # fmt: skip
    lines += _table(["paper", "report", "reproduce", "headline number (paper)"], rows)

    entries: list[tuple[str, str, Group]] = []  # (label, paper, runs)
    for paper in papers:
        exp = _paper_meta(paper).get("index_experiment")
        if exp and exp in groups.get(paper, {}):
            entries.append((paper, paper, groups[paper][exp]))
    base_paper, base_exp = baseline
    if base_exp in groups.get(base_paper, {}):
        entries.append(("diagonal Gaussian", base_paper, groups[base_paper][base_exp]))
    entries.sort(key=lambda e: e[2].stat("test/bpd")[0])
    if entries:
        datasets = sorted({g.dataset for _, _, g in entries})
        keys = ("train.max_steps", "train.batch_size", "train.eval_every", "train.optim.name",
                "train.optim.lr")  # fmt: skip
        budgets = {tuple(g.runs[0].data.params.get(k) for k in keys)
                   for _, _, g in entries if g.model != "diagonal_gaussian"}  # fmt: skip
        if len(budgets) == 1:
            steps, batch, every, optim, lr = next(iter(budgets))
            budget = (f"Equal training budget: at most {int(steps):,} steps of batch {batch} "
                      f"for every flow, {optim} (lr {float(lr):g}), validation every {every} "
                      "steps")  # fmt: skip
        else:
            budget = "**The training budgets differ** (see the max steps column)"
        lines += [
            "",
            f"## The papers side by side on {', '.join(datasets)} (scale: `{profile}`)",
            "",
            f"{budget}; the test set is scored by the best-validation checkpoint; mean ± std "
            "over seeds. "
            "The best-step column says when each seed's validation NLL was lowest; a run with "
            "`train.patience` set stops that many validations later. These are our numbers at "
            "this scale, not the papers'.",
            "",
        ]
        rows = []
        for label, paper, g in entries:
            best = best_steps[paper, g.experiment]
            rows.append([label, f"`{g.experiment}`", fmt(g.stat("test/bpd")),
                         fmt(g.stat("test/nll"), 2), f"{int(g.tag('num_params')):,}",
                         f"{int(g.runs[0].data.params.get('train.max_steps', 0)):,}",
                         ", ".join(map(str, best)), f"{_mean_wall(g):.0f} s"])  # fmt: skip
        lines += _table(["paper", "experiment", "test bpd", "test NLL (nats)", "params",
                         "max steps", "best step per seed", "train time/seed"], rows)  # fmt: skip
        fig = _index_figure(entries, report_dir / "figures" / "index_bpd.png")
        lines += ["", f"![test bpd by paper]({fig.relative_to(report_dir)})", ""]
        lines += _provenance_lines([g for _, _, g in entries])
    out.write_text("\n".join(lines) + "\n")
    return out


def _index_figure(entries: list[tuple[str, str, Group]], path: Path) -> Path:
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
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.run.reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("paper", help="reports/<paper>.md")
    one.add_argument("--paper", required=True)
    index = sub.add_parser("index", help="reports/README.md, the cross-paper index")
    index.add_argument("--papers", nargs="+", required=True)
    for p in (one, index):
        p.add_argument("--profile", required=True, choices=["smoke", "cpu", "paper"])
        p.add_argument("--metrics", nargs="*", type=Path, default=[])
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--tracking-uri", default=default_tracking_uri())
    args = parser.parse_args(argv)
    if args.command == "paper":
        path = generate_report(args.paper, args.profile, args.metrics, args.out,
                               args.tracking_uri)  # fmt: skip
    else:
        path = generate_index(args.profile, args.papers, args.metrics, args.out,
                              args.tracking_uri)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
