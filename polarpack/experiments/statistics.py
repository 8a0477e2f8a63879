"""Statistics over seeds: means, 95% Student t intervals of a difference (paired over seeds, or
Welch's), and the two one-sided tests (TOST) that can call two methods equivalent.

Equivalence within a margin m: both one-sided t tests reject, at level alpha = 0.05, that the
difference is <= -m or >= +m; equivalently, the 90% interval of the difference lies inside
(-m, +m). A 95% interval that includes 0 is not evidence of equivalence; TOST is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A difference a - b with its confidence interval; `low`/`high` are None with one run a
    side (no spread to estimate)."""

    diff: float
    low: float | None
    high: float | None
    df: float
    test: str  # paired t | Welch t | none (n=1)
    level: float = 0.95


@dataclass(frozen=True)
class Equivalence:
    """TOST at alpha: `equivalent` when the (1 - 2 alpha) interval lies inside +-margin."""

    margin: float
    low: float | None
    high: float | None
    p_value: float | None  # the larger of the two one-sided p-values
    equivalent: bool
    alpha: float = 0.05


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
    """(mean difference, its standard error, degrees of freedom), or None without spread."""
    if paired:
        mean, sd = mean_std([x - y for x, y in zip(a, b, strict=True)])
        if sd is None:
            return (mean, None, 0) if mean is not None else None
        return mean, sd / math.sqrt(len(a)), len(a) - 1
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if ma is None or mb is None:
        return None
    if sa is None or sb is None:
        return ma - mb, None, 0
    va, vb = sa**2 / len(a), sb**2 / len(b)
    if va + vb == 0:
        return ma - mb, 0.0, len(a) + len(b) - 2
    # Welch-Satterthwaite, rounded down as tables do (conservative)
    df = math.floor((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
    return ma - mb, math.sqrt(va + vb), df


def t_interval(
    a: Sequence[float], b: Sequence[float], paired: bool, level: float = 0.95
) -> Interval | None:
    """Mean difference a - b and its Student t interval at `level`."""
    found = _difference(a, b, paired)
    if found is None:
        return None
    diff, se, df = found
    if se is None:
        return Interval(diff, None, None, 0, "none (n=1)", level)
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return Interval(diff, diff - half, diff + half, df, "paired t" if paired else "Welch t", level)


def tost(
    a: Sequence[float], b: Sequence[float], paired: bool, margin: float, alpha: float = 0.05
) -> Equivalence | None:
    """Two one-sided t tests of |a - b| < margin."""
    found = _difference(a, b, paired)
    if found is None:
        return None
    diff, se, df = found
    if se is None:
        return Equivalence(margin, None, None, None, False, alpha)
    if se == 0:
        inside = -margin < diff < margin
        return Equivalence(margin, diff, diff, 0.0 if inside else 1.0, inside, alpha)
    p_low = stats.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
    p_high = stats.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
    half = stats.t.ppf(1 - alpha, df) * se
    p = float(max(p_low, p_high))
    return Equivalence(margin, diff - half, diff + half, p, p < alpha, alpha)
