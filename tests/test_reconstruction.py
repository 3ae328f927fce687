"""Dinur-Nissim reconstruction: exact without noise, failing at noise ~ sqrt(n)."""

import numpy as np
import pytest

from privlab import reconstruction as rc


def test_exact_answers_reconstruct_every_bit():
    x = (np.random.default_rng(0).random(100) < 0.5).astype(int)
    r = rc.reconstruction_attack(
        x, queries=400, noise_bound=0.0, rng=np.random.default_rng(1)
    )
    assert r.accuracy == 1.0 and r.queries == 400


def test_small_noise_recovers_most_large_noise_little():
    n = 150
    x = (np.random.default_rng(2).random(n) < 0.5).astype(int)
    small = [
        rc.reconstruction_attack(
            x, queries=4 * n, noise_bound=0.1 * np.sqrt(n), rng=np.random.default_rng(s)
        ).accuracy
        for s in range(3)
    ]
    large = [
        rc.reconstruction_attack(
            x, queries=4 * n, noise_bound=4 * np.sqrt(n), rng=np.random.default_rng(s)
        ).accuracy
        for s in range(3)
    ]
    assert np.mean(small) > 0.95
    assert np.mean(large) < 0.8
    assert np.mean(small) - np.mean(large) > 0.15


def test_answers_respect_the_noise_bound():
    rng = np.random.default_rng(3)
    x = np.array([1, 0, 1, 1])
    q = rc.random_subsets(4, 500, rng=rng)
    a = rc.noisy_subset_sums(x, q, noise_bound=0.5, rng=rng)
    assert np.all(np.abs(a - q @ x) <= 0.5)


@pytest.mark.parametrize("bad", [[0, 2, 1], [], [[0, 1]]])
def test_bad_bits_raise(bad):
    with pytest.raises(ValueError):
        rc.noisy_subset_sums(
            bad, np.ones((1, 3)), noise_bound=0.0, rng=np.random.default_rng(0)
        )


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="noise_bound"):
        rc.noisy_subset_sums([0, 1], np.ones((1, 2)), noise_bound=-1.0, rng=rng)
    with pytest.raises(ValueError, match="shape"):
        rc.noisy_subset_sums([0, 1], np.ones((1, 3)), noise_bound=0.0, rng=rng)
    with pytest.raises(ValueError, match="answers"):
        rc.reconstruct(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        rc.reconstruct(np.ones((2, 3)), np.array([1.0, np.nan]))
