"""The statistics of `rho experiment`'s report: the spread of a number over seeds, whether a
difference between two arms is supported by it (scipy.stats' t-tests: Welch's for arms with
their own data order, the paired test by seed for arms that share it), and Holm–Bonferroni's
adjustment of a family of such tests (``holm``: scipy.stats has none, and statsmodels, which
has, is too heavy a dependency for ten lines).

"Supported" means the Holm-adjusted p < 0.05, two-sided; a test alone is a family of one, its
adjusted p its own (rho.experiment.family adjusts the report's family). With 3 seeds a t-test
has 2 to 4 degrees of freedom, so its critical value is 2.8 to 4.3 standard errors, not 2: it
is recorded with the raw p.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from rho.experiment.records import Difference, Spread

ALPHA = 0.05
WELCH = "Welch's t-test"
PAIRED = "paired t-test (by seed)"


def spread(values) -> Spread:
    """Mean, sample standard deviation (ddof=1; 0.0 for a single value), count and the values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread of no values")
    n = len(vals)
    std = float(np.std(vals, ddof=1)) if n > 1 else 0.0
    return Spread(mean=float(np.mean(vals)), std=std, n=n, values=vals)


def difference(a, b, paired: bool = False) -> Difference:
    """``delta`` = mean(a) − mean(b), tested two-sided at ``ALPHA``.

    ``paired``: a[i] and b[i] share a seed (the same data order), so the test is on the
    differences a[i] − b[i] (scipy.stats.ttest_rel, df = n − 1); otherwise Welch's test
    (scipy.stats.ttest_ind with unequal variances, Welch–Satterthwaite df). Returns ``delta``,
    ``se`` (its standard error), ``test``, ``t``, ``df``, ``critical`` (the two-sided 95%
    critical value of t at that df), ``p``, ``p_adjusted`` (p: a family of one, until
    ``adjust`` puts the test in a larger one) and ``supported`` (p_adjusted < ALPHA); ``se``,
    ``p`` and ``supported`` are None when a side has a single value or there is no spread."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    delta = float(np.mean(a) - np.mean(b))
    out = Difference(delta=delta, test=PAIRED if paired else WELCH, n=[len(a), len(b)])
    if len(a) < 2 or len(b) < 2 or (paired and len(a) != len(b)):
        return out
    if paired:
        diffs = np.subtract(a, b)
        se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
        result = stats.ttest_rel(a, b) if se > 0 else None
    else:
        se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
        result = stats.ttest_ind(a, b, equal_var=False) if se > 0 else None
    out.se = se
    if result is None:  # identical values on both sides: nothing to test
        return out
    out.t, out.df, out.p = float(result.statistic), float(result.df), float(result.pvalue)
    out.critical = float(stats.t.ppf(1 - ALPHA / 2, out.df))
    adjust(out, out.p, family=1)
    return out


def adjust(d: Difference, p_adjusted: float, family: int) -> None:
    """Record ``d``'s adjusted p in a family of ``family`` tests; supported: below ALPHA."""
    d.p_adjusted, d.family = p_adjusted, family
    d.supported = bool(p_adjusted < ALPHA)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given. With the m p-values sorted,
    p(1) ≤ … ≤ p(m), the adjusted p(i) = max over j ≤ i of min(1, (m − j + 1)·p(j)): the running
    maximum keeps them in the order of the raw ones, and tied raw p-values get the same
    adjusted one whatever their order. A test is rejected at level α where its adjusted p is
    below α, which holds the chance of any false rejection in the family under α.
    Example: 0.01, 0.04, 0.03 → 0.03, 0.06, 0.06."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(d: Difference) -> str:
    """The difference in words: the test, its statistic and whether it is supported."""
    if d.supported is None:
        if d.se is None:
            return "untested: an arm has a single seed, so its spread is unknown"
        return "untested: no spread over seeds on either side"
    df = f"{d.df:.1f}" if d.test == WELCH else f"{d.df:.0f}"
    word = "supported" if d.supported else "not supported"
    relation = "<" if d.supported else "≥"
    test = f"{word} by {d.test}: t = {d.t:.2f}, df = {df}, p = {p_value(d.p)}"
    if (d.family or 1) < 2:
        return f"{test} {relation} {ALPHA}"
    return f"{test}, Holm-adjusted p = {p_value(d.p_adjusted)} {relation} {ALPHA}"


def p_value(p: float) -> str:
    """Three decimals; below 0.001 two significant figures, not "0.000"."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
