"""The statistics the reports' verdicts stand on, against scipy and against hand-worked values:
Welch's and the paired t interval with unequal groups, Holm's adjustment, and the power of the
equivalence test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from polarpack.experiments.statistics import (
    detectable_difference,
    holm,
    n_for_power,
    t_interval,
    tost,
    tost_power,
    tost_power_bound,
)


def _se(interval) -> float:
    """The standard error behind an interval: its half-width over the t quantile."""
    return (interval.high - interval.diff) / stats.t.ppf(0.5 + interval.level / 2, interval.df)


def test_welch_with_unequal_groups_is_scipys():
    """3 runs against 8 with different spreads: swapping the two group sizes in the standard error
    changes the statistic by a third, so this catches it."""
    a = [0.52, 0.47, 0.55]
    b = [0.50, 0.51, 0.49, 0.505, 0.495, 0.50, 0.51, 0.49]
    ours = t_interval(a, b, paired=False)
    theirs = stats.ttest_ind(a, b, equal_var=False)
    assert ours.test == "Welch t"
    assert ours.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert ours.diff / _se(ours) == pytest.approx(theirs.statistic, rel=1e-9)
    assert ours.df == math.floor(theirs.df)  # rounded down: a slightly wider interval
    assert ours.p_value == pytest.approx(2 * stats.t.sf(abs(theirs.statistic), ours.df))
    low, high = theirs.confidence_interval(0.95)
    assert ours.low <= low and high <= ours.high
    assert ours.high - ours.low == pytest.approx(high - low, rel=0.1)


ACCURACIES = st.integers(0, 10_000).map(lambda k: k / 10_000)  # correct of 10,000 images


@settings(max_examples=60, deadline=None)
@given(
    st.lists(ACCURACIES, min_size=2, max_size=9),
    st.lists(ACCURACIES, min_size=2, max_size=9),
)
def test_welch_statistic_is_scipys_for_any_groups(a, b):
    ours = t_interval(a, b, paired=False)
    if np.var(a) == 0 or np.var(b) == 0 or ours.high == ours.diff:
        return  # no spread on one side: scipy's Welch is undefined there
    theirs = stats.ttest_ind(a, b, equal_var=False)
    assert ours.diff / _se(ours) == pytest.approx(theirs.statistic, rel=1e-6, abs=1e-9)


def test_paired_interval_and_p_are_scipys():
    a = [0.512, 0.498, 0.530, 0.505, 0.521, 0.489, 0.517]
    b = [0.500, 0.501, 0.515, 0.490, 0.520, 0.480, 0.505]
    ours = t_interval(a, b, paired=True)
    theirs = stats.ttest_rel(a, b)
    low, high = theirs.confidence_interval(0.95)
    assert ours.test == "paired t" and ours.df == 6
    assert (ours.low, ours.high) == (pytest.approx(low), pytest.approx(high))
    assert ours.p_value == pytest.approx(theirs.pvalue)


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03, 0.005: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 is 0.02,
    0.03, 0.06, 0.04; the last may not fall below the one before it: 0.06."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a missing p (no interval) is not part of the family; adjusted values stop at 1
    adjusted = holm([0.2, None, 0.5, 0.01])
    assert adjusted[1] is None
    assert adjusted == [pytest.approx(0.4), None, pytest.approx(0.5), pytest.approx(0.03)]
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == []


@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=12))
def test_holm_never_lowers_a_p_and_keeps_the_order(ps):
    adjusted = holm(ps)
    pairs = [(p, q) for p, q in zip(ps, adjusted, strict=True) if p is not None]
    assert all(p <= q <= 1.0 for p, q in pairs)
    assert [q is None for q in adjusted] == [p is None for p in ps]
    in_order = [q for _, q in sorted(pairs)]
    assert in_order == sorted(in_order)
    if pairs:
        smallest = min(p for p, _ in pairs)
        assert min(q for _, q in pairs) == pytest.approx(min(1.0, len(pairs) * smallest))


@pytest.mark.parametrize("sd, n", [(2.52, 10), (3.6, 10), (1.5, 5), (1.0, 4)])
def test_tost_power_is_what_simulated_tost_does(sd, n):
    """Paired TOST, +-2 margin, true difference 0: the share of 100,000 simulated sets of n
    normal differences that TOST calls equivalent."""
    rng = np.random.default_rng(0)
    d = rng.normal(0.0, sd, (100_000, n))
    mean, half = d.mean(1), stats.t.ppf(0.95, n - 1) * d.std(1, ddof=1) / math.sqrt(n)
    simulated = np.mean((mean - half > -2) & (mean + half < 2))
    assert tost_power(sd, n, 2.0) == pytest.approx(simulated, abs=0.005)
    assert tost_power_bound(sd, n, 2.0) <= tost_power(sd, n, 2.0) + 1e-9


def test_ten_seeds_at_the_observed_spread_have_about_even_odds():
    """At n = 10 and a paired standard deviation of 2.5 points, TOST at +-2 shows a true zero
    difference equivalent about half the time; 80% takes 16 seeds."""
    assert tost_power(2.52, 10, 2.0) == pytest.approx(0.505, abs=0.01)
    assert n_for_power(2.52, 2.0) == 16
    assert tost_power(2.52, 15, 2.0) < 0.8 <= tost_power(2.52, 16, 2.0)
    assert tost_power(2.52, 10, 2.0, true_diff=1.0) < tost_power(2.52, 10, 2.0)
    assert n_for_power(1000.0, 0.01) is None  # past any number of seeds worth running


def test_tost_reports_its_power_when_paired():
    a, b = [0.51, 0.49, 0.50, 0.505, 0.495], [0.50] * 5
    paired = tost(a, b, paired=True, margin=0.02)
    sd = float(np.std(np.subtract(a, b), ddof=1))
    assert paired.power == pytest.approx(tost_power(sd, 5, 0.02))
    assert paired.n_for_80 == n_for_power(sd, 0.02) and paired.n_for_80 <= 5
    unpaired = tost(a, b, paired=False, margin=0.02)
    assert unpaired.power is None and unpaired.n_for_80 is None


@pytest.mark.parametrize("sd, n", [(2.5, 10), (3.6, 5), (1.0, 3), (1.0, 2)])
def test_the_detectable_difference_is_what_a_simulated_t_test_detects_80_percent_of_the_time(sd, n):
    """Paired two-sided t test at 0.05: of 100,000 simulated sets of n normal differences with
    spread sd around the detectable difference, 80% reject no difference."""
    found = detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    d = rng.normal(found, sd, (100_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.005)


def test_the_detectable_difference_scales_with_the_spread_and_comes_with_a_paired_interval():
    """Many pairs: the normal approximation, (1.96 + 0.84) sd / sqrt(n); five seeds at the
    32-px grids' paired spread of about 3.6 points detect a lead of 6 points."""
    assert detectable_difference(1.0, 10_000) * 100 == pytest.approx(2.8016, rel=1e-3)
    assert detectable_difference(3.6, 5) == pytest.approx(6.06, abs=0.01)
    assert detectable_difference(2.0, 5) == pytest.approx(2 * detectable_difference(1.0, 5))
    assert detectable_difference(1.0, 1) is None and detectable_difference(0.0, 5) is None
    a, b = [0.51, 0.49, 0.53, 0.505, 0.495], [0.50, 0.48, 0.50, 0.50, 0.49]
    paired = t_interval(a, b, paired=True)
    sd = float(np.std(np.subtract(a, b), ddof=1))
    assert paired.sd == pytest.approx(sd) and paired.detectable == detectable_difference(sd, 5)
    assert t_interval(a, b, paired=False).detectable is None


