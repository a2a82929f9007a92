"""The judgements a report makes, each from a test over seeds (:mod:`.stats`): a flow against
its baseline (Welch's t), ours against the paper's number and against a goal (Student's
t-interval of our mean), and whether an ablation's ordering holds (Welch's t for every pair,
Holm-corrected). Each returns text for the report. Where the seeds cannot decide, the text says
"not resolved" and gives the numbers: a verdict never rests on means alone."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from common.run.reports.runs import Group
from common.run.reports.stats import ALPHA, holm, mean_interval, welch

__all__ = ["ablation_verdict", "claim_verdict", "fmt_p", "goal_verdict", "verdict_vs_baseline"]

LEVEL = f"{100 * (1 - ALPHA):g} %"


def fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict_vs_baseline(model: Group, baseline: Group, metric: str = "test/nll") -> str:
    """Is ``model``'s mean ``metric`` (lower is better) different from the baseline's? Welch's
    two-sided test at level ALPHA; the gain is baseline − model, with its interval."""
    w = welch(model.values(metric), baseline.values(metric))
    if w is None:
        return "not resolved (fewer than 2 seeds)"
    gain, low, high = -w.diff, -w.high, -w.low
    evidence = f"{LEVEL} CI {low:.2f} to {high:.2f}, Welch {fmt_p(w.p)}"
    if not w.significant():
        return f"not resolved: {gain:+.2f} nats/example ({evidence})"
    if gain > 0:
        return f"**better** by {gain:.2f} nats/example ({evidence})"
    return f"**worse** by {-gain:.2f} nats/example ({evidence})"


def claim_verdict(claim: dict, values: Sequence[float]) -> str:
    """Ours (the seeds ``values``, signed as the paper's number) against ``claim['value']``,
    from the t-interval of our mean. One-sided: reproduced when the whole interval is no worse
    than the paper by more than the tolerance, missed when the whole interval is worse than
    that. With ``two_sided``: reproduced when the interval lies within ±tolerance of the paper,
    better or worse when it lies wholly beyond. Otherwise, and with one seed, not resolved."""
    sign = 1.0 if claim.get("higher_is_better", True) else -1.0
    tol, value, unit = claim.get("tolerance", 0.0), claim["value"], claim["unit"]
    iv = mean_interval(values)
    if iv is None:
        return f"not resolved (one seed: no interval; ours {values[0]:.3g} {unit})"
    # ours − paper, positive when ours is better, as an interval
    low, high = sorted((sign * (iv.low - value), sign * (iv.high - value)))
    ci = f"{LEVEL} CI of our mean {iv.low:.3g} to {iv.high:.3g}"
    if claim.get("two_sided"):
        if -tol <= low and high <= tol:
            return f"reproduced: within ±{tol:g} of the paper ({ci})"
        if low > tol or high < -tol:
            side, by = ("better", low) if low > tol else ("worse", -high)
            return f"**{side}** than the paper by more than ±{tol:g}: at least {by:.3g} ({ci})"
        return f"not resolved against ±{tol:g} ({ci})"
    margin = f" by more than {tol:g}" if tol else ""
    if low >= -tol:
        return f"reproduced: not worse than the paper{margin} ({ci})"
    if high < -tol:
        return f"**missed**: worse than the paper{margin}, by {-high:.3g} to {-low:.3g} ({ci})"
    return f"not resolved ({ci})"


def goal_verdict(values: Sequence[float], at_most: float) -> str:
    """'yes' when the t-interval of the mean lies at or below ``at_most``, '**no**' when it lies
    above, else 'not resolved'."""
    iv = mean_interval(values)
    if iv is None:
        return "not resolved (one seed)"
    if iv.high <= at_most:
        return "yes"
    return "**no**" if iv.low > at_most else "not resolved"


def ablation_verdict(
    name: str, expected: list[Group], metric: str, first_only: bool = False
) -> list[str]:
    """Does the paper's order of ``expected`` (best first; lower ``metric`` is better) hold?

    Every pair (i, j), i before j in the paper's order, is tested with Welch's t; the p-values
    are Holm-corrected over all pairs, since the one verdict rests on all of them. The order
    **holds** when every neighbouring pair is significantly in the paper's direction, **does
    not hold** when some pair is significantly in the opposite direction, and is **not
    resolved** otherwise. With ``first_only`` the claim is only that the first beats each of
    the others: those pairs alone are tested (and corrected) and must all agree for it to
    hold. Returns the verdict line and one indented line per pair."""
    values = {g.experiment: g.values(metric) for g in expected}
    names = [g.experiment for g in expected]
    if any(len(v) < 2 for v in values.values()):
        return [f"- {name}: **not resolved**: an experiment has fewer than 2 seeds."]
    pairs = [(names[0], b) for b in names[1:]] if first_only else list(combinations(names, 2))
    tests = [welch(values[a], values[b]) for a, b in pairs]
    adjusted = holm([t.p for t in tests])
    agree, against, lines = set(), [], []
    for (a, b), t, p in zip(pairs, tests, adjusted, strict=True):
        if p < ALPHA and t.diff < 0:
            agree.add((a, b))
        elif p < ALPHA:
            against.append((a, b))
        lines.append(
            f"  - `{a}` − `{b}` = {t.diff:+.3f} ({LEVEL} CI {t.low:+.3f} to {t.high:+.3f}; "
            f"Welch {fmt_p(t.p)}, Holm-adjusted {fmt_p(p)})"
        )
    n = min(len(v) for v in values.values())
    if first_only:  # all its pairs are needed
        needed = pairs
        order = f"`{names[0]}` < each of " + ", ".join(f"`{e}`" for e in names[1:])
    else:  # the neighbours are needed; the other pairs follow
        needed = list(zip(names, names[1:], strict=False))
        order = " < ".join(f"`{e}`" for e in names)
    if against:
        shown = ", ".join(f"`{b}` beats `{a}`" for a, b in against)
        head = f"the paper's ordering ({order}) **does not hold**: {shown}"
    elif all(pair in agree for pair in needed):
        head = f"the paper's ordering ({order}) **holds**"
    else:
        resolved = ", ".join(f"`{a}` < `{b}`" for a, b in pairs if (a, b) in agree)
        head = f"the paper's ordering ({order}) is **not resolved**: no pair contradicts it, " + (
            f"significant: {resolved} only" if resolved else "no pair is significant"
        )
    return [f"- {name}: {head} ({n}+ seeds per experiment, {metric}; pairs below):", *lines]
