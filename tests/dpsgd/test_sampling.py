"""Poisson sampling is exact: Binomial batch sizes, uniform subsets; shuffling warns.

Statistical tests are seeded; thresholds are p-values of 1e-4 or 6 standard errors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from privlab.dpsgd import PoissonAccountingWarning, PoissonSampler, ShuffleSampler, uniform_subset


def gen(seed):
    return torch.Generator().manual_seed(seed)


def chi2_pvalue(observed, expected, min_expected=5.0):
    """Pearson chi-squared p-value, pooling cells (in order) until each expects at least ``min_expected``."""
    observed = np.asarray(observed, dtype=float)
    expected = np.asarray(expected, dtype=float) * observed.sum() / np.sum(expected)  # counts, not probabilities
    obs_pooled, exp_pooled, o_acc, e_acc = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        o_acc, e_acc = o_acc + o, e_acc + e
        if e_acc >= min_expected:
            obs_pooled.append(o_acc)
            exp_pooled.append(e_acc)
            o_acc = e_acc = 0.0
    obs_pooled[-1] += o_acc
    exp_pooled[-1] += e_acc
    obs, exp = np.array(obs_pooled), np.array(exp_pooled)
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("n,q", [(200, 0.05), (40, 0.5), (10**7, 3e-6)])
def test_batch_sizes_are_binomial(n, q):
    sampler = PoissonSampler(n, sample_rate=q, generator=gen(0))
    draws = np.array([sampler.batch_size() for _ in range(5000)])
    support = np.arange(n + 1) if n < 1000 else np.arange(int(n * q + 12 * math.sqrt(n * q)) + 1)
    observed = np.bincount(draws, minlength=support.size)[: support.size]
    assert chi2_pvalue(observed, stats.binom.pmf(support, n, q)) > 1e-4


def test_iterated_batches_have_binomial_sizes_and_uniform_inclusion():
    n, q, steps = 50, 0.1, 4000
    sampler = PoissonSampler(n, sample_rate=q, generator=gen(1), steps=steps)
    counts, sizes = np.zeros(n), []
    for batch in sampler:
        idx = batch.numpy()
        assert batch.dtype == torch.int64 and np.all(np.diff(idx) > 0)  # sorted, no repeats
        counts[idx] += 1
        sizes.append(idx.size)
    # each index is included in each step independently with probability q
    se = math.sqrt(steps * q * (1 - q))
    assert np.all(np.abs(counts - steps * q) < 6 * se)
    assert stats.chisquare(counts).pvalue > 1e-4
    observed = np.bincount(sizes, minlength=n + 1)
    assert chi2_pvalue(observed, stats.binom.pmf(np.arange(n + 1), n, q)) > 1e-4


def test_subsets_of_a_given_size_are_uniform():
    rng = np.random.default_rng(2)
    n, m, draws = 6, 3, 6000
    subsets = {}
    for _ in range(draws):
        key = tuple(uniform_subset(n, m, rng=rng).tolist())
        subsets[key] = subsets.get(key, 0) + 1
    assert len(subsets) == math.comb(n, m)
    assert stats.chisquare(list(subsets.values())).pvalue > 1e-4


@pytest.mark.parametrize("m", [50, 3000])  # Floyd's algorithm (m <= N/20), then the tail-shuffle branch
def test_large_population_inclusion_is_uniform(m):
    rng = np.random.default_rng(3)
    n, reps, buckets = 20_000, 200, 20
    hist = np.zeros(buckets)
    for _ in range(reps):
        s = uniform_subset(n, m, rng=rng).numpy()
        assert np.unique(s).size == m and s.min() >= 0 and s.max() < n
        hist += np.bincount(s * buckets // n, minlength=buckets)
    assert stats.chisquare(hist).pvalue > 1e-4


def test_empty_batches_happen_and_are_empty_tensors():
    sampler = PoissonSampler(5, sample_rate=0.01, generator=gen(4), steps=200)
    sizes = [b.numel() for b in sampler]
    assert sizes.count(0) > 150  # P(empty) = 0.99^5 = 0.95
    assert all(b.dtype == torch.int64 for b in sampler)


def test_full_rate_takes_everything():
    sampler = PoissonSampler(30, sample_rate=1.0, generator=gen(5))
    assert len(sampler) == 1
    assert next(iter(sampler)).tolist() == list(range(30))


def test_sampler_is_deterministic_given_its_generator():
    a = [b.tolist() for b in PoissonSampler(1000, sample_rate=0.02, generator=gen(6))]
    b = [b.tolist() for b in PoissonSampler(1000, sample_rate=0.02, generator=gen(6))]
    c = [b.tolist() for b in PoissonSampler(1000, sample_rate=0.02, generator=gen(7))]
    assert a == b and a != c
    assert len(a) == 50


def test_shuffle_warns_and_covers_each_example_once():
    with pytest.warns(PoissonAccountingWarning, match="arXiv:2403.17673"):
        sampler = ShuffleSampler(23, batch_size=5, generator=gen(8))
    batches = list(sampler)
    assert [b.numel() for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == list(range(23))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoissonAccountingWarning)
        assert len(ShuffleSampler(23, batch_size=5, generator=gen(8), drop_last=True)) == 4


bad_rates = st.one_of(
    st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0, exclude_min=True), st.just(float("nan"))
)


@given(q=bad_rates)
def test_invalid_sample_rate_raises_naming_it(q):
    with pytest.raises(ValueError, match="sample_rate") as err:
        PoissonSampler(100, sample_rate=q, generator=gen(0))
    assert repr(q) in str(err.value)


@given(n=st.integers(max_value=0))
def test_invalid_population_raises(n):
    with pytest.raises(ValueError, match="n must be"):
        PoissonSampler(n, sample_rate=0.1, generator=gen(0))


def test_bad_generator_and_subset_size_raise():
    with pytest.raises(ValueError, match="generator"):
        PoissonSampler(10, sample_rate=0.1, generator=0)
    with pytest.raises(ValueError, match="m must be at most"):
        uniform_subset(5, 6, rng=np.random.default_rng(0))


def test_tiny_sample_rates_and_bad_capacities_are_clear_errors():
    """A red-team read: q = 1e-320 overflowed 1/q (a bare OverflowError) and q = 1e-300 asked for 1e300
    steps an epoch; graph_capacity(n, 2.0) failed with "math domain error"."""
    from privlab.dpsgd import graph_capacity, steps_per_epoch

    assert steps_per_epoch(1e-9) == 10**9
    for q in (1e-320, 1e-300, 9.9e-10):
        with pytest.raises(ValueError, match=rf"sample_rate must be at least 1/1e\+09 .*got {q!r}"):
            steps_per_epoch(q)
    for q in (2.0, float("nan"), 0.0):
        with pytest.raises(ValueError, match=rf"sample_rate must be in \(0, 1\], got {q!r}"):
            graph_capacity(100, q)
    with pytest.raises(ValueError, match="sds must be a finite number >= 0, got -1"):
        graph_capacity(100, 0.1, sds=-1)
