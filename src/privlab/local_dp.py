r"""Local differential privacy: frequency estimation when no one is trusted.

Each person randomises their own value :math:`v \in \{0, \dots, k-1\}` before
sending it; the report is :math:`\varepsilon`-DP for that person against *any*
change of their value (replace-one, privacy unit: one person's report), whatever
the server does. The server debiases the sum of the reports. With
:math:`p = \Pr[\text{report supports } v \mid v]` and
:math:`q = \Pr[\text{report supports } v \mid v' \ne v]`, the unbiased count is
:math:`\hat c_v = (\#\{\text{reports supporting } v\} - nq)/(p - q)`, of variance
(Wang et al. 2017, Theorem 2)

.. math::
    \operatorname{Var}[\hat c_v] = \frac{n q (1-q)}{(p-q)^2} + \frac{c_v (1-p-q)}{p-q}.

* k-ary randomized response (GRR): report the truth with
  :math:`p = e^\varepsilon/(e^\varepsilon + k - 1)`, else a uniform other value.
* Unary encoding: a one-hot vector of :math:`k` bits, each bit kept with its own
  probability: *symmetric* (basic one-time RAPPOR,
  :math:`p = e^{\varepsilon/2}/(e^{\varepsilon/2}+1)`, :math:`q = 1-p`) or
  *optimised* (OUE, :math:`p = 1/2`, :math:`q = 1/(e^\varepsilon+1)`), whose
  variance :math:`\approx 4e^\varepsilon/(n(e^\varepsilon-1)^2)` on frequencies does
  not grow with :math:`k`.
* Apple's count-mean sketch (CMS): hash the value with one of :math:`h` hash
  functions into :math:`m` buckets, send a :math:`\pm 1` vector with each
  coordinate flipped with probability :math:`1/(1+e^{\varepsilon/2})`.

Against central DP (Laplace on the histogram, frequency variance
:math:`8/(\varepsilon n)^2` under replace-one, the relation local DP protects;
:math:`2/(\varepsilon n)^2` under add/remove), local DP's frequency variance is
larger by a factor of order :math:`n`.

>>> from privlab.config import make_rng
>>> values = np.repeat([0, 1, 2], [6000, 3000, 1000])
>>> est = grr_estimate(grr_perturb(values, k=3, epsilon=2.0, rng=make_rng(0)), k=3, epsilon=2.0)
>>> np.round(est / len(values), 1)
array([0.6, 0.3, 0.1])

References: Warner (1965); Erlingsson, Pihur, Korolova (2014), "RAPPOR",
arXiv:1407.6981; Wang, Blocki, Li, Jha (2017), "Locally differentially private
protocols for frequency estimation", USENIX Security; Apple Differential Privacy
Team (2017), "Learning with privacy at scale" (count-mean sketch).

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

from privlab._validate import check_array, check_epsilon, check_int, check_probability, check_rng
from privlab.mechanisms import threshold_at_least, threshold_at_most

__all__ = [
    "grr_probabilities", "grr_perturb", "grr_estimate",
    "unary_probabilities", "unary_perturb", "unary_estimate",
    "cms_client", "cms_estimate", "cms_collision_matrix",
    "frequency_variance", "central_laplace_frequency_variance",
]  # fmt: skip


def _values(values, k: int) -> np.ndarray:
    v = check_array("values", values)
    if v.ndim != 1 or not np.all(v == np.round(v)) or v.min() < 0 or v.max() >= k:
        raise ValueError(f"values must be a 1-D array of integers in [0, {k}), got range "
                         f"[{v.min()}, {v.max()}] and shape {v.shape}")
    return v.astype(np.int64)


def _debias(support_counts: np.ndarray, n: int, p: float, q: float) -> np.ndarray:
    return (support_counts - n * q) / (p - q)


# ---------------------------------------------------------------- k-ary randomized response


def grr_probabilities(*, k: int, epsilon) -> tuple[float, float]:
    r"""GRR's :math:`(p, q) = (e^\varepsilon, 1)/(e^\varepsilon + k - 1)`: :math:`p/q = e^\varepsilon`.

    >>> p, q = grr_probabilities(k=2, epsilon=math.log(3))
    >>> round(p, 6), round(q, 6)
    (0.75, 0.25)
    """
    k, eps = check_int("k", k, minimum=2), check_epsilon(epsilon)
    # divided through by e^eps: no overflow for a large epsilon (math.exp(800) raises)
    denom = 1 + (k - 1) * math.exp(-eps)
    return 1 / denom, math.exp(-eps) / denom


def grr_perturb(values, *, k: int, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""Each person's report under k-ary randomized response (:math:`\varepsilon`-LDP)."""
    k = check_int("k", k, minimum=2)
    v = _values(values, k)
    p, _ = grr_probabilities(k=k, epsilon=epsilon)
    # P(U < t) = t on the uniform's 2^-53 grid: t <= p keeps the ratio <= e^eps (p itself rounds to
    # 1.0 for eps >= 38: never a change); t >= 1/k keeps the truth at least as likely as each other value
    t = threshold_at_most(p)
    if t < 1 / k:
        t = threshold_at_least(1 / k)
        if t > p:
            raise ValueError(f"epsilon = {epsilon} is too small to realise with double-precision uniforms "
                             f"for k = {k} (p - 1/k is below 2^-53)")
    rng = check_rng(rng)
    keep = rng.random(v.size) < t
    other = (v + rng.integers(1, k, size=v.size)) % k    # uniform over the k - 1 other values
    return np.where(keep, v, other)


