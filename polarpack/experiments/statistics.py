"""Statistics over seeds: means, 95% Student t intervals of a difference (paired over seeds, or
Welch's) with their two-sided p-values, Holm's adjustment of a family of p-values, the two
one-sided tests (TOST) that can call two methods equivalent, the power of those tests, and the
difference a paired t test of so many seeds can detect.

Equivalence within a margin m: both one-sided t tests reject, at level alpha = 0.05, that the
difference is <= -m or >= +m; equivalently, the 90% interval of the difference lies inside
(-m, +m). A 95% interval that includes 0 is not evidence of equivalence; TOST is, and only when
it has the power to say so: `tost_power` gives the chance that TOST calls two methods equivalent
when they are, at the spread the runs showed, and `n_for_power` the seeds that 80% would take.
Likewise an interval that includes 0 is no evidence against an effect the seeds could not have
detected: `detectable_difference` gives the true difference that a paired t test of those seeds
detects with 80% power at the spread they showed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import integrate, optimize, stats


@dataclass(frozen=True)
class Interval:
    """A difference a - b with its confidence interval and the two-sided p-value of "a - b = 0";
    `low`/`high`/`p_value` are None with one run a side, or where the values do not spread (every
    pair's difference the same: no error to estimate, where an interval of width 0 would claim
    certainty)."""

    diff: float
    low: float | None
    high: float | None
    df: float
    test: str  # paired t | Welch t | none (n=1) | none (every pair equal) | none (no spread)
    level: float = 0.95
    p_value: float | None = None
    sd: float | None = None  # paired: the sample spread of the per-seed differences
    detectable: float | None = None  # paired: the true difference detected with 80% power


@dataclass(frozen=True)
class Equivalence:
    """TOST at alpha: `equivalent` when the (1 - 2 alpha) interval lies inside +-margin. For a
    paired test, `power` is the chance that TOST shows equivalence when the true difference is 0
    and the paired spread is the one observed, and `n_for_80` the pairs that 80% power needs."""

    margin: float
    low: float | None
    high: float | None
    p_value: float | None  # the larger of the two one-sided p-values
    equivalent: bool
    alpha: float = 0.05
    power: float | None = None
    n_for_80: int | None = None


def finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the finite values; None where undefined."""
    vals = finite(values)
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _difference(a: Sequence[float], b: Sequence[float], paired: bool):
    """(mean difference, its standard error, degrees of freedom), or None without values; the
    standard error is None with one value a side, 0 where the values do not spread."""
    if paired:
        mean, sd = mean_std([x - y for x, y in zip(a, b, strict=True)])
        if sd is None:
            return (mean, None, 0) if mean is not None else None
        return mean, sd / math.sqrt(len(a)), len(a) - 1
    a, b = finite(a), finite(b)  # Welch's counts are of the values present
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if ma is None or mb is None:
        return None
    if sa is None or sb is None:
        return ma - mb, None, 0
    va, vb = sa**2 / len(a), sb**2 / len(b)
    if va + vb == 0:
        return ma - mb, 0.0, len(a) + len(b) - 2
    # Welch-Satterthwaite, rounded down as tables do (conservative); written with a's share of
    # the variance so that tiny variances do not underflow when squared
    share = va / (va + vb)
    df = math.floor(1 / (share**2 / (len(a) - 1) + (1 - share) ** 2 / (len(b) - 1)))
    return ma - mb, math.sqrt(va + vb), df


def _p_value(diff: float, se: float, df: float) -> float:
    """Two-sided p of "the true difference is 0"."""
    return float(2 * stats.t.sf(abs(diff) / se, df))


def t_interval(
    a: Sequence[float], b: Sequence[float], paired: bool, level: float = 0.95
) -> Interval | None:
    """Mean difference a - b, its Student t interval at `level` and the p-value of no
    difference."""
    found = _difference(a, b, paired)
    if found is None:
        return None
    diff, se, df = found
    if not se:  # one run a side, or no spread: no error to test against, so no p either
        why = "n=1" if se is None else "every pair equal" if paired else "no spread"
        return Interval(diff, None, None, df, f"none ({why})", level, sd=se if paired else None)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    if not paired:
        return Interval(
            diff, diff - half, diff + half, df, "Welch t", level, _p_value(diff, se, df)
        )
    sd = se * math.sqrt(len(a))
    return Interval(
        diff,
        diff - half,
        diff + half,
        df,
        "paired t",
        level,
        _p_value(diff, se, df),
        sd,
        detectable_difference(sd, len(a), alpha=1 - level),
    )


