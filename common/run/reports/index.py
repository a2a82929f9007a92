"""``reports/README.md``: every paper's report and headline number, and one table of the papers'
``index_experiment`` runs side by side with the baseline that ``pipelines/config.yaml`` names
(``index_baseline``), budgets stated."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from common.files import write_atomic
from common.run.reports.figures import index_figure
from common.run.reports.meta import load_paper_meta
from common.run.reports.paper import provenance_lines, reproduce_command
from common.run.reports.runs import Group, fmt, load_groups, table
from common.run.summary import Budget, RunSummary

__all__ = ["generate_index"]


def _papers_table(papers: list[str], report_dir: Path, profile: str) -> list[str]:
    rows = []
    for paper in papers:
        meta = load_paper_meta(paper)
        claim = next((c for c in meta["claims"] if c.get("experiment")), meta["claims"][0])
        link = (
            f"[{paper}.md]({paper}.md)"
            if (report_dir / f"{paper}.md").exists()
            else ("not generated yet")
        )
        headline = (
            f"{claim['table']}: {claim['dataset']} {claim['value']} {claim['unit']} "
            f"(the paper's, at `{claim.get('scale', 'paper')}` scale)"
        )
        rows.append([meta["title"], link, f"`{reproduce_command(paper, profile)}`", headline])
    return table(["paper", "report", "reproduce", "headline number (paper)"], rows)


def _budget_sentence(entries: list[tuple[str, str, Group]]) -> str:
    """How the flows were trained, and whether the table compares converged models: with
    early stopping every run that stopped before the step cap had stopped improving; a run
    that reached the cap may still have been improving, and is named. The budget most flows
    share is described; a flow trained otherwise is named with what differs."""
    flows = [g for _, _, g in entries if g.model != "diagonal_gaussian"]
    shared, n = Counter(g.first.budget.model_dump_json() for g in flows).most_common(1)[0]
    if n == 1 and len(flows) > 1:
        return "**The training budgets differ** (see the max steps column)"
    b = Budget.model_validate_json(shared)
    common = (
        f"{b.optimizer} (lr {b.lr:g}), batch {b.batch_size}, validation every {b.eval_every} steps"
    )
    if b.patience is None:
        sentence = (
            f"Fixed training budget: {b.max_steps:,} steps for every flow, {common}; a "
            "comparison at this budget, not of converged models"
        )
    else:
        sentence = (
            f"Every flow trained until {b.patience} validations in a row brought no "
            f"improvement ({common}, at most {b.max_steps:,} steps)"
        )
    for g in flows:
        other = g.first.budget
        if other != b:
            diff = ", ".join(
                f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                for k, v in other.model_dump().items()
                if getattr(b, k) != v
            )
            sentence += f", **except `{g.experiment}`** ({diff}: its budget at this profile)"
    capped = [g.experiment for g in flows if not all(r.summary.stopped_early for r in g.runs)]
    if b.patience is None:
        return sentence
    if capped:
        names = ", ".join(f"`{e}`" for e in capped)
        return sentence + f"; **{names} reached the step cap on some seed**, still improving"
    return sentence + "; every run stopped before the cap"


HEADER = ["paper", "experiment", "test bpd", "test NLL (nats)", "params", "max steps",
          "best step per seed", "train time/seed"]  # fmt: skip


def _side_by_side(entries: list[tuple[str, str, Group]], profile: str, report_dir: Path):
    """The papers' index experiments and the baseline in one table, with the bar chart."""
    datasets = ", ".join(sorted({g.dataset for _, _, g in entries}))
    lines = [
        "",
        f"## The papers side by side on {datasets} (scale: `{profile}`)",
        "",
        f"{_budget_sentence(entries)}; the test set is scored by the best-validation "
        "checkpoint; mean ± std over seeds. The best-step column says when each seed's "
        "validation NLL was lowest. The baseline is fitted in closed form (no steps). These "
        "are our numbers at this scale, not the papers'.",
        "",
    ]
    rows = []
    for label, _, g in entries:
        best = ", ".join(str(r.summary.best_step) for r in g.runs)
        rows.append([label, f"`{g.experiment}`", fmt(g.stat("test/bpd")),
                     fmt(g.stat("test/nll"), 2), f"{g.first.num_params:,}",
                     f"{g.first.budget.max_steps:,}", best, f"{g.mean_wall():.0f} s"])  # fmt: skip
    lines += table(HEADER, rows)
    fig = index_figure(entries, report_dir / "figures" / "index_bpd.png")
    lines += ["", f"![test bpd by paper]({fig.relative_to(report_dir)})", ""]
    return lines + provenance_lines([g for _, _, g in entries])


def generate_index(
    profile: str,
    papers: list[str],
    metrics_files: list[Path],
    out: Path,
    baseline: tuple[str, str],
) -> Path:
    """Write ``out``; ``metrics_files`` are the summaries of the papers' index experiments and
    of ``baseline`` = (paper, experiment)."""
    files_by_paper: dict[str, list[Path]] = defaultdict(list)
    for path in metrics_files:
        files_by_paper[RunSummary.read(path).paper].append(Path(path))
    groups = {p: load_groups(fs) for p, fs in files_by_paper.items()}
    out = Path(out)
    report_dir = out.parent
    suffix = "" if profile == "cpu" else f" --config profile={profile}"
    lines = [
        "# Reproduction reports",
        "",
        "The index of this repository's reports: one per paper, generated from MLflow runs by "
        f"`python -m common.run.reports`. This page is generated at the **`{profile}`** profile "
        f"by `snakemake all{suffix}`. Do not edit by hand.",
        "",
        "## Papers",
        "",
        *_papers_table(papers, report_dir, profile),
    ]

    entries: list[tuple[str, str, Group]] = []  # (label, paper, runs)
    for paper in papers:
        exp = load_paper_meta(paper).get("index_experiment")
        if exp and exp in groups.get(paper, {}):
            entries.append((paper, paper, groups[paper][exp]))
    base_paper, base_exp = baseline
    if base_exp in groups.get(base_paper, {}):
        entries.append(("diagonal Gaussian", base_paper, groups[base_paper][base_exp]))
    entries.sort(key=lambda e: e[2].stat("test/bpd")[0])
    if entries:
        lines += _side_by_side(entries, profile, report_dir)
    write_atomic(out, "\n".join(lines) + "\n")
    return out