def grr_estimate(reports, *, k: int, epsilon) -> np.ndarray:
    """Unbiased counts from GRR reports."""
    r = _values(reports, check_int("k", k, minimum=2))
    p, q = grr_probabilities(k=k, epsilon=epsilon)
    return _debias(np.bincount(r, minlength=k).astype(float), r.size, p, q)


# ---------------------------------------------------------------- unary encoding (RAPPOR, OUE)


def unary_probabilities(*, epsilon, kind: str = "optimized") -> tuple[float, float]:
    r"""Bit probabilities :math:`(p, q)` of unary encoding.

    ``"symmetric"`` (basic one-time RAPPOR): :math:`p = e^{\varepsilon/2}/(e^{\varepsilon/2}+1)`,
    :math:`q = 1 - p`; ``"optimized"`` (OUE): :math:`p = 1/2`, :math:`q = 1/(e^\varepsilon + 1)`.
    Both satisfy :math:`\frac{p(1-q)}{(1-p)q} = e^\varepsilon` (two bits change between any two values).

    >>> unary_probabilities(epsilon=math.log(3), kind="optimized")
    (0.5, 0.25)
    """
    eps = check_epsilon(epsilon)
    if kind == "symmetric":  # q from its own formula, accurate however small (1 - p is not)
        return float(expit(eps / 2)), float(expit(-eps / 2))
    if kind == "optimized":
        return 0.5, float(expit(-eps))
    raise ValueError(f"kind must be 'symmetric' or 'optimized', got {kind!r}")


def unary_perturb(values, *, k: int, epsilon, rng: np.random.Generator, kind: str = "optimized"):
    """Each person's ``k``-bit report (an ``(n, k)`` boolean array)."""
    v = _values(values, check_int("k", k, minimum=2))
    p, q = unary_probabilities(epsilon=epsilon, kind=kind)
    # on the uniform's 2^-53 grid, p rounded down and q up: p(1-q)/((1-p)q) can only shrink (symmetric
    # p rounds to 1.0 and q to 0.0 for eps >= 75; optimized q to 0.0 beyond 745: a 1 named the value)
    p, q = threshold_at_most(p), threshold_at_least(q)
    if p < q:
        raise ValueError(f"epsilon = {epsilon} is too small to realise with double-precision uniforms")
    u = check_rng(rng).random((v.size, k))
    onehot = np.zeros((v.size, k), dtype=bool)
    onehot[np.arange(v.size), v] = True
    return np.where(onehot, u < p, u < q)


def unary_estimate(reports, *, epsilon, kind: str = "optimized") -> np.ndarray:
    """Unbiased counts from unary-encoding reports."""
    raw = np.asarray(reports)
    if raw.ndim != 2 or not np.isin(raw, (0, 1)).all():  # a cast to bool reads -1, 2 and NaN as 1
        raise ValueError(f"reports must be an (n, k) array of bits (0/1 or booleans), got shape {raw.shape}"
                         + ("" if raw.ndim != 2 else f" and values {np.unique(raw[~np.isin(raw, (0, 1))])[:3]}"))
    bits = raw.astype(bool)
    p, q = unary_probabilities(epsilon=epsilon, kind=kind)
    return _debias(bits.sum(axis=0).astype(float), bits.shape[0], p, q)


# ---------------------------------------------------------------- count-mean sketch (Apple 2017)

_PRIME = 2_147_483_647  # 2^31 - 1: hash h_j(v) = ((a_j v + b_j) mod P) mod m


def _hashes(h: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The public hash family, fixed by a public ``seed`` (never the data)."""
    g = np.random.default_rng(seed)
    return g.integers(1, _PRIME, size=h), g.integers(0, _PRIME, size=h)


def _bucket(v: np.ndarray, j: np.ndarray, a, b, m: int) -> np.ndarray:
    return ((a[j] * v + b[j]) % _PRIME) % m


def cms_client(values, *, epsilon, m: int, h: int, rng: np.random.Generator, hash_seed: int = 0):
    r"""Apple's count-mean sketch, client side: :math:`(j, \tilde v)` per person.

    Each person draws a hash index :math:`j`, writes :math:`v = -\mathbf 1_m` with
    :math:`v_{h_j(d)} = 1`, and flips each coordinate with probability
    :math:`1/(1 + e^{\varepsilon/2})`: :math:`\varepsilon`-LDP.

    Returns:
        ``(j, signs)``: the hash indices, shape ``(n,)``, and the ``(n, m)`` :math:`\pm 1` reports.
    """
    d = _integer_values("values", values)
    eps = check_epsilon(epsilon)
    m, h = check_int("m", m, minimum=2), check_int("h", h)
    rng = check_rng(rng)
    a, b = _hashes(h, hash_seed)
    j = rng.integers(0, h, size=d.size)
    v = -np.ones((d.size, m))
    v[np.arange(d.size), _bucket(d, j, a, b, m)] = 1.0
    # rounded up onto the uniform's 2^-53 grid (never 0: it underflows for eps > 1490), at most 1/2
    flip = rng.random((d.size, m)) < min(threshold_at_least(float(expit(-eps / 2))), 0.5)
    return j, np.where(flip, -v, v)


def _integer_values(name: str, values) -> np.ndarray:
    """``values`` as int64, refusing fractions (truncation would move them to another bucket)."""
    d = check_array(name, values, ndim=1)
    if not np.all(d == np.round(d)):
        raise ValueError(f"{name} must be integers, got {d[d != np.round(d)][0]}")
    return d.astype(np.int64)


def cms_collision_matrix(candidates, *, m: int, h: int,
                         hash_seed: int = 0) -> np.ndarray:
    r""":math:`C[d, e] = \frac1h \sum_j \mathbf 1\{h_j(d) = h_j(e)\}` (public hashes).

    The sketch's readout at :math:`d` has expectation :math:`\sum_e C[d, e]\, n_e`.
    """
    a, b = _hashes(check_int("h", h), hash_seed)
    cand = _integer_values("candidates", candidates)
    buckets = ((a[:, None] * cand[None, :] + b[:, None]) % _PRIME) % check_int("m", m)
    return (buckets[:, :, None] == buckets[:, None, :]).mean(axis=0)


def cms_estimate(j, signs, candidates, *, epsilon, m: int, h: int, hash_seed: int = 0,
                 debias: str = "apple") -> np.ndarray:
    r"""Count-mean sketch, server side: estimated counts of each candidate value.

    With :math:`c_\varepsilon = (e^{\varepsilon/2}+1)/(e^{\varepsilon/2}-1)`,
    :math:`x = h (c_\varepsilon \tilde v/2 + 1/2)` is added to row :math:`j` of the
    sketch :math:`M`; the readout :math:`R_d = \frac1h \sum_{j} M_{j, h_j(d)}` has
    expectation :math:`\sum_e C[d, e]\, n_e` (:func:`cms_collision_matrix`).

    ``debias="apple"`` (Apple 2017):
    :math:`\hat f(d) = \frac{m}{m-1}\big(R_d - \frac nm\big)`, which assumes every pair
    of values collides with probability :math:`1/m`: true on average over a *random*
    hash family, not for the fixed public one, so it is biased (by about :math:`-(n -
    n_d)/(m-1)` when the candidates rarely collide). ``debias="exact"``: solve :math:`C
    \hat n = R` over the candidates, unbiased when every value is a candidate and
    :math:`C` is invertible.
    """
    eps = check_epsilon(epsilon)
    c_eps = 1 / math.tanh(eps / 4)  # (e^(eps/2) + 1) / (e^(eps/2) - 1), without overflow
    m, h = check_int("m", m, minimum=2), check_int("h", h)
    signs = np.asarray(signs, dtype=float)
    if signs.ndim != 2 or signs.shape[1] != m or not np.isin(signs, (-1.0, 1.0)).all():
        odd = signs[~np.isin(signs, (-1.0, 1.0))].ravel()[:1].tolist()
        raise ValueError(f"signs must be an (n, m={m}) array of -1 and +1, got shape {signs.shape}"
                         + (f" and a value {odd[0]}" if odd else ""))
    n = signs.shape[0]
    j = np.asarray(j)
    if j.shape != (n,) or j.dtype.kind not in "iu" or (n and (j.min() < 0 or j.max() >= h)):
        raise ValueError(f"j must be {n} integer hash indices in [0, h={h}), got shape {j.shape}"
                         + (f", range [{j.min()}, {j.max()}]" if j.size and j.dtype.kind in "iuf" else ""))
    sketch = np.zeros((h, m))
    np.add.at(sketch, np.asarray(j), h * (c_eps * signs / 2 + 0.5))
    a, b = _hashes(h, hash_seed)
    cand = _integer_values("candidates", candidates)
    rows = np.arange(h)[:, None]
    buckets = ((a[:, None] * cand[None, :] + b[:, None]) % _PRIME) % m        # (h, candidates)
    readout = sketch[rows, buckets].mean(axis=0)
    if debias == "apple":
        return m / (m - 1) * (readout - n / m)
    if debias == "exact":
        C = cms_collision_matrix(cand, m=m, h=h, hash_seed=hash_seed)
        return np.linalg.solve(C, readout)
    raise ValueError(f"debias must be 'apple' or 'exact', got {debias!r}")


# ---------------------------------------------------------------- closed-form variances


def frequency_variance(*, p: float, q: float, n: int, f: float = 0.0) -> float:
    r"""Variance of a debiased *frequency* :math:`\hat c_v / n` (Wang et al. 2017, Theorem 2).

    .. math::  \frac{q(1-q)}{n (p-q)^2} + \frac{f (1-p-q)}{n (p-q)}

    >>> p, q = unary_probabilities(epsilon=1.0)
    >>> round(frequency_variance(p=p, q=q, n=1000), 6) == round(4 * math.e / (1000 * (math.e - 1) ** 2), 6)
    True
    """
    n = check_int("n", n)
    p = check_probability("p", p, open_high=True)
    q = check_probability("q", q, open_high=True)
    f = check_probability("f", f, open_low=False)
    if not q < p:  # a report that says more often "yes" for other values is no frequency oracle
        raise ValueError(f"the probabilities must satisfy q < p (p: report the true value, q: another), "
                         f"got p={p!r}, q={q!r}")
    return q * (1 - q) / (n * (p - q) ** 2) + f * (1 - p - q) / (n * (p - q))


def central_laplace_frequency_variance(*, epsilon, n: int,
                                       relation: str = "add/remove") -> float:
    r"""Central DP baseline: a histogram with Laplace noise per count, over :math:`n`.

    ``relation="add/remove"``: L1 sensitivity 1, :math:`\mathrm{Lap}(1/\varepsilon)`,
    variance :math:`2/(\varepsilon n)^2`. ``"replace-one"`` (like for like with local
    DP, whose reports protect any change of a value): one count -1 and another +1, L1
    sensitivity 2, :math:`\mathrm{Lap}(2/\varepsilon)`, variance :math:`8/(\varepsilon
    n)^2`.

    >>> central_laplace_frequency_variance(epsilon=1.0, n=10, relation="replace-one")
    0.08
    """
    eps, n = check_epsilon(epsilon), check_int("n", n)
    if relation not in ("add/remove", "replace-one"):
        raise ValueError(
            f"relation must be 'add/remove' or 'replace-one', got {relation!r}")
    sens = 1.0 if relation == "add/remove" else 2.0
    return 2 * sens**2 / (eps * n) ** 2