def detectable_difference(
    sd: float, n: int, power: float = 0.8, alpha: float = 0.05
) -> float | None:
    """The true mean difference that a two-sided paired t test of n pairs at level `alpha`
    detects with probability `power`, when the pairs' differences are normal with spread `sd`:
    the statistic is noncentral t with n - 1 degrees of freedom and noncentrality
    difference * sqrt(n) / sd. None with fewer than two pairs or no spread."""
    if n < 2 or not sd > 0:
        return None
    df, se = n - 1, sd / math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)

    def short_of(difference: float) -> float:
        shift = difference / se
        # the lower tail as the upper tail of the mirrored law: nct's cdf is NaN far out
        return stats.nct.sf(critical, df, shift) + stats.nct.sf(critical, df, -shift) - power

    high = se * (critical + 4)
    while short_of(high) < 0:  # heavy tails at few pairs: widen until the power is reached
        high *= 2
    return float(optimize.brentq(short_of, 0.0, high, xtol=1e-12 * high))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment, in the input's order (None stays None and does not count
    toward the family's size): the k-th smallest of m p-values is multiplied by m - k + 1, and
    an adjusted p is never below that of a smaller raw p. Rejecting where the adjusted p < alpha
    keeps the chance of any false rejection in the family at alpha."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def tost_power(
    sd: float, n: int, margin: float, alpha: float = 0.05, true_diff: float = 0.0
) -> float:
    """The chance that paired TOST over n pairs shows equivalence within +-margin when the true
    difference is `true_diff` and the pairs' differences spread by `sd` (normal). Exact: TOST
    accepts when the mean difference lies within margin - t * s / sqrt(n) of 0, so the power is
    that normal probability averaged over the chi-square law of the sample spread s. (The usual
    table value, P1 + P2 - 1 from two noncentral t tails, `tost_power_bound`, is a lower bound
    that reads 0 where the power is still a tenth or more.)"""
    if n < 2:
        return 0.0
    if sd <= 0:
        return float(abs(true_diff) < margin)
    df, se = n - 1, sd / math.sqrt(n)
    critical = stats.t.ppf(1 - alpha, df)

    def accepted(chi2: float) -> float:  # P(accept | the sample variance is sd^2 chi2 / df)
        half = critical * se * math.sqrt(chi2 / df)
        upper = stats.norm.cdf((margin - half - true_diff) / se)
        lower = stats.norm.cdf((half - margin - true_diff) / se)
        return max(0.0, upper - lower) * stats.chi2.pdf(chi2, df)

    largest = df * (margin / (critical * se)) ** 2  # past it, the interval is wider than the margin
    low, high = stats.chi2.ppf([1e-12, 1 - 1e-12], df)  # where the spread's law has its mass
    if largest <= low:
        return 0.0
    power, _ = integrate.quad(accepted, low, min(largest, high), limit=200)
    return float(min(1.0, max(0.0, power)))


def tost_power_bound(
    sd: float, n: int, margin: float, alpha: float = 0.05, true_diff: float = 0.0
) -> float:
    """Power tables' value for paired TOST: each one-sided test rejects when its statistic,
    noncentral t with n - 1 degrees of freedom, exceeds the critical value, and both do with
    probability at least P1 + P2 - 1."""
    if n < 2 or sd <= 0:
        return tost_power(sd, n, margin, alpha, true_diff)
    df, se = n - 1, sd / math.sqrt(n)
    critical = stats.t.ppf(1 - alpha, df)
    lower = stats.nct.sf(critical, df, (true_diff + margin) / se)
    upper = stats.nct.sf(critical, df, (margin - true_diff) / se)
    return float(max(0.0, lower + upper - 1))


def n_for_power(
    sd: float, margin: float, power: float = 0.8, alpha: float = 0.05, limit: int = 10_000
) -> int | None:
    """The fewest pairs with which paired TOST reaches `power` at a true difference of 0 and
    spread `sd`; None past `limit`."""
    if tost_power(sd, limit, margin, alpha) < power:
        return None
    low, high = 1, limit  # power grows with n: bisect
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if tost_power(sd, mid, margin, alpha) >= power else (mid, high)
    return high


def tost(
    a: Sequence[float], b: Sequence[float], paired: bool, margin: float, alpha: float = 0.05
) -> Equivalence | None:
    """Two one-sided t tests of |a - b| < margin; paired, with their power and the n for 80%."""
    found = _difference(a, b, paired)
    if found is None:
        return None
    diff, se, df = found
    if not se:  # one run a side, or no spread: no test (see `t_interval`)
        return Equivalence(margin, None, None, None, False, alpha)
    p_low = stats.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_high = stats.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    half = stats.t.ppf(1 - alpha, df) * se
    p = float(max(p_low, p_high))
    power = needed = None
    if paired:
        sd, n = se * math.sqrt(len(a)), len(a)
        power, needed = tost_power(sd, n, margin, alpha), n_for_power(sd, margin, alpha=alpha)
    return Equivalence(margin, diff - half, diff + half, p, p < alpha, alpha, power, needed)
