"""privlab.verdicts: the chapters' seed-replicate comparisons, against direct computations."""

import math

import numpy as np
import pytest
from scipy import stats

from privlab import verdicts as V


def test_paired_equivalence_is_two_one_sided_tests():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = rng.normal(rng.normal(0, 0.005), 0.004, int(rng.integers(3, 20)))
        r = V.paired_equivalence(d, margin=0.005)
        lo, hi = r["90% interval"]
        se = d.std(ddof=1) / math.sqrt(d.size)
        # TOST at 5%: both one-sided t tests reject |mean| >= margin
        t_lo = (d.mean() + 0.005) / se
        t_hi = (d.mean() - 0.005) / se
        q = stats.t.ppf(0.95, d.size - 1)
        assert (r["verdict"] == "flat") == (t_lo > q and t_hi < -q)
        assert (r["verdict"] == "flat") == (-0.005 < lo and hi < 0.005)
        if r["verdict"] == "gap":  # the 95% two-sided test rejects a zero mean
            assert stats.ttest_1samp(d, 0.0).pvalue < 0.05


def test_paired_interval_matches_a_t_interval_without_test_variance():
    d = np.array([0.02, 0.01, 0.04, 0.03])
    r = V.paired_interval(d, 0.0, level=0.975)
    lo, hi = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert r["lower"] == pytest.approx(lo) and r["upper"] == pytest.approx(hi) and r["df"] == d.size - 1


def test_two_sample_contrast_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 8), rng.normal(0.9, 2, 12)
    diff, se, resolved = V.two_sample_contrast(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert diff / se == pytest.approx(welch.statistic)
    assert resolved == (welch.pvalue < 0.05)


def test_difference_verdict_and_interval_verdict():
    assert V.difference_verdict(1.0, 0.5) == "holds"
    assert V.difference_verdict(np.array([1.0, -1.0, 0.2]), 0.5).tolist() == ["holds", "contradicted", "unresolved"]
    assert V.interval_verdict(0.02, 0.05, 0.01) == "below by more than the margin"
    assert V.interval_verdict(-0.01, 0.05, 0.01) == "undetermined"


@pytest.mark.parametrize("call,match", [
    (lambda: V.difference_verdict(1.0, -0.1), "-0.1"),
    (lambda: V.difference_verdict(1.0, math.nan), "nan"),
    (lambda: V.paired_equivalence([0.1], margin=0.1), "at least 2"),
    (lambda: V.paired_equivalence([0.1, math.nan], margin=0.1), "finite"),
    (lambda: V.paired_equivalence([0.1, 0.2], margin=0.0), "margin"),
    (lambda: V.paired_equivalence([0.1, 0.2], margin=0.1, alpha=0.5), "alpha"),
    (lambda: V.paired_interval([0.1, 0.2], -1.0), "test_var"),
    (lambda: V.paired_interval([0.1, 0.2], 0.0, level=1.0), "level"),
    (lambda: V.paired_test_var([1], [0]), "rows"),
    (lambda: V.two_sample_contrast([1.0], [1.0, 2.0]), "at least 2"),
])
def test_bad_inputs_name_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_degenerate_inputs_are_errors_not_verdicts():
    # a NaN contrast read "unresolved"; a one-row b broadcast against a; an inverted interval read "flat"
    import math

    from privlab.verdicts import difference_verdict, interval_verdict, paired_test_var

    with pytest.raises(ValueError, match="diff must not be NaN"):
        difference_verdict(math.nan, 0.1)
    with pytest.raises(ValueError, match="diff must not be NaN"):
        difference_verdict(np.array([0.3, math.nan]), 0.1)
    with pytest.raises(ValueError, match=r"same >= 2 rows, got shapes \(4,\) and \(1,\)"):
        paired_test_var([1, 0, 1, 1], [1])
    with pytest.raises(ValueError, match="finite"):
        paired_test_var([1, 0, math.nan], [1, 0, 1])
    with pytest.raises(ValueError, match="lower <= upper"):
        interval_verdict(0.03, 0.002, 0.01)
    with pytest.raises(ValueError, match="lower <= upper"):
        interval_verdict(math.nan, 0.002, 0.01)
    with pytest.raises(ValueError, match="margin"):
        interval_verdict(0.0, 0.002, -0.01)
