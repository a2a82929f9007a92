"""The report's judgements: the statistics behind them (against scipy) and each verdict's
direction and resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from common.run.reports.compare import ablation_verdict as _ablation_verdict
from common.run.reports.compare import claim_verdict, goal_verdict, verdict_vs_baseline
from common.run.reports.meta import PaperMetaError, load_paper_meta, validate_paper_meta
from common.run.reports.runs import Group, Run
from common.run.reports.stats import holm, mean_interval, welch
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


def test_welch_matches_scipy_on_fixed_numbers():
    """The comparison behind every verdict against scipy's Welch test (unequal variances)."""
    a, b = [2.31, 2.35, 2.29, 2.40], [2.45, 2.39, 2.60]
    ours = welch(a, b)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.df == pytest.approx(ref.df, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (ours.low, ours.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert ours.diff == pytest.approx(np.mean(a) - np.mean(b)) and ours.diff < 0
    # the pooled (Student) test would give another p: equal variances are not assumed
    assert ours.p != pytest.approx(scipy.stats.ttest_ind(a, b).pvalue, rel=1e-3)


def test_welch_refuses_single_seeds_and_handles_zero_spread():
    assert welch([1.0], [2.0, 2.1]) is None and mean_interval([1.0]) is None
    assert welch([1.0, 1.0], [2.0, 2.0]).p == 0.0 and welch([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_mean_interval_is_students():
    x = [0.035, 0.038, 0.033]
    iv = mean_interval(x)
    ref = scipy.stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (iv.low, iv.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_holm_adjusts_step_down():
    # sorted p: 0.01·3 = 0.03, 0.02·2 = 0.04, 0.04·1 → max(0.04, 0.04) = 0.04
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_verdict_holds_when_every_neighbouring_pair_is_significant():
    expected = [group("conv", [2.30, 2.31, 2.29]), group("shuffle", [2.40, 2.41, 2.39]),
                group("reverse", [2.50, 2.52, 2.49])]  # fmt: skip
    verdict = "\n".join(_ablation_verdict("affine", expected, "test/bpd"))
    assert "**holds**" in verdict and "not resolved" not in verdict
    assert "`conv` − `shuffle` = -0.100" in verdict and "Holm-adjusted" in verdict


def test_verdict_is_unresolved_at_welch_p_0_12():
    """The old z-rule called 2.409 ± 0.022 vs 2.498 ± 0.061 (n = 3) apart; Welch's p ≈ 0.12."""
    expected = [group("reverse", [2.385, 2.412, 2.430]), group("shuffle", [2.432, 2.510, 2.552])]
    verdict = "\n".join(_ablation_verdict("affine", expected, "test/bpd"))
    assert "**not resolved**" in verdict and "holds" not in verdict
    assert "no pair is significant" in verdict


def test_verdict_is_unresolved_when_only_some_pairs_are_significant():
    expected = [group("conv", [2.30, 2.34, 2.26]), group("shuffle", [2.31, 2.35, 2.27]),
                group("reverse", [2.60, 2.61, 2.59])]  # fmt: skip
    verdict = "\n".join(_ablation_verdict("affine", expected, "test/bpd"))
    assert "**not resolved**" in verdict
    assert "significant: `conv` < `reverse`, `shuffle` < `reverse` only" in verdict


def test_verdict_does_not_hold_when_a_pair_is_significantly_reversed():
    expected = [group("conv", [2.50, 2.51, 2.49]), group("shuffle", [2.30, 2.31, 2.29]),
                group("reverse", [2.40, 2.41, 2.39])]  # fmt: skip
    verdict = "\n".join(_ablation_verdict("additive", expected, "test/bpd"))
    assert "**does not hold**" in verdict and "`shuffle` beats `conv`" in verdict
    assert "`reverse` beats `shuffle`" not in verdict  # that pair is in the paper's direction


def test_first_only_claim_holds_without_ordering_the_rest():
    """FFJORD's toys: the first beats each other (the others' own order, here reversed and
    not significant, is neither claimed nor tested); a significant reversal still refutes."""
    expected = [group("ffjord", [3.00, 3.01, 2.99]), group("glow", [3.30, 3.20, 3.40]),
                group("realnvp", [3.25, 3.20, 3.30])]  # fmt: skip
    verdict = "\n".join(_ablation_verdict("toys", expected, "test/bpd", first_only=True))
    assert "**holds**" in verdict and "`glow` − `realnvp`" not in verdict
    assert "**holds**" not in "\n".join(_ablation_verdict("toys", expected, "test/bpd"))
    expected[0] = group("ffjord", [3.50, 3.51, 3.49])
    verdict = "\n".join(_ablation_verdict("toys", expected, "test/bpd", first_only=True))
    assert "**does not hold**" in verdict and "`realnvp` beats `ffjord`" in verdict


def test_verdict_needs_two_seeds():
    verdict = _ablation_verdict("x", [group("a", [2.0]), group("b", [2.1, 2.2])], "test/bpd")
    assert "not resolved" in verdict[0]


def _nll(name, values, model="glow"):
    runs = [Run(summary(name, i, {"test/nll": v}), Path(".")) for i, v in enumerate(values)]
    return Group(name, "digits", model, runs)


def test_nll_table_tests_against_the_baseline_only_when_one_ran():
    from common.run.reports.paper import _nll_section

    flows = [_nll("a", [2.0, 2.1, 2.0]), _nll("b", [2.2, 2.3, 2.2])]
    without = "\n".join(_nll_section({"digits": flows}, "cpu", "diagonal_gaussian"))
    assert "vs baseline" not in without and "No baseline was run" in without
    base = _nll("gauss", [3.0, 3.0, 3.0], model="diagonal_gaussian")
    with_base = "\n".join(_nll_section({"digits": [*flows, base]}, "cpu", "diagonal_gaussian"))
    assert "| vs baseline |" in with_base and "| baseline |" in with_base


def test_baseline_verdict_direction_and_resolution():
    base = _nll("gauss", [128.50, 128.52, 128.49])
    assert verdict_vs_baseline(_nll("flow", [120.1, 120.5, 119.8]), base).startswith(
        "**better** by 8.37"
    )
    assert verdict_vs_baseline(_nll("flow", [130.1, 130.5, 129.8]), base).startswith("**worse**")
    unresolved = verdict_vs_baseline(_nll("flow", [125.0, 131.0, 128.0]), base)
    assert unresolved.startswith("not resolved: +0.50")
    assert "not resolved" in verdict_vs_baseline(_nll("flow", [120.0]), base)


def test_claim_verdicts_follow_the_interval():
    kl = {"value": 0.05, "unit": "nats", "higher_is_better": False}
    assert claim_verdict(kl, [0.035, 0.038, 0.033]).startswith("reproduced")
    assert claim_verdict(kl, [0.09, 0.10, 0.095]).startswith("**missed**")
    assert claim_verdict(kl, [0.02, 0.08, 0.05]).startswith("not resolved")
    assert claim_verdict(kl, [0.03]).startswith("not resolved (one seed")
    two = {"value": 0.10, "unit": "nats", "two_sided": True, "tolerance": 0.05,
           "higher_is_better": False}  # fmt: skip
    assert claim_verdict(two, [0.079, 0.085, 0.073]).startswith("reproduced")
    assert claim_verdict(two, [0.30, 0.31, 0.29]).startswith("**worse**")
    assert claim_verdict(two, [0.01, 0.02, 0.015]).startswith("**better**")
    ess = {"value": 90, "unit": "%", "higher_is_better": True}
    assert claim_verdict(ess, [92.1, 93.0, 92.9]).startswith("reproduced")
    assert claim_verdict(ess, [80.1, 81.0, 80.9]).startswith("**missed**")


def test_goal_verdict_needs_the_whole_interval():
    assert goal_verdict([0.001, 0.002, 0.0015], 0.05) == "yes"
    assert goal_verdict([0.6, 0.61, 0.62], 0.05) == "**no**"
    assert goal_verdict([0.01, 0.09, 0.05], 0.05) == "not resolved"


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


def test_index_budget_sentence_says_whether_runs_converged():
    from common.run.reports.index import _budget_sentence

    def entry(name, stopped_early=True, **budget):
        g = group(name, [2.0])
        s = g.first
        update = {"budget": s.budget.model_copy(update=budget), "stopped_early": stopped_early}
        g.runs[0].summary = s.model_copy(update=update)
        return (name, "glow", g)

    converged = [entry("a", max_steps=20000, patience=20), entry("b", max_steps=20000, patience=20)]
    assert "every run stopped before the cap" in _budget_sentence(converged)
    capped = [entry("a", max_steps=20000, patience=20),
              entry("b", False, max_steps=20000, patience=20)]  # fmt: skip
    assert "**`b` reached the step cap on some seed**" in _budget_sentence(capped)
    fixed = [entry("a", False, max_steps=3000), entry("b", False, max_steps=3000)]
    assert _budget_sentence(fixed).startswith("Fixed training budget: 3,000 steps")
    different = [entry("a", max_steps=3000), entry("b", max_steps=1000)]
    assert "budgets differ" in _budget_sentence(different)
    # one flow trained otherwise than the rest: the shared budget described, the other named
    shared = dict(max_steps=20000, patience=20)
    one_off = [entry("a", **shared), entry("b", **shared),
               entry("c", False, max_steps=1500, patience=20)]  # fmt: skip
    sentence = _budget_sentence(one_off)
    assert "at most 20,000 steps" in sentence
    assert "**except `c`** (max_steps 1,500: its budget at this profile)" in sentence
    assert "**`c` reached the step cap on some seed**" in sentence
    assert "except `a`" not in sentence and "except `b`" not in sentence


def test_compute_table_reads_snakemake_benchmarks(tmp_path):
    """The job time is the mean over seeds of the benchmark's `s`, the memory the largest
    `max_rss`; a seed without a benchmark (or with Snakemake's NA) shows "—", not a guess."""
    from common.run.reports.paper import compute_lines
    from common.run.reports.runs import read_benchmark

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for seed, (s, rss) in enumerate([("10.0", "300.5"), ("14.0", "420.0")]):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "benchmark.tsv").write_text(
            header + f"{s}\t0:00:{s[:2]}\t{rss}\t1\t1\t1\t0\t0\t50\t9.5\n"
        )
    (tmp_path / "na").mkdir()
    (tmp_path / "na" / "benchmark.tsv").write_text(
        header + "3.0\t0:00:03\tNA\t" + "NA\t" * 6 + "1\n"
    )
    bench = [read_benchmark(tmp_path / f"seed{i}") for i in range(2)]
    assert bench[0] == {"s": 10.0, "max_rss": 300.5, "cpu_time": 9.5}
    assert read_benchmark(tmp_path / "missing") is None

    g = group("a", [2.0, 2.1])
    for run, b in zip(g.runs, bench, strict=True):
        run.benchmark = b
    row = next(line for line in compute_lines({"a": g}) if line.startswith("| `a`"))
    assert "| 12.0 s | 420 MB | 2 |" in row
    g.runs[1].benchmark = read_benchmark(tmp_path / "na")  # max_rss not measured
    row = next(line for line in compute_lines({"a": g}) if line.startswith("| `a`"))
    assert "| 6.5 s | — | 2 |" in row
    g.runs[1].benchmark = None  # trained outside the pipeline
    row = next(line for line in compute_lines({"a": g}) if line.startswith("| `a`"))
    assert "| — | — | 2 |" in row
