"""``reports/<paper>.md``: the paper's numbers beside ours, our experiments against the baseline
(or the paper's own metrics), the ablation and its verdict, figures, compute and provenance."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

from common.files import write_atomic
from common.run.reports.compare import (
    LEVEL,
    ablation_verdict,
    claim_verdict,
    goal_verdict,
    verdict_vs_baseline,
)
from common.run.reports.figures import (
    curves_figure,
    density_comparison,
    density_figure,
    sample_figures,
)
from common.run.reports.measurements import measurement_section
from common.run.reports.meta import load_paper_meta
from common.run.reports.runs import Group, fmt, load_groups, table
from common.run.reports.stats import mean_interval

__all__ = ["compute_lines", "generate_report", "provenance_lines", "reproduce_command"]


def reproduce_command(paper: str, profile: str, target: str = "") -> str:
    """The command that regenerates a report: ``target`` '' for reports/<paper>.md,
    '_ablation' for reports/<paper>_ablation.md."""
    suffix = "" if profile == "cpu" else f" --config profile={profile}"
    return f"snakemake reproduce_{paper}{target}{suffix}"


def _params(g: Group) -> str:
    return f"{g.first.num_params:,}"


def _nll_section(by_dataset: dict[str, list[Group]], profile: str, baseline: str) -> list[str]:
    """Test NLL and bpd per experiment, each flow against the Gaussian baseline (the column
    is left out when no dataset has a baseline run)."""
    any_base = any(g.model == baseline for gs in by_dataset.values() for g in gs)
    against = (
        f"Baseline: `{baseline}`, an independent Gaussian per dimension. The last column "
        f"tests each flow against it over seeds (Welch's t, two-sided, {LEVEL} interval of "
        "the gain in nats/example)."
        if any_base
        else "No baseline was run at this profile: the flows are compared with each other below."
    )
    lines = [
        "",
        f"## Our experiments (scale: `{profile}`)",
        "",
        "Test metrics of the best-validation checkpoint; NLL in nats per example of the data "
        "as stored (discrete levels for images, dequantization included; raw values for "
        "continuous data: 2-D sets, patches), bpd = NLL / (D ln 2). " + against,
        "",
    ]
    rows = []
    for dataset, gs in sorted(by_dataset.items()):
        gs.sort(key=lambda g: (g.model == baseline, g.experiment))
        base = next((g for g in gs if g.model == baseline), None)
        for g in gs:
            if g is base:
                verdict = "baseline"
            else:
                verdict = verdict_vs_baseline(g, base) if base else "no baseline run"
            rows.append(
                [
                    dataset,
                    f"`{g.experiment}`",
                    fmt(g.stat("test/nll")),
                    fmt(g.stat("test/bpd")),
                    _params(g),
                    f"{g.mean_wall():.1f} s",
                    g.first.device,
                ]
                + ([verdict] if any_base else [])
            )
    header = [
        "dataset",
        "experiment",
        "test NLL (nats)",
        "test bpd",
        "params",
        "train time/seed",
        "device",
    ] + (["vs baseline"] if any_base else [])
    return lines + table(header, rows)


def _metric_section(spec: dict, by_dataset: dict[str, list[Group]], profile: str) -> list[str]:
    """The ``report`` block of paper.yaml: its metric columns and, with a ``goal``, a verdict
    per experiment and, per dataset, whether the best experiment meets it."""
    title = spec.get("title", "Our experiments")
    lines = ["", f"## {title} (scale: `{profile}`)", "", spec["intro"], ""]
    goal = spec.get("goal")
    header = [
        "dataset",
        "experiment",
        *(m["label"] for m in spec["metrics"]),
        "params",
        "train time/seed",
    ] + ([goal["label"]] if goal else [])
    rows, verdicts = [], []
    for dataset, gs in sorted(by_dataset.items()):
        gs.sort(key=lambda g: g.experiment)
        for g in gs:
            row = [dataset, f"`{g.experiment}`"]
            row += [fmt(g.stat(m["key"]), m.get("digits", 3)) for m in spec["metrics"]]
            row += [_params(g), f"{g.mean_wall():.1f} s"]
            if goal:
                seeds = g.values(goal["metric"])
                row.append(goal_verdict(seeds, goal["at_most"]) if seeds else "—")
            rows.append(row)
        if goal:
            verdicts += _goal_line(dataset, gs, goal)
    lines += table(header, rows)
    if verdicts:
        lines += [
            "",
            f"**Verdicts ({goal['label']}, from the {LEVEL} t-interval of the mean over "
            "seeds: met when the whole interval meets it):**",
            "",
            *verdicts,
        ]
    return [*lines, ""]


def _goal_line(dataset: str, gs: list[Group], goal: dict) -> list[str]:
    """Whether the experiment with the lowest mean meets the goal (lowest is descriptive: it
    is not tested against the others)."""
    scored = [g for g in gs if g.values(goal["metric"])]
    if not scored:
        return []
    low = min(scored, key=lambda g: g.stat(goal["metric"])[0])
    seeds = low.values(goal["metric"])
    verdict = goal_verdict(seeds, goal["at_most"])
    met = {"yes": "meets", "**no**": "**misses**"}.get(verdict, "is not resolved against")
    iv = mean_interval(seeds)
    ci = f"{LEVEL} CI {iv.low:.4f} to {iv.high:.4f}" if iv else "one seed"
    return [
        f"- {dataset}: the lowest mean, `{low.experiment}` ({iv.mean if iv else seeds[0]:.4f}; "
        f"{ci}, n={len(seeds)}), {met} {goal['label']}."
    ]


def ordering_section(ordering: dict, groups: dict[str, Group]) -> list[str]:
    """An ordering the paper claims (paper.yaml ``orderings``): the experiments' metric in the
    paper's order and the verdict of :func:`ablation_verdict` (every pair tested, or with
    ``claim: first`` the first against each other; Holm)."""
    names, metric = ordering["experiments"], ordering["metric"]
    pairs = "the first against each other" if ordering.get("claim") == "first" else "every pair"
    rows = [
        [str(rank), f"`{e}`", fmt(groups[e].stat(metric)) if e in groups else "not run"]
        for rank, e in enumerate(names, 1)
    ]
    lines = [
        "",
        f"## Ordering: {ordering['title']}",
        "",
        f"**The paper:** {ordering['paper_says']}",
        "",
        *table(["paper's rank", "experiment", f"{metric} (mean ± std)"], rows),
        "",
        f"**Verdict at this scale** ({pairs} tested with Welch's t on the seeds' {metric}, "
        "p-values Holm-corrected over the pairs; significant at 5 %):",
        "",
    ]
    if missing := [e for e in names if e not in groups]:
        shown = ", ".join(f"`{e}`" for e in missing)
        return [
            *lines,
            f"- not every experiment ran at this profile (missing: {shown}): no verdict.",
            "",
        ]
    first_only = ordering.get("claim", "order") == "first"
    verdict = ablation_verdict(ordering["title"], [groups[e] for e in names], metric, first_only)
    return [*lines, *verdict, ""]


def _claim_row(claim: dict, groups: dict[str, Group], paper: str, profile: str) -> list[str]:
    exp = claim.get("experiment")
    head = [claim["table"], claim["dataset"], f"{claim['value']} {claim['unit']}"]
    if not exp:
        return [*head, "—", "—", "—", f"not reproduced: {claim['why_not']}"]
    if exp not in groups:
        command = reproduce_command(paper, claim.get("scale", "paper"))
        return [*head, "—", "—", "—", f"not run at the `{profile}` scale; run `{command}`"]
    g = groups[exp]
    sign = -1.0 if claim.get("negate") else 1.0
    stat = g.stat(claim["metric"], sign)
    seeds = [sign * v for v in g.values(claim["metric"])]
    verdict = "metric missing from the runs" if stat is None else claim_verdict(claim, seeds)
    compute = f"{g.first.device}, {g.mean_wall():.0f} s/seed"
    digits = 3 if abs(claim["value"]) < 10 else 2  # KL in hundredths needs the third digit
    return [*head, fmt(stat, digits), g.first.scale, compute, verdict]


def compute_lines(groups: dict[str, Group]) -> list[str]:
    """The compute table: the training loop's own timing (``metrics.json``) and, where the
    pipeline ran the job, Snakemake's benchmark of the whole job (start-up and test evaluation
    included) with its peak memory."""
    runs = [r.summary for g in groups.values() for r in g.runs]
    total = sum(r.wall_time_s for r in runs)
    devices = ", ".join(sorted({r.device for r in runs}))
    threads = "/".join(sorted({str(r.threads) for r in runs}))
    rows = []
    for g in sorted(groups.values(), key=lambda g: g.experiment):
        steps = max(r.summary.budget.max_steps for r in g.runs)
        job, rss = g.benchmark("s"), g.benchmark("max_rss", reduce=max)
        rows.append(
            [
                f"`{g.experiment}`",
                _params(g),
                f"{steps:,}",
                str(g.first.budget.batch_size),
                f"{g.mean_wall():.1f} s",
                "—" if job is None else f"{job:.1f} s",
                "—" if rss is None else f"{rss:,.0f} MB",
                str(len(g.runs)),
            ]
        )
    jobs = [r.benchmark["s"] for g in groups.values() for r in g.runs if r.benchmark]
    job_total = (
        f" The pipeline's jobs took {sum(jobs) / 60:.1f} min in all ({len(jobs)} with a "
        "Snakemake benchmark: job time and peak memory, start-up and test evaluation included)."
        if jobs
        else ""
    )
    return [
        "## Compute used",
        "",
        f"{len(runs)} training runs, {total / 60:.1f} min of training in all on {devices} "
        f"({threads} torch thread(s) per run; train time is the training loop's, without "
        f"start-up and the final test evaluation).{job_total}",
        "",
        *table(
            [
                "experiment",
                "params",
                "max steps",
                "batch",
                "train time/seed",
                "job time/seed",
                "peak memory",
                "seeds",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]


def provenance_lines(groups) -> list[str]:
    groups = sorted(groups, key=lambda g: (g.first.paper, g.experiment))
    commits = sorted(
        {(r.summary.git_commit[:10], r.summary.git_dirty) for g in groups for r in g.runs}
    )
    data_hashes = sorted({f"{g.dataset}: {g.first.data_md5}" for g in groups})
    runs = ", ".join(
        f"`{g.experiment}`: " + " ".join(f"`{r.summary.run_id[:8]}`" for r in g.runs)
        for g in groups
    )
    code = ", ".join(f"`{c}`{' (dirty)' if dirty else ''}" for c, dirty in commits)
    return [
        "## Provenance",
        "",
        f"- code: {code}",
        "- data (MD5 of the `.npz` each run read): " + "; ".join(f"`{h}`" for h in data_hashes),
        f"- MLflow runs: {runs}",
        "",
    ]


def claims_section(meta: dict, groups: dict[str, Group], paper: str, profile: str) -> list[str]:
    """The report's title, provenance line and the table of the paper's numbers beside ours."""
    num_runs = sum(len(g.runs) for g in groups.values())
    lines = [
        f"# {meta['title']} — reproduction report",
        "",
        f"{meta['citation']}  ",
        f"<{meta['url']}>",
        "",
        f"Generated by `python -m common.run.reports` from {num_runs} MLflow runs at the "
        f"**`{profile}`** profile (`{reproduce_command(paper, profile)}`). Do not edit by hand.",
        "",
        "## The paper's numbers beside ours",
        "",
        'Paper numbers are quoted from the paper; "ours" is mean ± std over seeds at the scale',
        "shown. A row with no number of ours was not run at this profile.",
        "",
    ]
    rows = [_claim_row(c, groups, paper, profile) for c in meta["claims"]]
    header = ["source", "dataset", "paper", "ours", "scale", "compute", "verdict"]
    notes = [f"- {c['table']}, {c['dataset']}: {c['note']}." for c in meta["claims"] if "note" in c]
    return lines + table(header, rows) + (["", "Notes:", "", *notes] if notes else [])


def curves_section(
    client, spec: dict, groups: dict[str, Group], fig_dir: Path, rel: Path
) -> list[str]:
    """A ``curves`` entry of paper.yaml: the metric's history of every seed of the named
    experiments in one figure, and the runs' ``summary_metric`` (mean ± std over seeds)."""
    gs = [groups[e] for e in spec["experiments"] if e in groups]
    lines = ["", f"## {spec['title']}", "", spec["intro"], ""]
    if not gs:
        return lines + ["No runs of these experiments at this profile.", ""]
    name = "curves_" + spec["metric"].replace("/", "_") + f"_{gs[0].experiment}.png"
    datasets = ", ".join(sorted({g.dataset for g in gs}))
    path = curves_figure(client, gs, datasets, fig_dir / name, spec["metric"], spec["label"],
                         title=f"{spec['label']}, every seed")  # fmt: skip
    lines += [f"![{spec['label']}]({rel / path.name})", ""]
    if metric := spec.get("summary_metric"):
        rows = [[f"`{g.experiment}`", g.dataset, fmt(g.stat(metric), 1)] for g in gs]
        lines += table(["experiment", "dataset", f"`{metric}`"], rows) + [""]
    return lines


