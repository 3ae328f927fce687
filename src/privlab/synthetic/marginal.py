r"""A differentially private marginal synthesizer in the style of MST.

MST (McKenna, Miklau, Sheldon 2021, "Winning the NIST contest", arXiv:2108.04978)
releases a few noisy marginals and samples records consistent with them:

1. discretise every column on a public domain (:mod:`privlab.synthetic.domain`);
2. measure every 1-way marginal with Gaussian noise;
3. select :math:`d-1` pairs of columns forming a maximum spanning tree, one
   edge per round of the exponential mechanism (Kruskal's algorithm), scoring a
   pair :math:`(i, j)` by how far its true 2-way marginal is from independence
   under the noisy 1-way estimates,
   :math:`q(i, j) = \lVert M_{ij} - \hat N \hat p_i \hat p_j^\top \rVert_1`
   (sensitivity 1: one record moves one cell by one);
4. measure the selected 2-way marginals with Gaussian noise;
5. post-process (free under DP): non-negative, mutually consistent marginals,
   and ancestral sampling from the tree (the root's 1-way marginal, then each
   child given its parent), de-discretising numeric columns uniformly in bins.

Privacy in zero-concentrated DP (Bun and Steinke 2016, arXiv:1605.02065), as in
MST. A count vector in which each record adds 1 to one cell has L2
sensitivity 1; measuring it with noise :math:`\mathcal N(0, \sigma^2)` costs
:math:`\rho = 1/(2\sigma^2)`; an exponential-mechanism round with parameter
:math:`\varepsilon_0` costs :math:`\rho = \varepsilon_0^2/8` (it is
:math:`\varepsilon_0`-bounded range, Cesar and Rogers 2021, arXiv:2004.07223).
Costs add. The budget :math:`\rho` comes from :math:`(\varepsilon, \delta)` through
the tight conversion of Canonne, Kamath, Steinke 2020 (arXiv:2004.00010, Prop 12;
``zcdp_to_epsilon(..., conversion="optimal")``), as MST's reference code does
(``cdp_rho`` in private-pgm's ``mechanisms/mst.py``): the largest :math:`\rho` with

.. math::

    \min_{\alpha > 1}\; \rho\alpha + \ln(1 - 1/\alpha) - \frac{\ln\delta + \ln\alpha}{\alpha - 1}
    \le \varepsilon

(:func:`tight_rho_from_epsilon`; at :math:`\varepsilon = 1`, :math:`\delta = 10^{-6}`,
:math:`\rho = 0.0244`, where the classic :math:`\varepsilon = \rho + 2\sqrt{\rho\ln(1/\delta)}`
of Bun and Steinke's Prop 1.3 would allow only :math:`\rho = 0.0175`). It is split as MST
splits it: a third each to 1-way measurements
(:math:`\sigma_1 = \sqrt{3d/(2\rho)}` per marginal), selection
(:math:`\varepsilon_0 = \sqrt{8(\rho/3)/(d-1)}` per round) and 2-way
measurements (:math:`\sigma_2 = \sqrt{3(d-1)/(2\rho)}`), after an optional
share for DP range estimation of numeric columns without public bounds.

Post-processing differs from MST's Private-PGM: each node's counts combine its
1-way and its edges' row sums by inverse-variance weighting and are projected
onto :math:`\{x \ge 0, \sum x = \hat N\}`; each edge table is clipped at 0 and
fitted to its two node marginals by iterative proportional fitting. On a tree
these marginals are consistent, so the sampled records reproduce them.

The number of records is private too: :meth:`MarginalSynthesizer.sample` with no
size draws a DP estimate of it (the inverse-variance average of the noisy 1-way
totals, already paid for); a size passed explicitly must be declared public.

>>> import pandas as pd
>>> from privlab.config import make_rng
>>> df = pd.DataFrame({"a": ["x", "y"] * 500, "b": ["u", "v"] * 500})
>>> public = {"a": ["x", "y"], "b": ["u", "v", "w"]}  # declared, e.g. from a codebook
>>> syn = MarginalSynthesizer(epsilon=1.0, delta=1e-6, domain=public).fit(df, rng=make_rng(0))
>>> syn.sample(4, rng=make_rng(1), n_is_public=True).shape
(4, 2)
>>> abs(len(syn.sample(rng=make_rng(1))) - 1000) < 50  # a DP estimate of the 1000 records
True
>>> syn.privacy_report().epsilon <= 1.0
True

Used in: chapter 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from privlab._validate import check_delta, check_epsilon, check_int, check_probability
from privlab.accounting.zcdp import tight_rho_from_epsilon, zcdp_to_epsilon
from privlab.mechanisms import exponential_mechanism_gumbel
from privlab.synthetic.domain import NumericDomain, dp_numeric_domain, resolve_domain
from privlab.synthetic.tables import as_rng, check_frame, restore_dtypes
from privlab.topdown import project_to_simplex

__all__ = ["MarginalSynthesizer", "Measurement", "PrivacyReport", "tight_rho_from_epsilon"]


@dataclass(frozen=True)
class Measurement:
    """One use of the data: a Gaussian measurement (``sigma``) or a selection round (``epsilon``)."""

    step: str  # "domain", "one_way", "select", "two_way"
    columns: tuple
    rho: float
    sigma: float | None = None
    epsilon: float | None = None


@dataclass(frozen=True)
class PrivacyReport:
    """What a fitted :class:`MarginalSynthesizer` spent, step by step, in zCDP."""

    epsilon_target: float
    delta: float
    rho_budget: float
    rho_by_step: dict
    rho_total: float
    epsilon: float  # the tight (Canonne-Kamath-Steinke) conversion of rho_total at delta
    measurements: tuple = field(repr=False)

    @property
    def within_budget(self) -> bool:
        """The spent epsilon is at most the epsilon asked for."""
        return self.epsilon <= self.epsilon_target

    def to_frame(self) -> pd.DataFrame:
        """One row per step: rho spent, how many measurements, their sigma or epsilon_0."""
        rows = []
        for step, rho in self.rho_by_step.items():
            ms = [m for m in self.measurements if m.step == step]
            rows.append({"step": step, "count": len(ms), "rho": rho,
                         "sigma": ms[0].sigma if ms else None, "epsilon_0": ms[0].epsilon if ms else None})
        rows.append({"step": "total", "count": len(self.measurements), "rho": self.rho_total})
        return pd.DataFrame(rows).set_index("step")


def fit_table_to_margins(table: np.ndarray, rows: np.ndarray, cols: np.ndarray, iterations: int) -> np.ndarray:
    """Iterative proportional fitting: rescale rows and columns of ``table`` until its sums match."""
    t = table.copy()
    for _ in range(iterations):
        rs = t.sum(axis=1)
        t *= np.divide(rows, rs, out=np.zeros_like(rs), where=rs > 0)[:, None]
        cs = t.sum(axis=0)
        t *= np.divide(cols, cs, out=np.zeros_like(cs), where=cs > 0)[None, :]
        if np.abs(t.sum(axis=1) - rows).max() <= 1e-9 * max(rows.sum(), 1.0):
            break
    return t


def _pair_counts(codes: np.ndarray, i: int, j: int, ki: int, kj: int) -> np.ndarray:
    return np.bincount(codes[:, i] * kj + codes[:, j], minlength=ki * kj).reshape(ki, kj).astype(float)


class MarginalSynthesizer:
    r"""DP synthetic data from noisy 1-way marginals and a noisy maximum spanning tree of 2-way marginals.

    Args:
        epsilon: :math:`\varepsilon > 0` of the :math:`(\varepsilon, \delta)` guarantee.
        delta: :math:`\delta \in (0, 1)`.
        bins: bins per numeric column when ``domain`` gives only bounds (or none).
        domain: public domain per column (see :func:`~privlab.synthetic.domain.resolve_domain`);
            every categorical column must be declared here (the categories of a
            pandas ``Categorical`` are not taken as public: they may have been read
            off the data); numeric columns missing from it get a DP range estimate.
        split: shares of :math:`\rho` for (1-way, selection, 2-way), MST's thirds by default.
        domain_share: share of :math:`\rho` spent on DP range estimation when needed.
        ipf_iterations: iterations of proportional fitting per edge table.
        seed: seeds the default generators of :meth:`fit` and :meth:`sample`; ``None``
            draws fresh OS entropy (the right default for real releases).

    Neighbouring tables differ by adding or removing one record; the public domain
    and the number of columns are not private. Reference: McKenna, Miklau, Sheldon
    2021, arXiv:2108.04978.

    Used in: chapter 10.
    """

    def __init__(self, *, epsilon: float, delta: float, bins: int = 16, domain: dict | None = None,
                 split: tuple = (1 / 3, 1 / 3, 1 / 3), domain_share: float = 0.1,
                 ipf_iterations: int = 200, seed: int | None = None) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta)
        self.bins = check_int("bins", bins, minimum=2)
        self.domain = domain
        ok = len(split) == 3 and all(s >= 0 and math.isfinite(s) for s in split)
        if not ok or split[0] <= 0 or (split[1] > 0) != (split[2] > 0):
            raise ValueError("split must be three finite shares (1-way > 0; selection and 2-way both > 0 "
                             f"or both 0), got {split!r}")
        self.split = tuple(float(s) / sum(split) for s in split)
        self.domain_share = check_probability("domain_share", domain_share, open_high=True)
        self.ipf_iterations = check_int("ipf_iterations", ipf_iterations)
        self.seed = seed
        self._sample_rng = np.random.default_rng(seed)
        self.rho_budget = tight_rho_from_epsilon(epsilon=self.epsilon, delta=self.delta) * (1 - 1e-12)
        self.measurements_: list[Measurement] = []

    # ------------------------------------------------------------------ fit

    def _gaussian(self, step, columns, counts, sigma, rng) -> np.ndarray:
        self.measurements_.append(Measurement(step, tuple(columns), 1 / (2 * sigma**2), sigma=sigma))
        return counts + rng.normal(0.0, sigma, counts.shape)

    def fit(self, df: pd.DataFrame, *, rng: np.random.Generator | int | None = None) -> MarginalSynthesizer:
        """Measure, select and post-process; returns ``self``.

        Args:
            df: the private table (no missing values).
            rng: the source of all noise (Generator or int seed); ``None`` uses the
                constructor's ``seed``.

        Sets ``domain_``, ``tree_`` (edges parent -> child), ``marginals_`` and
        ``tables_`` (the consistent 1-way and tree-edge 2-way probabilities),
        ``noisy_one_way_`` / ``noisy_two_way_`` (the raw noisy counts) and
        ``measurements_`` (one :class:`Measurement` per use of the data).

        Raises:
            ValueError: an empty frame, a NaN or all-NaN column, a value outside a
                declared categorical domain, or a column without a public domain.
        """
        df = check_frame("df", df)
        rng = as_rng(rng, self.seed)
        self.measurements_ = []
        self.columns_ = list(df.columns)
        domain, to_estimate = resolve_domain(df, self.domain, self.bins)
        # the output's dtypes: a Categorical gets the *declared* categories, never those of the input
        self.dtypes_ = {c: (pd.CategoricalDtype(domain[c].categories, ordered=t.ordered)
                            if isinstance(t, pd.CategoricalDtype) else t) for c, t in df.dtypes.items()}
        rho = self.rho_budget
        if to_estimate:  # DP range estimation: one histogram per column
            rho_dom = self.domain_share * rho
            sigma = math.sqrt(len(to_estimate) / (2 * rho_dom))
            for col in to_estimate:
                integer = pd.api.types.is_integer_dtype(df[col])
                domain[col], _ = dp_numeric_domain(df[col].to_numpy(), sigma=sigma, rng=rng, bins=self.bins,
                                                   integer=integer)
                self.measurements_.append(Measurement("domain", (col,), 1 / (2 * sigma**2), sigma=sigma))
            rho -= rho_dom
        self.domain_ = {c: domain[c] for c in self.columns_}
        d, sizes = len(self.columns_), [self.domain_[c].size for c in self.columns_]
        codes = np.column_stack([self._encode(df[c], self.domain_[c], c) for c in self.columns_])
        share_1, share_sel, share_2 = self.split if d > 1 else (1.0, 0.0, 0.0)

        # 1-way marginals: d measurements of sensitivity 1, rho * share_1 in all
        sigma_1 = math.sqrt(d / (2 * rho * share_1))
        y1 = [self._gaussian("one_way", (c,), np.bincount(codes[:, i], minlength=sizes[i]).astype(float), sigma_1, rng)
              for i, c in enumerate(self.columns_)]
        # N-hat: inverse-variance average of the noisy totals (each has variance k * sigma_1^2)
        w = np.array([1 / k for k in sizes])
        n_hat = max(float(np.dot(w, [y.sum() for y in y1]) / w.sum()), 1.0)
        self.n_estimate_ = n_hat  # a DP estimate of the number of records (post-processing of y1)
        p1 = [project_to_simplex(y, total=n_hat) for y in y1]

        edges: list[tuple[int, int]] = []
        if d > 1 and share_sel > 0 and share_2 > 0:
            edges = self._select_tree(codes, sizes, p1, n_hat, rho * share_sel, rng)
        sigma_2 = math.sqrt((d - 1) / (2 * rho * share_2)) if edges else None
        y2 = {(i, j): self._gaussian("two_way", (self.columns_[i], self.columns_[j]),
                                     _pair_counts(codes, i, j, sizes[i], sizes[j]), sigma_2, rng)
              for i, j in edges}
        self.noisy_one_way_ = {c: y for c, y in zip(self.columns_, y1)}
        self.noisy_two_way_ = {(self.columns_[i], self.columns_[j]): y for (i, j), y in y2.items()}
        self._post_process(y1, y2, sizes, sigma_1, sigma_2, n_hat)
        report = self.privacy_report()
        if report.epsilon > self.epsilon * (1 + 1e-9):  # guard: never happens unless the split is broken
            raise RuntimeError(f"spent epsilon {report.epsilon} exceeds the target {self.epsilon}")
        return self

    @staticmethod
    def _encode(s: pd.Series, dom, col: str) -> np.ndarray:
        if isinstance(dom, NumericDomain):
            return dom.encode(s.to_numpy(dtype=float))
        return dom.encode(s.astype(object).to_numpy(), column=col)

    def _select_tree(self, codes, sizes, p1, n_hat, rho_sel, rng) -> list[tuple[int, int]]:
        """Kruskal's algorithm with one exponential-mechanism draw per edge (MST's ``select``)."""
        d = len(sizes)
        pairs = list(combinations(range(d), 2))
        score = {(i, j): float(np.abs(_pair_counts(codes, i, j, sizes[i], sizes[j])
                                      - np.outer(p1[i], p1[j]) / n_hat).sum()) for i, j in pairs}
        eps_0 = math.sqrt(8 * rho_sel / (d - 1))
        component = list(range(d))  # union-find by relabelling (d is small)
        edges = []
        for _ in range(d - 1):
            candidates = [e for e in pairs if component[e[0]] != component[e[1]]]
            k = exponential_mechanism_gumbel([score[e] for e in candidates], epsilon=eps_0, sensitivity=1.0, rng=rng)
            i, j = candidates[k]
            old, new = component[j], component[i]
            component = [new if c == old else c for c in component]
            edges.append((i, j))
            self.measurements_.append(Measurement("select", (self.columns_[i], self.columns_[j]), eps_0**2 / 8,
                                                  epsilon=eps_0))
        # the exponential mechanism's exact scores (L1 distances of the true 2-way counts from the
        # noisy independence fit): kept for teaching and tests, NOT part of the DP release. Only
        # sample()'s output and the measurements are; a fitted object must not be published
        self.selection_scores_ = {(self.columns_[i], self.columns_[j]): s for (i, j), s in score.items()}
        return edges

    def _post_process(self, y1, y2, sizes, sigma_1, sigma_2, n_hat) -> None:
        d = len(sizes)
        # node marginals: 1-way (variance sigma_1^2 per cell) and each edge's sums (k_other * sigma_2^2)
        num = [y / sigma_1**2 for y in y1]
        den = [np.full(k, 1 / sigma_1**2) for k in sizes]
        for (i, j), y in y2.items():
            num[i] += y.sum(axis=1) / (sizes[j] * sigma_2**2)
            den[i] += 1 / (sizes[j] * sigma_2**2)
            num[j] += y.sum(axis=0) / (sizes[i] * sigma_2**2)
            den[j] += 1 / (sizes[i] * sigma_2**2)
        marg = [project_to_simplex(a / b, total=n_hat) for a, b in zip(num, den)]
        tables = {}
        for (i, j), y in y2.items():
            start = np.maximum(y, 0.0) + 1e-6 * np.outer(marg[i], marg[j]) / n_hat
            tables[(i, j)] = fit_table_to_margins(start, marg[i], marg[j], self.ipf_iterations)
        # orient the tree from column 0 (breadth first) and keep P(child | parent)
        neighbours = {i: [] for i in range(d)}
        for i, j in y2:
            neighbours[i].append(j)
            neighbours[j].append(i)
        order, seen, self.conditionals_ = [0], {0}, []
        for node in order:
            for nb in neighbours[node]:
                if nb in seen:
                    continue
                t = tables[(node, nb)] if (node, nb) in tables else tables[(nb, node)].T
                rs = t.sum(axis=1, keepdims=True)
                cond = np.where(rs > 0, t / np.where(rs > 0, rs, 1.0), 1.0 / t.shape[1])
                self.conditionals_.append((node, nb, cond))
                seen.add(nb)
                order.append(nb)
        self.marginals_ = {c: m / m.sum() for c, m in zip(self.columns_, marg)}
        self.tables_ = {(self.columns_[i], self.columns_[j]): t / t.sum() for (i, j), t in tables.items()}
        self.tree_ = [(self.columns_[p], self.columns_[c]) for p, c, _ in self.conditionals_]
        # columns the tree does not reach (d > 1 with no 2-way budget): sampled independently
        self._independent = [i for i in range(1, d) if i not in seen]

    # ------------------------------------------------------------------ sample

    def sample(self, n: int | None = None, *, rng: np.random.Generator | int | None = None,
               n_is_public: bool = False) -> pd.DataFrame:
        """Records by ancestral sampling from the noisy tree, with the input's columns and dtypes.

        The root column (the first) is drawn from its marginal, then each child given
        its parent along the tree; numeric codes become values drawn uniformly in their
        bin. Pure post-processing: no privacy cost.

        The size of the output is released with it. ``sample()`` draws
        ``round(n_estimate_)`` records, a DP estimate of the number of training
        records (from the noisy 1-way marginals, already accounted for). An
        explicit ``n`` must be declared public with ``n_is_public=True``: a size
        that does not depend on the data (a fixed 10,000, or a size published
        anyway). ``sample(len(train))`` would release the exact record count.

        Args:
            n: number of records, >= 1, or ``None`` for the DP estimate.
            rng: Generator or int seed; ``None`` continues the synthesizer's own stream.
            n_is_public: the caller declares that ``n`` is public (required with ``n``).

        Raises:
            ValueError: not fitted; an ``n`` not declared public; an invalid ``n``.
        """
        if not hasattr(self, "conditionals_"):
            raise ValueError("call fit(df) before sample(n)")
        if n is None:
            n = max(1, int(round(self.n_estimate_)))
        elif n_is_public is not True:
            raise ValueError(
                "an explicit sample size is released with the synthetic data: if it is the private record count "
                "(len(train)), that releases N exactly. Call sample() for a DP estimate of N, or "
                "sample(n, n_is_public=True) for a size that does not depend on the data")
        n = check_int("n", n)
        rng = self._sample_rng if rng is None else as_rng(rng, None)
        codes = np.zeros((n, len(self.columns_)), dtype=np.int64)

        def draw(p: np.ndarray, size: int) -> np.ndarray:  # inverse CDF
            return np.minimum(np.searchsorted(np.cumsum(p), rng.random(size) * p.sum(), side="right"), p.size - 1)

        codes[:, 0] = draw(self.marginals_[self.columns_[0]], n)
        for i in self._independent:
            codes[:, i] = draw(self.marginals_[self.columns_[i]], n)
        for parent, child, cond in self.conditionals_:
            pc = codes[:, parent]
            for v in np.unique(pc):  # all records with the same parent value at once
                idx = np.flatnonzero(pc == v)
                codes[idx, child] = draw(cond[v], idx.size)
        data = {c: self.domain_[c].decode(codes[:, i], rng) for i, c in enumerate(self.columns_)}
        return restore_dtypes(pd.DataFrame(data), self.dtypes_)

    # ------------------------------------------------------------------ privacy

    def privacy_report(self) -> PrivacyReport:
        """rho per step, the total, and its epsilon at ``delta`` (at most the target).

        The epsilon is the tight conversion (Canonne, Kamath, Steinke 2020) of the total rho,
        the conversion the budget was calibrated with.
        """
        if not self.measurements_:
            raise ValueError("call fit(df) before privacy_report()")
        steps = ("domain", "one_way", "select", "two_way")
        by_step = {s: sum(m.rho for m in self.measurements_ if m.step == s) for s in steps}
        by_step = {s: r for s, r in by_step.items() if r > 0}
        total = sum(m.rho for m in self.measurements_)
        return PrivacyReport(self.epsilon, self.delta, self.rho_budget, by_step, total,
                             zcdp_to_epsilon(rho=total, delta=self.delta, conversion="optimal"),
                             tuple(self.measurements_))

