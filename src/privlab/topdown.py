r"""The 2020 US Census TopDown algorithm, in miniature.

A geographic hierarchy (nation :math:`\to` regions :math:`\to` areas within regions)
holds, at every node, a histogram of persons over a few cells (say, ethnicity).
TopDown (Abowd et al. 2022) releases it in two phases:

The nodes (the geography) and the cells come from public domains, empty ones included
(:func:`build_hierarchy`), so the shape of the release does not depend on the data.

1. **Measurement.** Every cell of every node at every level gets discrete Gaussian noise
   :math:`\mathcal N_{\mathbb Z}(0, \sigma_\ell^2)`. The national total is an
   *invariant*, published exactly (as the Bureau did for state populations). Add/remove
   neighbours have different totals, so the exact total distinguishes them: the
   guarantee holds only for neighbours that keep the invariant, **replace-one** (privacy
   unit: one person's record changed, the total fixed). One person is in one cell of one
   node per level, and replacing the record moves one cell by -1 and one by +1: L2
   sensitivity :math:`\sqrt 2` per level, so a level with :math:`\rho_\ell =
   1/(2\sigma_\ell^2)` costs :math:`2\rho_\ell` zCDP and the levels compose to
   :math:`\rho = 2\sum_\ell \rho_\ell` (Canonne, Kamath, Steinke 2020).
2. **Post-processing, top down.** At the nation, the noisy histogram is projected (least squares)
   onto non-negative vectors summing to the invariant total, then rounded to integers keeping
   the sum. At each lower level, for every parent and every cell, the children's noisy counts are
   projected onto non-negative values summing to the parent's released count, and rounded. The
   result is consistent (children add up to parents), non-negative and integer, and is
   post-processing of the measurements: no extra privacy cost. The price is *bias*: forcing
   small noisy counts up to zero inflates them, and the total is taken from the large ones.

The Bureau's production system solves these steps as (much larger) least-squares and integer
programs; the miniature uses the closed-form projection onto a scaled simplex (Duchi et al. 2008)
and largest-remainder rounding.

>>> project_to_simplex(np.array([3.0, -1.0, 1.0]), total=2.0)
array([2., 0., 0.])
>>> round_keeping_sum(np.array([0.6, 0.6, 0.8]), total=2)
array([1, 0, 1])

References: Abowd et al. (2022), "The 2020 Census Disclosure Avoidance System TopDown
Algorithm", Harvard Data Science Review, arXiv:2204.08986; Canonne, Kamath, Steinke (2020),
arXiv:2004.00010; Duchi, Shalev-Shwartz, Singer, Chandra (2008), "Efficient projections onto
the l1-ball", ICML.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from privlab._validate import check_array, check_int, check_nonnegative, check_positive, check_rng
from privlab.discrete import sample_discrete_gaussian

__all__ = ["project_to_simplex", "round_keeping_sum", "Hierarchy", "build_hierarchy", "topdown"]


def project_to_simplex(v: np.ndarray, *, total: float) -> np.ndarray:
    r"""Euclidean projection of ``v`` onto :math:`\{x \ge 0, \sum_i x_i = s\}` (Duchi et al. 2008, Fig. 1).

    :math:`x_i = \max(v_i - \theta, 0)` with the threshold :math:`\theta` from the sorted values
    (the sort-based algorithm of Held, Wolfe and Crowder 1974).
    """
    v = check_array("v", v, ndim=1)
    s = check_nonnegative("total", total)
    if s == 0:
        return np.zeros_like(v)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - s
    rho = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    theta = css[rho] / (rho + 1)
    return np.maximum(v - theta, 0.0)


def round_keeping_sum(x: np.ndarray, *, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total``: floors, then +1 to the largest remainders."""
    x = check_array("x", x, ndim=1, allow_empty=True)
    if (x < 0).any():
        raise ValueError(f"x must be >= 0, got {x.tolist()[:8]}")
    total = check_int("total", total, minimum=0)
    floors = np.floor(x).astype(np.int64)
    short = int(total) - int(floors.sum())
    if short < 0 or short > x.size:
        raise ValueError(f"cannot round {x.tolist()} to integers summing to {total}")
    order = np.argsort(-(x - floors), kind="stable")
    floors[order[:short]] += 1
    return floors


@dataclass(frozen=True)
class Hierarchy:
    """True counts per level: ``counts[l]`` is a (nodes at level l, cells) integer array;
    ``parent[l][j]`` is the index of node j's parent at level l - 1 (``parent[0]`` unused)."""

    names: list[list[str]]
    counts: list[np.ndarray]
    parent: list[np.ndarray]
    cells: list[str]


def _codes(values: pd.Series, domain, what: str) -> np.ndarray:
    """Positions of ``values`` in the public ``domain``; a value outside it is an error."""
    codes = pd.Categorical(values, categories=list(domain)).codes.astype(np.int64)
    if np.any(codes < 0):
        bad = sorted(set(values[codes < 0].astype(str)))[:5]
        raise ValueError(f"{what}: values {bad} are not in the public domain {list(domain)}")
    return codes