def generate_report(
    paper: str,
    profile: str,
    metrics_files: list[Path],
    out: Path,
    tracking_uri: str,
    baseline: str = "diagonal_gaussian",
    measurements: list[Path] = (),
) -> Path:
    """Write ``out`` (``reports/<paper>.md``) and its figures beside it under
    ``figures/<paper>/``, from the runs' summaries, their MLflow histories, paper.yaml and
    the paper's ``measurements`` files (:mod:`common.run.reports.measurements`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    meta = load_paper_meta(paper)
    groups = load_groups(metrics_files)
    out = Path(out)
    fig_dir = out.parent / "figures" / paper
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    rel = fig_dir.relative_to(out.parent)

    lines = claims_section(meta, groups, paper, profile)

    by_dataset: dict[str, list[Group]] = defaultdict(list)
    for g in groups.values():
        by_dataset[g.dataset].append(g)
    spec = meta.get("report")
    covered = set(spec.get("datasets", by_dataset)) if spec else set()
    nll_datasets = {d: gs for d, gs in by_dataset.items() if d not in covered}
    if nll_datasets:
        lines += _nll_section(nll_datasets, profile, baseline)
    if spec:  # the paper's own metrics (e.g. KL and ESS of variational fits)
        lines += _metric_section(
            spec, {d: gs for d, gs in by_dataset.items() if d in covered}, profile
        )
    for ordering in meta.get("orderings", []):
        lines += ordering_section(ordering, groups)
    for spec_ in meta.get("curves", []):
        lines += curves_section(client, spec_, groups, fig_dir, rel)
    if "ablation" in meta:  # its own target and report: more seeds, run to convergence
        lines += [
            "",
            f"## Ablation: {meta['ablation']['title']}",
            "",
            f"In [`{paper}_ablation.md`]({paper}_ablation.md), generated by "
            f"`{reproduce_command(paper, profile, '_ablation')}` (more seeds than the runs "
            "above; see the paper's README for its time).",
            "",
        ]

    for path in measurements:
        lines += measurement_section(path, fig_dir, rel)
    lines += density_comparison(list(groups.values()), fig_dir, rel)

    lines += ["", "## Figures", ""]
    for dataset, gs in sorted(by_dataset.items()):
        curve_args = (spec["curve_metric"], spec["curve_label"]) if dataset in covered else ()
        curves = curves_figure(client, gs, dataset, fig_dir / f"{dataset}_curves.png", *curve_args)
        lines += [f"### {dataset}", "", f"![validation curves]({rel / curves.name})", ""]
        for g in gs:
            lines += sample_figures(g, fig_dir, rel)
            lines += density_figure(g, fig_dir, rel)
    lines += compute_lines(groups)
    lines += provenance_lines(groups.values())
    write_atomic(out, "\n".join(lines))
    return out