def test_no_interval_or_test_where_the_differences_do_not_spread():
    """Three seeds, each one epoch apart: a difference with no error to test it against gets no
    interval (not one of width 0) and no p-value (not 0), so it cannot enter a family as the
    smallest p; nor can TOST call it equivalent."""
    same = t_interval([12, 13, 14], [13, 14, 15], paired=True)
    assert same.diff == -1 and same.low is None and same.high is None and same.p_value is None
    assert same.test == "none (every pair equal)" and same.sd == 0
    assert holm([same.p_value, 0.04]) == [None, 0.04]
    test = tost([12, 13, 14], [13, 14, 15], paired=True, margin=2)
    assert test.p_value is None and not test.equivalent and test.low is None
    alike = t_interval([0.5, 0.5], [0.4, 0.4], paired=False)
    assert alike.low is None and alike.p_value is None and alike.test == "none (no spread)"


def test_welch_counts_only_the_values_present():
    """A missing value is left out of the mean and of the n that scales its variance."""
    a, b = [0.52, 0.47, 0.55], [0.50, 0.51, 0.49, 0.505]
    assert t_interval([*a, None], b, paired=False) == t_interval(a, b, paired=False)
    assert tost([*a, None], b, paired=False, margin=0.1) == tost(a, b, paired=False, margin=0.1)
