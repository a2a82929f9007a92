"""The report's judgements: the ablation verdict and what counts as within seed noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.run.reports.compare import ablation_verdict as _ablation_verdict
from common.run.reports.compare import separated as _separated
from common.run.reports.meta import PaperMetaError, load_paper_meta, validate_paper_meta
from common.run.reports.runs import Group, Run
from common.run.summary import Budget, RunSummary

REPO = Path(__file__).resolve().parents[1]


def summary(experiment: str, seed: int, metrics: dict[str, float]) -> RunSummary:
    return RunSummary(
        run_id=f"run{seed}", paper="glow", experiment=experiment, scale="cpu", seed=seed,
        dataset="digits", model="glow", num_params=1, data_md5="0", git_commit="0",
        git_dirty=False, device="cpu", threads=1, steps=1, best_step=1, stopped_early=False,
        budget=Budget(max_steps=1, batch_size=1, eval_every=1, optimizer="adam", lr=1e-3),
        wall_time_s=1.0, metrics=metrics,
    )  # fmt: skip


def group(name: str, values: list[float]) -> Group:
    runs = [Run(summary(name, i, {"test/bpd": v}), Path(".")) for i, v in enumerate(values)]
    return Group(name, "digits", "glow", runs)


def test_separation_is_two_standard_errors_of_the_difference():
    a = (2.00, 0.03, 3)
    assert _separated(a, (2.10, 0.03, 3))  # 0.10 > 2·√(2·0.03²/3) ≈ 0.049
    assert not _separated(a, (2.04, 0.03, 3))


def test_verdict_holds_when_the_paper_order_is_observed_and_resolved():
    expected = [group("conv", [2.30, 2.31, 2.29]), group("shuffle", [2.40, 2.41, 2.39]),
                group("reverse", [2.50, 2.52, 2.49])]  # fmt: skip
    verdict = _ablation_verdict("affine", expected, "test/bpd")
    assert "**holds**" in verdict and "noise" not in verdict
    assert verdict.index("`conv`") < verdict.index("`shuffle`") < verdict.index("`reverse`")


def test_verdict_is_unresolved_when_every_gap_is_within_noise():
    expected = [group("conv", [2.50, 2.60, 2.40]), group("shuffle", [2.30, 2.50, 2.40]),
                group("reverse", [2.45, 2.55, 2.35])]  # fmt: skip
    verdict = _ablation_verdict("additive", expected, "test/bpd")
    assert "**not resolved at this scale**" in verdict and "holds" not in verdict


def test_verdict_holds_only_in_the_means_when_gaps_are_within_noise():
    expected = [group("conv", [2.30, 2.40, 2.20]), group("shuffle", [2.31, 2.41, 2.21]),
                group("reverse", [2.60, 2.61, 2.59])]  # fmt: skip
    verdict = _ablation_verdict("affine", expected, "test/bpd")
    assert "**holds in the means**" in verdict and "`conv` vs `shuffle`" in verdict


def test_verdict_does_not_hold_when_the_order_differs():
    expected = [group("conv", [2.50, 2.51, 2.49]), group("shuffle", [2.30, 2.31, 2.29]),
                group("reverse", [2.40, 2.41, 2.39])]  # fmt: skip
    verdict = _ablation_verdict("additive", expected, "test/bpd")
    assert "**does not hold**" in verdict
    assert verdict.index("`shuffle`") < verdict.index("`reverse`") < verdict.index("`conv`")


def test_verdict_says_when_the_papers_best_is_still_best():
    expected = [group("conv", [2.30, 2.31, 2.29]), group("shuffle", [2.50, 2.51, 2.49]),
                group("reverse", [2.40, 2.41, 2.39])]  # fmt: skip
    verdict = _ablation_verdict("affine", expected, "test/bpd")
    assert "**does not hold**" in verdict and "`conv`, is best here too" in verdict


@pytest.mark.parametrize("paper", sorted(p.parent.name for p in REPO.glob("papers/*/paper.yaml")))
def test_every_paper_yaml_follows_the_schema(paper):
    meta = load_paper_meta(paper)
    assert meta["claims"]


def test_paper_yaml_errors_name_the_key():
    meta = yaml.safe_load((REPO / "papers/glow/paper.yaml").read_text())
    meta["claims"][0]["tolerence"] = 0.1  # a typo of tolerance
    with pytest.raises(PaperMetaError, match=r"claims\.0: .*tolerence"):
        validate_paper_meta(meta, "glow/paper.yaml")
    meta = yaml.safe_load((REPO / "papers/glow/paper.yaml").read_text())
    del meta["claims"][1]["why_not"]  # neither an experiment nor a reason
    with pytest.raises(PaperMetaError, match=r"claims\.1"):
        validate_paper_meta(meta, "glow/paper.yaml")


def test_index_budget_sentence_ignores_early_stopping_and_names_differences():
    from common.run.reports.index import _budget_sentence

    def entry(name, **budget):
        g = group(name, [2.0])
        g.runs[0].summary = g.first.model_copy(update={"budget": g.first.budget.model_copy(
            update=budget)})  # fmt: skip
        return (name, "glow", g)

    same = [entry("a", max_steps=3000, patience=5), entry("b", max_steps=3000)]
    assert _budget_sentence(same).startswith("Equal training budget: at most 3,000 steps")
    different = [entry("a", max_steps=3000), entry("b", max_steps=1000)]
    assert "budgets differ" in _budget_sentence(different)
