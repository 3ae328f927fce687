r"""Continual release: a running count, private at every step.

A stream :math:`x_1, \dots, x_T \in \{0, 1\}` (one person's event per step;
privacy unit: one event, neighbouring streams differ in one :math:`x_t`) and
the released prefix sums :math:`s_t = \sum_{i \le t} x_i` for every
:math:`t`. Three :math:`\varepsilon`-DP ways:

* *fresh noise per release*: each :math:`s_t` with :math:`\mathrm{Lap}(T/\varepsilon)`
  (one event moves up to :math:`T` releases): error :math:`\Theta(T/\varepsilon)`;
* *noisy increments*: :math:`\tilde s_t = \sum_{i\le t} (x_i + \mathrm{Lap}(1/\varepsilon))`
  (each event in one noisy term): standard deviation :math:`\sqrt{2t}/\varepsilon`;
* the *binary tree* (Chan, Shi and Song 2011; Dwork, Naor, Pitassi, Rothblum
  2010): a noisy count for every dyadic interval; each event lies in
  :math:`L = \lfloor \log_2 T \rfloor + 1 = \lceil \log_2 (T+1) \rceil` intervals that enter
  a released prefix (:func:`tree_levels`), so each node gets
  :math:`\mathrm{Lap}(L/\varepsilon)`, and every prefix is a sum of at most
  :math:`L` nodes: standard deviation at most :math:`\sqrt{2L}\, L/\varepsilon`,
  polylogarithmic in :math:`T`.

The tree's Gaussian version (:func:`tree_prefix_noise`) is the noise of DP-FTRL
(Kairouz et al. 2021, arXiv:2103.00039): the prefix sums of gradients are
released through the tree, with no sampling assumption.

>>> from privlab.config import make_rng
>>> x = np.ones(8)
>>> np.allclose(binary_tree_counts(x, epsilon=1e9, rng=make_rng(0)), np.arange(1, 9), atol=1e-6)
True

References: Dwork, Naor, Pitassi, Rothblum (2010), "Differential privacy under
continual observation", STOC; Chan, Shi, Song (2011), "Private and continual
release of statistics", ACM TISSEC; Kairouz, McMahan, Song, Thakkar, Thakurta,
Xu (2021), "Practical and private (deep) learning without sampling or
shuffling", ICML.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import math

import numpy as np

from privlab._validate import check_array, check_epsilon, check_int, check_positive, check_rng

__all__ = ["tree_levels", "naive_fresh_counts", "noisy_increment_counts", "binary_tree_counts",
           "tree_prefix_noise", "tree_prefix_variance", "tree_error_std"]


def _stream(x) -> np.ndarray:
    """The stream, checked: the noise is calibrated to one event moving a count by at most 1."""
    a = check_array("x", x)
    if a.ndim != 1:
        raise ValueError(f"x must be a 1-D stream, got shape {a.shape}")
    outside = np.flatnonzero((a < 0) | (a > 1))
    if outside.size:
        t = int(outside[0])
        raise ValueError(f"x must lie in [0, 1] (one event per step; the noise is calibrated to "
                         f"sensitivity 1), got x[{t}] = {a[t].item()!r}")
    return a


def tree_levels(T: int) -> int:
    r""":math:`L = \lfloor \log_2 T \rfloor + 1`, the number of tree nodes that contain one step
    and enter some released prefix.

    The prefix :math:`[0, t)` sums one dyadic node per set bit of :math:`t \le T`, so only the
    levels :math:`0, \dots, \lfloor \log_2 T \rfloor` (blocks of :math:`1, 2, \dots, 2^{L-1}`
    steps) are ever released; a step changes one node per level (Chan, Shi and Song 2011).
    For :math:`T = 9` the block of 16 steps would contain every step but enters no prefix, so
    it is not counted (an earlier version counted it: :math:`\lceil \log_2 T \rceil + 1`, more
    noise than needed whenever :math:`T` is not a power of 2).

    >>> tree_levels(1), tree_levels(3), tree_levels(8), tree_levels(9)
    (1, 2, 4, 4)
    """
    T = check_int("T", T)
    return T.bit_length()


def naive_fresh_counts(x, *, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""Every prefix sum with fresh :math:`\mathrm{Lap}(T/\varepsilon)` noise."""
    a = _stream(x)
    return np.cumsum(a) + check_rng(rng).laplace(scale=a.size / check_epsilon(epsilon), size=a.size)


