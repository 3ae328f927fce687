"""Tests of privlab.sensitivity: every closed-form sensitivity against a brute-force search over
neighbouring datasets (the empirical maximum never exceeds the claim, and extreme neighbours attain
it), and invalid input. The Gaussian calibrations are tested in test_mechanisms.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.config import make_rng
from privlab.sensitivity import (
    bounded_mean,
    bounded_mean_sensitivity,
    bounded_sum,
    bounded_sum_sensitivity,
    clip,
    counting_sensitivity,
    histogram_l1_sensitivity,
    histogram_l2_sensitivity,
    l1_sensitivity,
    l2_sensitivity,
)

FAST = settings(max_examples=30, deadline=None)
BOUNDS = [(0.0, 1.0), (-2.0, 5.0), (-7.0, -3.0), (-4.0, 4.0)]


def _add_remove_pairs(data: list, candidates) -> list:
    """(D, D + x) for every candidate record x, and (D, D - x_i) for every record in D."""
    pairs = [(data, data + [x]) for x in candidates]
    pairs += [(data, data[:i] + data[i + 1 :]) for i in range(len(data))]
    return pairs


def _replace_pairs(data: list, candidates) -> list:
    """(D, D with record i replaced by x) for every i and every candidate x."""
    return [(data, data[:i] + [x] + data[i + 1 :]) for i in range(len(data)) for x in candidates]


def test_clip():
    np.testing.assert_array_equal(clip([-3.0, 0.5, 7.0], 0, 1), [0.0, 0.5, 1.0])
    assert clip(np.ones((2, 3)), -1, 0).shape == (2, 3)
    assert clip([5.0], 2, 2).tolist() == [2.0]


def test_bounded_queries():
    assert bounded_sum([1.0, 5.0, 30.0], lower=0, upper=10) == 16.0
    assert bounded_mean([1.0, 5.0, 30.0], lower=0, upper=10) == pytest.approx(16.0 / 3)


def test_counting_sensitivity_is_attained():
    count = lambda d: sum(1 for x in d if x > 0)  # noqa: E731
    data = [1.0, -1.0, 2.0]
    pairs = _add_remove_pairs(data, [3.0, -3.0]) + _replace_pairs(data, [3.0, -3.0])
    assert l1_sensitivity(count, pairs) == counting_sensitivity() == 1.0


@pytest.mark.parametrize(("lower", "upper"), BOUNDS)
def test_bounded_sum_sensitivity_matches_brute_force(lower, upper):
    rng = make_rng(0)
    data = list(rng.uniform(lower - 3, upper + 3, size=6))  # raw data, some outside the bounds
    candidates = [lower - 10, lower, 0.5 * (lower + upper), upper, upper + 10]
    f = lambda d: bounded_sum(d, lower=lower, upper=upper) if d else 0.0  # noqa: E731
    claimed_ar = bounded_sum_sensitivity(lower=lower, upper=upper, neighbouring="add_remove")
    claimed_rep = bounded_sum_sensitivity(lower=lower, upper=upper, neighbouring="replace")
    assert claimed_ar == max(abs(lower), abs(upper)) and claimed_rep == upper - lower
    # the brute-force maximum never exceeds the claim, and the extreme candidates attain it
    assert l1_sensitivity(f, _add_remove_pairs(data, candidates)) == pytest.approx(claimed_ar)
    # replacing needs a record clipped to one end and a candidate at the other
    data_rep = data + [lower - 1, upper + 1]
    assert l1_sensitivity(f, _replace_pairs(data_rep, candidates)) == pytest.approx(claimed_rep)


@pytest.mark.parametrize(("lower", "upper"), BOUNDS)
def test_bounded_mean_sensitivity_matches_brute_force(lower, upper):
    data = [lower, upper, 0.5 * (lower + upper), upper + 3]
    f = lambda d: bounded_mean(d, lower=lower, upper=upper)  # noqa: E731
    pairs = _replace_pairs(data, [lower - 5, lower, upper, upper + 5])
    assert l1_sensitivity(f, pairs) == pytest.approx(bounded_mean_sensitivity(lower=lower, upper=upper, n=len(data)))


def test_histogram_sensitivities_match_brute_force():
    bins = 4
    hist = lambda d: np.bincount(np.asarray(d, dtype=int), minlength=bins)  # noqa: E731
    for data in ([0, 1, 1, 3], [2, 2, 2], [0, 1, 2, 3, 3]):
        ar, rep = _add_remove_pairs(list(data), range(bins)), _replace_pairs(list(data), range(bins))
        assert l1_sensitivity(hist, ar) == histogram_l1_sensitivity(neighbouring="add_remove") == 1.0
        assert l2_sensitivity(hist, ar) == histogram_l2_sensitivity(neighbouring="add_remove") == 1.0
        assert l1_sensitivity(hist, rep) == histogram_l1_sensitivity(neighbouring="replace") == 2.0
        assert l2_sensitivity(hist, rep) == pytest.approx(histogram_l2_sensitivity(neighbouring="replace"))
    assert histogram_l2_sensitivity(neighbouring="replace") == pytest.approx(math.sqrt(2))


def test_empirical_sensitivity_accepts_any_iterable():
    pairs = (([x], [x, x + 1]) for x in range(3))  # a generator, consumed once
    assert l2_sensitivity(lambda d: np.array([len(d), sum(d)]), pairs) == pytest.approx(math.sqrt(1 + 9))


# ----------------------------------------------------------------------------- invalid input

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@FAST
@given(bad=NOT_FINITE, which=st.sampled_from(["lower", "upper"]))
def test_non_finite_bounds_raise(bad, which):
    bounds = {"lower": 0.0, "upper": 1.0, which: bad}
    with pytest.raises(ValueError, match=which):
        clip([0.5], **bounds)
    with pytest.raises(ValueError, match=which):
        bounded_sum_sensitivity(**bounds)
    with pytest.raises(ValueError, match=which):
        bounded_mean_sensitivity(**bounds, n=10)
    with pytest.raises(ValueError, match=which):
        bounded_sum([0.5], **bounds)


@FAST
@given(lower=st.floats(-1e6, 1e6), gap=st.floats(min_value=1e-3, max_value=1e6))
def test_lower_above_upper_raises(lower, gap):
    with pytest.raises(ValueError, match="lower must be <= upper"):
        bounded_sum_sensitivity(lower=lower + gap, upper=lower)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        clip([0.0], lower + gap, lower)


@FAST
@given(
    values=st.lists(st.floats(-10, 10), min_size=1, max_size=10),
    position=st.integers(min_value=0),
    bad=NOT_FINITE,
)
def test_values_with_nan_or_inf_raise(values, position, bad):
    values[position % len(values)] = bad
    for query in (lambda v: clip(v, 0, 1), lambda v: bounded_sum(v, lower=0, upper=1), lambda v: bounded_mean(v, lower=0, upper=1)):
        with pytest.raises(ValueError, match="finite"):
            query(values)


@pytest.mark.parametrize("empty", [[], np.zeros(0), np.zeros((0, 2))])
def test_empty_values_raise(empty):
    for query in (lambda v: clip(v, 0, 1), lambda v: bounded_sum(v, lower=0, upper=1), lambda v: bounded_mean(v, lower=0, upper=1)):
        with pytest.raises(ValueError, match="empty"):
            query(empty)


@FAST
@given(n=st.one_of(st.integers(max_value=0), st.floats(0.1, 0.9), st.sampled_from([math.nan, 2.5])))
def test_invalid_n_raises(n):
    with pytest.raises(ValueError, match="n must be"):
        bounded_mean_sensitivity(lower=0, upper=1, n=n)


@FAST
@given(name=st.text(max_size=12).filter(lambda s: s not in ("add_remove", "replace", "add/remove", "replace-one")))
def test_unknown_neighbouring_relation_raises(name):
    for fn in (histogram_l1_sensitivity, histogram_l2_sensitivity):
        with pytest.raises(ValueError, match="neighbouring"):
            fn(neighbouring=name)
    with pytest.raises(ValueError, match="neighbouring"):
        bounded_sum_sensitivity(lower=0, upper=1, neighbouring=name)


def test_empirical_sensitivity_errors():
    with pytest.raises(ValueError, match="at least one pair"):
        l1_sensitivity(len, [])
    with pytest.raises(ValueError, match="same shape"):
        l1_sensitivity(lambda d: np.zeros(len(d)), [([1], [1, 2])])
    with pytest.raises(ValueError, match="finite"):
        l2_sensitivity(lambda d: np.array([math.nan]), [([1], [2])])
    with pytest.raises(ValueError, match="pairs"):
        l1_sensitivity(len, [([1], [2], [3])])


def test_pipeline_spellings_of_the_relations_are_accepted():
    from privlab.pipeline import NEIGHBOURING as PIPELINE_NEIGHBOURING

    assert PIPELINE_NEIGHBOURING == ("add/remove", "replace-one")
    for book, here in zip(PIPELINE_NEIGHBOURING, ("add_remove", "replace")):
        assert histogram_l1_sensitivity(neighbouring=book) == histogram_l1_sensitivity(neighbouring=here)
        assert bounded_sum_sensitivity(lower=-2, upper=5, neighbouring=book) == \
            bounded_sum_sensitivity(lower=-2, upper=5, neighbouring=here)
    with pytest.raises(ValueError, match="neighbouring"):
        histogram_l1_sensitivity(neighbouring=None)
