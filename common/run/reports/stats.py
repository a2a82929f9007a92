"""The statistics behind every verdict a report makes: Welch's t-test between two experiments'
seeds, Student's t-interval for one experiment's mean, and Holm's step-down correction when one
verdict rests on several tests.

Why these: a report compares experiments over a handful of seeds (3-5), each seed one draw of
the whole training run. With so few draws the seed means are not normal enough, nor their
standard deviations exact enough, for a z-rule ("more than 2 standard errors apart"): at n = 3
the 97.5 % quantile of Student's t with 2 degrees of freedom is 4.30, not 1.96. Welch's test does
not assume equal variances (different models spread differently over seeds); its degrees of
freedom come from the Welch-Satterthwaite equation

    se² = s_a²/n_a + s_b²/n_b,
    ν = se⁴ / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)),

and t = (x̄_a − x̄_b)/se is compared with Student's t_ν (Welch 1947, Biometrika 34:28-35).
An experiment with fewer than 2 seeds has no variance estimate: every function here then
returns None and the report says "not resolved", never a verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

__all__ = ["ALPHA", "Interval", "WelchResult", "holm", "mean_interval", "welch"]

ALPHA = 0.05  # every verdict: a two-sided test at 5 % (95 % intervals)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of mean(a) − mean(b) = 0: the difference ``diff``, its standard error
    ``se``, the Welch-Satterthwaite degrees of freedom ``df``, the two-sided ``p`` and the
    ``level`` interval [``low``, ``high``] of the difference."""

    diff: float
    se: float
    df: float
    p: float
    low: float
    high: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


@dataclass(frozen=True)
class Interval:
    """Student's t-interval of one experiment's mean over its seeds."""

    mean: float
    low: float
    high: float
    n: int


def _moments(x: Sequence[float]) -> tuple[float, float, int]:
    return statistics.fmean(x), statistics.variance(x), len(x)


def welch(a: Sequence[float], b: Sequence[float], level: float = 1 - ALPHA) -> WelchResult | None:
    """Welch's two-sided t-test between the seeds ``a`` and ``b`` (see the module docstring);
    None when either has fewer than 2 values. Two groups without any spread (identical seeds,
    e.g. a closed-form fit) differ exactly: p = 0 for different means, 1 for equal ones."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, va, na), (mb, vb, nb) = _moments(a), _moments(b)
    diff = ma - mb
    qa, qb = va / na, vb / nb
    se = math.sqrt(qa + qb)
    if se == 0.0:
        return WelchResult(diff, 0.0, float(na + nb - 2), float(diff == 0.0), diff, diff)
    df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1))
    p = 2.0 * student_t.sf(abs(diff) / se, df)
    half = student_t.ppf(0.5 + level / 2, df) * se
    return WelchResult(diff, se, df, float(p), diff - half, diff + half)


def mean_interval(x: Sequence[float], level: float = 1 - ALPHA) -> Interval | None:
    """Student's t-interval x̄ ± t_{n−1} s/√n of the mean of ``x``; None for fewer than 2."""
    if len(x) < 2:
        return None
    mean, var, n = _moments(x)
    half = student_t.ppf(0.5 + level / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70): reject
    hypothesis i at level α when its adjusted p < α; controls the family-wise error rate of
    all the tests one verdict rests on, without assuming them independent. The k-th smallest
    p (k = 0, 1, …) is multiplied by (m − k), then made non-decreasing and capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted
