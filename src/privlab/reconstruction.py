r"""Reconstruction from noisy subset sums: the Dinur-Nissim attack by an LP.

A curator holds a secret bit :math:`x_i \in \{0, 1\}` per person (``n`` people)
and answers *subset-sum* queries :math:`a_j = \sum_{i \in S_j} x_i + e_j` with
every error bounded, :math:`|e_j| \le E`. Dinur and Nissim (2003) showed that
if :math:`E = o(\sqrt{n})`, an attacker who asks enough random subsets
recovers all but a small fraction of the bits by solving a linear program.
Their theorem is the attack side only: as :math:`E` grows to order
:math:`\sqrt{n}` and beyond, this attacker's recovery falls off gradually
(chapter 1 measures it), which is not a proof that no attacker succeeds. The LP here finds :math:`\hat x \in [0, 1]^n` minimising the
total residual,

.. math::
    \min_{\hat x \in [0,1]^n,\; t \ge 0} \sum_j t_j
    \quad\text{s.t.}\quad -t_j \le (Q\hat x)_j - a_j \le t_j,

and rounds :math:`\hat x` at 1/2 (Dinur and Nissim's feasibility LP,
:math:`|(Q\hat x)_j - a_j| \le E`, has the true :math:`x` as a solution; the
L1 version needs no knowledge of :math:`E`).

Privacy: this is an *attack*. It shows why aggregate statistics need noise
of the order of :math:`\sqrt{n}` per query, and more as the number of queries
grows, which is what differentially private answers provide.

References: Dinur and Nissim, "Revealing information while preserving
privacy", PODS 2003; Garfinkel, Abowd and Martindale, "Understanding database
reconstruction attacks on public data", CACM 2019 (the Census Bureau's
reconstruction of its 2010 tables).

Used in: chapter 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import bmat, eye

from ._validate import check_int, check_nonnegative, check_rng

__all__ = [
    "ReconstructionResult",
    "noisy_subset_sums",
    "random_subsets",
    "reconstruct",
    "reconstruction_attack",
]


@dataclass(frozen=True)
class ReconstructionResult:
    """What the attacker recovered: the rounded bits and how many are right."""

    estimate: np.ndarray  # (n,) the reconstructed bits, 0 or 1
    accuracy: float  # fraction of bits recovered
    baseline: float  # accuracy of guessing the majority value for everyone
    noise_bound: float
    queries: int


def _check_bits(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"x must be a non-empty 1-d array of bits, got shape {x.shape}"
        )
    if not np.all((x == 0) | (x == 1)):
        raise ValueError("x must contain only 0 and 1")
    return x.astype(float)


def random_subsets(n: int, m: int, *, rng: np.random.Generator) -> np.ndarray:
    r"""``m`` random subsets of ``n`` people: a 0/1 matrix :math:`Q`, shape ``(m, n)``.

    Each person is in each subset independently with probability 1/2.

    Args:
        n: number of people, at least 1.
        m: number of queries, at least 1.
        rng: the source of randomness.

    Returns:
        ``(m, n)`` float array of 0s and 1s.

    >>> random_subsets(4, 2, rng=np.random.default_rng(0)).shape
    (2, 4)
    """
    n, m = check_int("n", n, minimum=1), check_int("m", m, minimum=1)
    return (check_rng(rng).random((m, n)) < 0.5).astype(float)


def noisy_subset_sums(
    x, queries, *, noise_bound: float, rng: np.random.Generator
) -> np.ndarray:
    r"""Answers :math:`a_j = (Qx)_j + e_j` with :math:`e_j \sim U[-E, E]` i.i.d.

    Args:
        x: the secret bits, shape ``(n,)``.
        queries: :math:`Q`, shape ``(m, n)``.
        noise_bound: :math:`E \ge 0`.
        rng: the source of randomness.

    Returns:
        ``(m,)`` answers.

    Raises:
        ValueError: bits not 0/1, shapes that do not match, negative ``noise_bound``.

    >>> q = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    >>> noisy_subset_sums([1, 0, 1], q, noise_bound=0.0, rng=np.random.default_rng(0))
    array([1., 1.])
    """
    x = _check_bits(x)
    Q = np.asarray(queries, dtype=float)
    if Q.ndim != 2 or Q.shape[1] != x.size:
        raise ValueError(f"queries must have shape (m, {x.size}), got {Q.shape}")
    E = check_nonnegative("noise_bound", noise_bound)
    return Q @ x + check_rng(rng).uniform(-E, E, size=Q.shape[0])


def reconstruct(queries, answers) -> np.ndarray:
    r"""Solve the L1 linear program of the module docstring; round the bits at 1/2.

    Args:
        queries: :math:`Q`, shape ``(m, n)``.
        answers: :math:`a`, shape ``(m,)``.

    Returns:
        ``(n,)`` int array of 0s and 1s.

    >>> q = random_subsets(8, 40, rng=np.random.default_rng(1))
    >>> x = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    >>> reconstruct(q, q @ x).tolist()
    [1, 0, 0, 1, 1, 0, 1, 0]
    """
    Q = np.asarray(queries, dtype=float)
    a = np.asarray(answers, dtype=float)
    if Q.ndim != 2 or a.shape != (Q.shape[0],):
        raise ValueError(f"answers must have shape ({Q.shape[0]},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("answers must be finite")
    m, n = Q.shape
    # variables [x (n), t (m)]:  Qx - t <= a  and  -Qx - t <= -a
    I = eye(m, format="csr")
    A_ub = bmat([[Q, -I], [-Q, -I]], format="csr")
    b_ub = np.concatenate([a, -a])
    c = np.concatenate([np.zeros(n), np.ones(m)])
    bounds = [(0.0, 1.0)] * n + [(0.0, None)] * m
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible and bounded
        raise RuntimeError(f"linear program failed: {res.message}")
    return (res.x[:n] > 0.5).astype(int)


def reconstruction_attack(
    x, *, queries: int, noise_bound: float, rng: np.random.Generator
) -> ReconstructionResult:
    """Ask ``queries`` noisy random subset sums, reconstruct the bits, score them.

    Args:
        x: the secret bits, shape ``(n,)``.
        queries: number of random subset-sum queries :math:`m`.
        noise_bound: :math:`E \\ge 0`.
        rng: the source of randomness (subsets and errors).

    Returns:
        :class:`ReconstructionResult`.

    >>> x = (np.random.default_rng(2).random(64) < 0.3).astype(int)
    >>> rng = np.random.default_rng(3)
    >>> r = reconstruction_attack(x, queries=256, noise_bound=0.0, rng=rng)
    >>> r.accuracy
    1.0
    """
    bits = _check_bits(x)
    Q = random_subsets(bits.size, queries, rng=rng)
    a = noisy_subset_sums(bits, Q, noise_bound=noise_bound, rng=rng)
    est = reconstruct(Q, a)
    p = float(bits.mean())
    return ReconstructionResult(
        est,
        float(np.mean(est == bits)),
        max(p, 1 - p),
        float(noise_bound),
        int(queries),
    )