def build_hierarchy(df: pd.DataFrame, *, levels: list[str], cell: str, level_domains: dict,
                    cell_domain) -> Hierarchy:
    r"""A nation -> ``levels[0]`` -> ``levels[0] x levels[1]`` ... hierarchy of ``cell`` histograms.

    The nodes and cells come from *public* domains, never from the data: level
    :math:`\ell` has one node per element of ``level_domains[levels[0]] x ... x
    level_domains[levels[l-1]]`` (in that order) and every node one count per element of
    ``cell_domain``; a node or cell no record falls in is there with count 0. Were they
    read off the data (``unique()``, ``groupby(observed=True)``), a neighbour that empties
    or creates a node would change the shape of the release.

    Args:
        df: one row per person.
        levels: the geography columns, coarsest first.
        cell: the column of the histogram's categories.
        level_domains: ``{column: its public categories}`` for every column in ``levels``.
        cell_domain: the public categories of ``cell``.

    Raises:
        ValueError: a record's value is not in its public domain, or a domain is missing.

    >>> h = build_hierarchy(pd.DataFrame({"r": ["a", "a"], "c": ["x", "x"]}), levels=["r"],
    ...                     cell="c", level_domains={"r": ["a", "b"]}, cell_domain=["x", "y"])
    >>> h.names, [c.tolist() for c in h.counts]
    ([['nation'], ['a', 'b']], [[[2, 0]], [[2, 0], [0, 0]]])
    """
    missing = [c for c in levels if c not in level_domains]
    if missing:
        raise ValueError(f"level_domains must give the public categories of {missing}")
    cell_domain = list(cell_domain)
    cell_code = _codes(df[cell], cell_domain, f"column {cell!r}")
    k = len(cell_domain)
    names = [["nation"]]
    counts = [np.bincount(cell_code, minlength=k)[None, :].astype(np.int64)]
    parents = [np.zeros(1, dtype=np.int64)]
    node = np.zeros(len(df), dtype=np.int64)          # each record's node at the current depth
    keys: list[tuple] = [()]
    for col in levels:
        domain = list(level_domains[col])
        node = node * len(domain) + _codes(df[col], domain, f"column {col!r}")
        n_nodes = len(keys) * len(domain)
        table = np.zeros((n_nodes, k), dtype=np.int64)
        np.add.at(table, (node, cell_code), 1)
        counts.append(table)
        parents.append(np.arange(n_nodes, dtype=np.int64) // len(domain))   # mixed radix: drop the last digit
        keys = [key + (v,) for key in keys for v in domain]
        names.append([" / ".join(map(str, key)) for key in keys])
    return Hierarchy(names, counts, parents, [str(c) for c in cell_domain])


def topdown(h: Hierarchy, *, rho_per_level, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    r"""Measure every level with discrete Gaussian noise, then post-process top down.

    Args:
        h: the true hierarchy.
        rho_per_level: :math:`\rho_\ell = 1/(2\sigma_\ell^2)` for each level (nation
            first); the release is :math:`2\sum_\ell \rho_\ell`-zCDP under replace-one of
            one person (L2 sensitivity :math:`\sqrt 2` per level), with the national total
            invariant; no finite epsilon under add/remove, whose neighbours differ in
            the total.
        rng: the source of randomness.

    Returns:
        ``(noisy, released)``: the raw noisy measurements and the consistent, non-negative
        integer counts, each a list of arrays shaped like ``h.counts``.
    """
    rhos = [check_positive("rho", r) for r in rho_per_level]
    if len(rhos) != len(h.counts):
        raise ValueError(f"need one rho per level ({len(h.counts)}), got {len(rhos)}")
    rng = check_rng(rng)
    noisy = []
    for counts, rho in zip(h.counts, rhos):
        # sigma^2 = 1 / (2 rho), rounded *up* to a multiple of 10^-6 (more noise, never less; a
        # rounded rho could reach 0 or double a tiny rho's cost), exact for the sampler
        sigma2 = Fraction(math.ceil(Fraction(10**6, 2) / Fraction(rho)), 10**6)
        noisy.append(counts + sample_discrete_gaussian(sigma2, rng=rng, size=counts.shape))
    # the invariant: exact, so only replace-one neighbours (equal totals) are protected
    total = int(h.counts[0].sum())
    released = [round_keeping_sum(project_to_simplex(noisy[0][0], total=total), total=total)[None, :]]
    for level in range(1, len(h.counts)):
        out = np.zeros_like(noisy[level])
        for p, parent_row in enumerate(released[level - 1]):
            kids = np.flatnonzero(h.parent[level] == p)
            for c, target in enumerate(parent_row):
                x = project_to_simplex(noisy[level][kids, c].astype(float), total=float(target))
                out[kids, c] = round_keeping_sum(x, total=int(target))
        released.append(out)
    return noisy, released
