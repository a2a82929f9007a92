"""The judgements a report makes: a flow against its baseline, ours against the paper's number,
and whether an ablation's ordering holds. Each takes the seed statistics of the groups it
compares and returns a sentence."""

from __future__ import annotations

import math

from common.run.reports.runs import Group, Stat

__all__ = ["ablation_verdict", "claim_verdict", "separated", "verdict_vs_baseline"]


def separated(a: Stat, b: Stat) -> bool:
    """Whether two seed means differ by more than 2 standard errors of their difference."""
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    return abs(a[0] - b[0]) > 2 * se


def verdict_vs_baseline(model: Group, baseline: Group) -> str:
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


def claim_verdict(claim: dict, stat: Stat) -> str:
    """Ours (``stat``) against the paper's ``claim['value']``: one-sided (reproduced unless
    worse by more than the tolerance) or, with ``two_sided``, within ±tolerance."""
    higher = claim.get("higher_is_better", True)
    diff = (stat[0] - claim["value"]) * (1 if higher else -1)
    tol = claim.get("tolerance", 0.0)
    if claim.get("two_sided"):
        if abs(diff) <= tol:
            return f"reproduced (within ±{tol:g})"
        side = "better" if diff > 0 else "worse"
        return f"{side} than the paper by {abs(diff):.2f} {claim['unit']} (more than ±{tol:g})"
    return "reproduced" if diff >= -tol else f"missed by {abs(diff):.2f} {claim['unit']}"


def ablation_verdict(name: str, expected: list[Group], metric: str) -> str:
    """Does the observed ranking (lower ``metric`` is better) match the paper's order?"""
    stats = {g.experiment: g.stat(metric) for g in expected}
    if any(v is None for v in stats.values()):
        return f"{name}: some runs are missing, no verdict."
    observed = sorted(stats, key=lambda e: stats[e][0])
    order = " < ".join(f"`{e}` ({stats[e][0]:.3f})" for e in observed)
    wanted = [g.experiment for g in expected]
    pairs = list(zip(observed[:-1], observed[1:], strict=True))
    unresolved = [f"`{a}` vs `{b}`" for a, b in pairs if not separated(stats[a], stats[b])]
    noise = ""
    if unresolved:
        noise = " Within seed noise (< 2 standard errors apart): " + ", ".join(unresolved) + "."
    if len(unresolved) == len(pairs):
        return (
            f"{name}: **not resolved at this scale**: every neighbouring pair is within seed "
            f"noise (< 2 standard errors apart); observed means {order}."
        )
    if observed == wanted:
        strength = "**holds**" if not unresolved else "**holds in the means**"
        return f"{name}: the paper's ordering {strength}: {order}.{noise}"
    best = ""
    if observed[0] == wanted[0]:
        best = f" The paper's best, `{wanted[0]}`, is best here too; the rest of the order differs."
    return f"{name}: the paper's ordering **does not hold**: observed {order}.{best}{noise}"