def noisy_increment_counts(x, *, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""Prefix sums of :math:`x_i + \mathrm{Lap}(1/\varepsilon)`."""
    a = _stream(x)
    return np.cumsum(a + check_rng(rng).laplace(scale=1 / check_epsilon(epsilon), size=a.size))


def _tree_noise(T: int, draw) -> np.ndarray:
    """Noise of every prefix [0, t) as the sum of its dyadic nodes' noises, each node drawn once.

    ``draw(k)`` returns the noises of the k nodes of a level, shape ``(k,)`` or ``(k, dim)``.
    """
    L = tree_levels(T)
    node_noise = [draw(-(-T // 2**lvl)) for lvl in range(L)]   # level lvl: blocks of 2^lvl steps
    out = np.zeros((T, *node_noise[0].shape[1:]))
    for t in range(1, T + 1):
        total, start = 0.0, 0
        for lvl in reversed(range(L)):                         # greedy dyadic decomposition of [0, t)
            size = 2**lvl
            if start + size <= t:
                total += node_noise[lvl][start // size]
                start += size
        out[t - 1] = total
    return out


def binary_tree_counts(x, *, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""The binary tree mechanism: every prefix sum, :math:`\varepsilon`-DP in total."""
    a = _stream(x)
    eps = check_epsilon(epsilon)
    rng = check_rng(rng)
    L = tree_levels(a.size)
    return np.cumsum(a) + _tree_noise(a.size, lambda k: rng.laplace(scale=L / eps, size=k))


def tree_prefix_noise(T: int, *, std, rng: np.random.Generator, dim: int = 1) -> np.ndarray:
    r"""Gaussian tree noise for DP-FTRL: row :math:`t` is the noise of the prefix :math:`[0, t]`.

    Each node draws :math:`\mathcal N(0, \sigma^2 I_{dim})`; the prefix noise is the sum
    of at most :math:`L` nodes. With per-step contributions clipped to norm :math:`C`
    and :math:`\sigma = z C`, one example seen once, added or removed (add/remove),
    changes :math:`L` nodes by at most :math:`C` each: the release is the Gaussian
    mechanism with L2 sensitivity :math:`\sqrt L C` (zCDP :math:`\rho = L/(2 z^2)`;
    Kairouz et al. 2021, section 4). Under replace-one (one example's gradient replaced
    by another) each node moves by up to :math:`2C`: L2 sensitivity :math:`2C\sqrt L`,
    :math:`\rho = 2L/z^2`.

    Its variance per coordinate at step :math:`t` (1-based) is
    :math:`\mathrm{popcount}(t)\, \sigma^2` (one node per set bit of :math:`t`;
    :func:`tree_prefix_variance`).

    Returns:
        An array of shape ``(T, dim)``.

    >>> from privlab.config import make_rng
    >>> tree_prefix_noise(5, std=1.0, rng=make_rng(0), dim=3).shape
    (5, 3)
    """
    T, dim = check_int("T", T), check_int("dim", dim)
    std = check_positive("std", std)
    rng = check_rng(rng)
    return _tree_noise(T, lambda k: std * rng.standard_normal((k, dim)))


def tree_prefix_variance(T: int, *, std) -> np.ndarray:
    r"""Variance per coordinate of :func:`tree_prefix_noise` at :math:`t = 1, \dots, T`:
    :math:`\mathrm{popcount}(t)\,\sigma^2`.

    >>> tree_prefix_variance(8, std=2.0).tolist()
    [4.0, 4.0, 8.0, 4.0, 8.0, 8.0, 12.0, 4.0]
    """
    T, std = check_int("T", T), check_positive("std", std)
    return np.array([bin(t).count("1") for t in range(1, T + 1)], dtype=float) * std**2


def tree_error_std(T: int, *, epsilon) -> np.ndarray:
    r"""Exact standard deviation of the tree mechanism's error at each :math:`t`:
    :math:`\sqrt{2\, \mathrm{popcount}(t)}\, L/\varepsilon` (prefix :math:`t` sums one node
    per set bit of :math:`t`)."""
    T, eps = check_int("T", T), check_epsilon(epsilon)
    L = tree_levels(T)
    return np.sqrt(2 * _popcount(np.arange(1, T + 1))) * L / eps


def _popcount(t: np.ndarray) -> np.ndarray:
    """Set bits of each non-negative integer (``numpy.bitwise_count`` where numpy has it).

    >>> _popcount(np.array([1, 2, 3, 7, 8, 1023])).tolist()
    [1, 1, 2, 3, 1, 10]
    """
    t = np.asarray(t, dtype=np.int64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(t).astype(np.int64)
    return np.array([bin(int(v)).count("1") for v in t.ravel()], dtype=np.int64).reshape(t.shape)
