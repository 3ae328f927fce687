r"""The DP test suite: every registered release, audited empirically on worst-case neighbours.

For each release of :data:`privlab.audit.registry.REGISTRY` with claim
:math:`(\varepsilon, \delta)` and candidate neighbours :math:`(D, D')`:

1. **Pilot.** Draw :math:`n_0` outputs on each neighbour of every candidate
   pair; for every candidate test statistic :math:`s` (below) find the
   threshold :math:`t` whose set :math:`S = \{s \ge t\}` (or its complement)
   gives the largest bound on the pilot; keep the best (pair, statistic,
   threshold).
2. **Main.** Draw :math:`n` fresh outputs on each neighbour of that pair,
   count :math:`\mathrm{TP} = \#\{s(M(D)) \ge t\}` and
   :math:`\mathrm{FP} = \#\{s(M(D')) \ge t\}`, and report the :math:`1 - \alpha`
   lower confidence bound (Clopper-Pearson, one-sided :math:`\alpha/2` each)

   .. math::
       \underline{\varepsilon} = \max\Big(\ln\frac{\underline{\mathrm{TPR}} - \delta}{\overline{\mathrm{FPR}}},\;
       \ln\frac{1 - \overline{\mathrm{FPR}} - \delta}{1 - \underline{\mathrm{TPR}}},\; 0\Big),

   valid because any :math:`(\varepsilon, \delta)`-DP release has
   :math:`\Pr[M(D) \in S] \le e^\varepsilon \Pr[M(D') \in S] + \delta` for every
   :math:`S` fixed in advance, in both orders (:func:`privlab.audit.stats.epsilon_lower_bound`).
3. **Verdict.** The release *fails* when :math:`\underline{\varepsilon}` exceeds
   its claimed :math:`\varepsilon` (probability :math:`\le \alpha` for an honest
   release); a planted-broken twin must fail (be *caught*).

**Statistics.** Scalar outputs: :math:`y`, :math:`-y`, :math:`\pm|y - m|`
(:math:`m` the pilot median), and a binned likelihood-ratio score
:math:`\ln(\hat p_D(\text{bin}) / \hat p_{D'}(\text{bin}))` estimated on the pilot
(the test of Ding et al. 2018 searches such events). Vector outputs: the
projection on the pilot's mean difference :math:`\pm\langle y, \hat\mu_D - \hat\mu_{D'}\rangle`
and a logistic-regression classifier on :math:`(y, y^2)` trained on the pilot
(the machine-learned distinguisher of DP-Sniper, Bichsel et al. 2021). An
entry may add its own statistics (a known violating event). Everything chosen
from the pilot is fixed before the main sample is drawn, so the bound keeps its
level whatever the search tried.

**Functional entries** (the budget odometer) report the privacy loss they
actually let through (the ledger's total) against the claim.

Run it::

    python -m privlab.audit.dp_test --list
    python -m privlab.audit.dp_test --scale smoke
    python -m privlab.audit.dp_test --only "laplace count" --only "laplace half noise" --json

References: Ding, Wang, Wang, Zhang, Kifer (2018), "Detecting violations of
differential privacy", CCS, arXiv:1805.10277; Bichsel, Steffen, Bogunovic,
Vechev (2021), "DP-Sniper: black-box discovery of differential privacy
violations using classifiers", IEEE S&P, arXiv:2103.05472; Jagielski, Ullman,
Oprea (2020), arXiv:2006.07709; Nasr, Song, Thakurta, Papernot, Carlini (2021),
"Adversary instantiation", arXiv:2101.04535.

Used in: chapters 5, 12.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from privlab._validate import check_int, check_probability
from privlab.audit.registry import REGISTRY, Release
from privlab.audit.stats import epsilon_lower_bound
from privlab.config import get_scale

__all__ = ["DPTestResult", "audit_release", "best_threshold", "candidate_statistics", "run_suite"]

Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DPTestResult:
    r"""The outcome of :func:`audit_release` for one entry.

    Attributes:
        name, relation, unit: the entry's.
        claimed_epsilon, claimed_delta: its claim.
        epsilon_lower: the :math:`1 - \alpha` lower bound (statistical) or the measured epsilon (functional).
        passed: ``epsilon_lower <= claimed_epsilon``.
        twin_of: the honest entry a planted twin breaks, or ``None``.
        expected: honest and passed, or twin and caught (not passed).
        statistic, threshold, pair, tp, fp: the test chosen on the pilot and its main-sample counts.
        n_samples: outputs per neighbour in the main stage (0 for functional entries).
        seconds: wall time of the entry.
        detail: a note (the functional check's finding).
        alpha: the level.
    """

    name: str
    relation: str
    unit: str
    claimed_epsilon: float
    claimed_delta: float
    epsilon_lower: float
    passed: bool
    twin_of: str | None
    expected: bool
    statistic: str
    threshold: float
    pair: int
    tp: int
    fp: int
    n_samples: int
    seconds: float
    detail: str
    alpha: float


def best_threshold(s_in: np.ndarray, s_out: np.ndarray, *, delta: float, alpha: float,
                   max_candidates: int = 4_000) -> tuple[float, float]:  # fmt: skip
    r"""The threshold :math:`t` maximising the bound of :math:`\{s \ge t\}` (and its complement) on pilot scores.

    Candidates are the distinct pooled scores, thinned when there are more than
    ``max_candidates`` to a grid of quantiles plus the most extreme scores at both
    ends (where large bounds live). Returns ``(t, bound)``.

    >>> best_threshold(np.arange(50.0) + 60, np.arange(50.0), delta=0.0, alpha=0.05)[0]
    60.0
    """
    cand = np.unique(np.concatenate([s_in, s_out]))
    if cand.size > max_candidates:
        k = max_candidates // 4
        grid = np.quantile(cand, np.linspace(0.0, 1.0, 2 * k), method="inverted_cdf")
        cand = np.unique(np.concatenate([cand[:k], grid, cand[-k:]]))
    a, b = np.sort(s_in), np.sort(s_out)
    tp = a.size - np.searchsorted(a, cand, side="left")
    fp = b.size - np.searchsorted(b, cand, side="left")
    counts, inverse = np.unique(np.stack([tp, fp]), axis=1, return_inverse=True)  # one bound per distinct (tp, fp)
    bounds = np.asarray(epsilon_lower_bound(counts[0], counts[1], a.size, b.size, delta=delta, alpha=alpha))
    j = int(np.argmax(bounds[inverse.ravel()]))
    return float(cand[j]), float(bounds[inverse.ravel()][j])


def _binned_log_ratio(y_in: np.ndarray, y_out: np.ndarray, bins: int = 100) -> Statistic:
    """Scalar outputs: the pilot's log-likelihood ratio per bin (each distinct value its own bin when few)."""
    pooled = np.concatenate([y_in, y_out])
    values = np.unique(pooled)
    edges = values if values.size <= 2 * bins else np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)[1:-1]))
    if values.size <= 2 * bins:  # discrete outputs: bin i holds values in [edges[i], edges[i+1])
        def index(y):
            return np.clip(np.searchsorted(edges, y, side="right") - 1, 0, edges.size - 1)
        nb = edges.size
    else:
        def index(y):
            return np.searchsorted(edges, y, side="right")
        nb = edges.size + 1
    c_in = np.bincount(index(y_in), minlength=nb) + 0.5
    c_out = np.bincount(index(y_out), minlength=nb) + 0.5
    log_ratio = np.log(c_in / c_in.sum()) - np.log(c_out / c_out.sum())
    return lambda y: log_ratio[index(y)]


def _logistic(y_in: np.ndarray, y_out: np.ndarray, max_rows: int = 20_000) -> Statistic:
    """Vector outputs: a logistic-regression distinguisher on standardised (y, y^2), fitted on the pilot."""
    def features(y):
        return np.hstack([y, y * y])

    m = min(len(y_in), max_rows // 2)
    X = features(np.vstack([y_in[:m], y_out[:m]]))
    mu, sd = X.mean(0), X.std(0) + 1e-12
    clf = LogisticRegression(max_iter=500).fit((X - mu) / sd, np.r_[np.ones(m), np.zeros(m)])
    return lambda y: clf.decision_function((features(y) - mu) / sd)


def candidate_statistics(y_in: np.ndarray, y_out: np.ndarray, *,
                         extra: Sequence[Statistic] = ()) -> list[tuple[str, Statistic]]:  # fmt: skip
    """The test statistics fitted on pilot outputs ``(n,)`` or ``(n, k)`` of :math:`D` and :math:`D'` (module docstring).

    >>> [name for name, _ in candidate_statistics(np.zeros(10), np.ones(10))]
    ['y', '-y', '|y - m|', '-|y - m|', 'log-ratio bins']
    """
    stats: list[tuple[str, Statistic]] = []
    if y_in.ndim == 1:
        m = float(np.median(np.concatenate([y_in, y_out])))
        stats += [("y", lambda y: y), ("-y", lambda y: -y), ("|y - m|", lambda y: np.abs(y - m)),
                  ("-|y - m|", lambda y: -np.abs(y - m)), ("log-ratio bins", _binned_log_ratio(y_in, y_out))]
    else:
        w = y_in.mean(0) - y_out.mean(0)
        stats += [("projection", lambda y: y @ w), ("-projection", lambda y: -(y @ w))]
        if np.all(np.isfinite(w)) and np.any(y_in.std(0) + y_out.std(0) > 0):
            stats.append(("logistic", _logistic(y_in, y_out)))
    for i, f in enumerate(extra):
        stats += [(f"extra {i}", lambda y, f=f: np.asarray(f(y), dtype=float)),
                  (f"-extra {i}", lambda y, f=f: -np.asarray(f(y), dtype=float))]
    return stats


def _outputs(release: Release, data, n: int, rng: np.random.Generator) -> np.ndarray:
    y = np.asarray(release.draw(data, n, rng), dtype=float)
    y = y.reshape(n, -1)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{release.name!r}: outputs must be finite")
    return y[:, 0] if y.shape[1] == 1 else y


def _rng_for(name: str, seed: int) -> np.random.Generator:
    """One generator per entry, from the suite's seed and the entry's name (``--only`` reproduces a full run)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def audit_release(release: Release, *, scale: str | None = None, seed: int = 0, alpha: float = 0.05,
                 n_samples: int | None = None) -> DPTestResult:  # fmt: skip
    r"""Audit one release: pilot, then main sample, then the Clopper-Pearson lower bound (module docstring).

    Args:
        release: a :class:`~privlab.audit.registry.Release`.
        scale: ``"smoke"``, ``"book"`` or ``"paper"`` (``paper`` uses the book sizes); default ``$PRIVLAB_SCALE``.
        seed: the suite's seed; the entry's generator also depends on its name.
        alpha: the bound holds with probability :math:`\ge 1 - \alpha`.
        n_samples: outputs per neighbour in the main stage (default: the entry's size at ``scale``);
            the pilot draws half as many (at least 100).

    Returns:
        A :class:`DPTestResult`.

    >>> from privlab.audit.registry import REGISTRY
    >>> r = audit_release(REGISTRY["laplace half noise"], n_samples=20_000)
    >>> r.epsilon_lower > r.claimed_epsilon, r.expected
    (True, True)
    """
    alpha = check_probability("alpha", alpha, open_high=True)
    rng = _rng_for(release.name, seed)
    start = time.perf_counter()
    common = dict(name=release.name, relation=release.relation, unit=release.unit, claimed_epsilon=release.epsilon,
                  claimed_delta=release.delta, twin_of=release.twin_of, alpha=alpha)
    if release.functional:
        out = release.check(rng)
        passed = out.epsilon_measured <= release.epsilon
        return DPTestResult(**common, epsilon_lower=out.epsilon_measured, passed=passed,
                            expected=passed == (release.twin_of is None), statistic="functional",
                            threshold=math.nan, pair=0, tp=0, fp=0, n_samples=0,
                            seconds=time.perf_counter() - start, detail=out.detail)
    size = get_scale(scale).name
    n = check_int("n_samples", n_samples) if n_samples is not None else release.samples.get(size,
                                                                                         release.samples["book"])
    n_pilot = max(100, n // 2)
    best = (-math.inf, 0, "", None, 0.0)
    for p, (d, d_prime) in enumerate(release.pairs):
        y_in, y_out = _outputs(release, d, n_pilot, rng), _outputs(release, d_prime, n_pilot, rng)
        for name, stat in candidate_statistics(y_in, y_out, extra=release.statistics):
            t, bound = best_threshold(stat(y_in), stat(y_out), delta=release.delta, alpha=alpha)
            if bound > best[0]:
                best = (bound, p, name, stat, t)
    _, p, name, stat, t = best
    d, d_prime = release.pairs[p]
    s_in, s_out = stat(_outputs(release, d, n, rng)), stat(_outputs(release, d_prime, n, rng))
    tp, fp = int(np.sum(s_in >= t)), int(np.sum(s_out >= t))
    lower = float(epsilon_lower_bound(tp, fp, n, n, delta=release.delta, alpha=alpha))
    passed = lower <= release.epsilon
    return DPTestResult(**common, epsilon_lower=lower, passed=passed, expected=passed == (release.twin_of is None),
                        statistic=name, threshold=t, pair=p, tp=tp, fp=fp, n_samples=n,
                        seconds=time.perf_counter() - start, detail="")


def run_suite(*, scale: str | None = None, only: Sequence[str] | None = None, seed: int = 0, alpha: float = 0.05,
              progress: Callable[[DPTestResult], None] | None = None) -> list[DPTestResult]:  # fmt: skip
    """Run :func:`audit_release` on every registered entry (or the names in ``only``), in registration order.

    Raises:
        ValueError: a name in ``only`` that is not registered.
    """
    names = list(REGISTRY) if not only else list(only)
    unknown = [x for x in names if x not in REGISTRY]
    if unknown:
        raise ValueError(f"not registered: {unknown}; see --list")
    results = []
    for x in names:
        r = audit_release(REGISTRY[x], scale=scale, seed=seed, alpha=alpha)
        results.append(r)
        if progress is not None:
            progress(r)
    return results


def _verdict(r: DPTestResult) -> str:
    if r.twin_of is None:
        return "pass" if r.passed else "FAIL"
    return "caught" if not r.passed else "MISSED"


def _table_row(r: DPTestResult) -> str:
    claim = f"({r.claimed_epsilon:.3g}, {r.claimed_delta:.0e})" if r.claimed_delta else f"({r.claimed_epsilon:.3g}, 0)"
    kind = "twin" if r.twin_of else "honest"
    return (f"{r.name:34s} {r.relation:11s} {kind:6s} {claim:>14s} {r.epsilon_lower:9.3f} {_verdict(r):7s} "
            f"{r.n_samples:>9d} {r.seconds:7.2f}  {r.statistic}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: list the registry or run the suite; exit status 1 if an honest release fails or a twin is missed.

    Each entry is tested at ``alpha``, with no correction for the number of entries: the exit status
    is not a family-wise test (with ~35 honest entries at alpha = 0.05, some entry can fail by chance
    on a fresh seed more often than alpha; a tight one such as randomized response fails on about 1%
    of seeds; the family-wise rate is not measured).
    CI runs fixed seeds, so its results are reproducible.
    """
    parser = argparse.ArgumentParser(
        prog="python -m privlab.audit.dp_test",
        description="The DP test suite: audit every registered release on worst-case neighbours; a release fails "
                    "when the 1 - alpha (default 95%) lower confidence bound on epsilon exceeds its claim; every planted-broken twin "
                    "must be caught. Each entry is tested at alpha; the exit status is not a family-wise "
                    "test: over the ~35 honest entries a false failure somewhere is likelier than alpha "
                    "on a fresh seed (rerun a failing entry with --only and another --seed, or lower --alpha).",
        epilog="examples:\n"
               "  python -m privlab.audit.dp_test --list\n"
               "  python -m privlab.audit.dp_test --scale smoke\n"
               "  python -m privlab.audit.dp_test --only 'laplace count' --only 'laplace half noise' --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the registry (name, relation, claim) and exit")
    parser.add_argument("--scale", choices=("smoke", "book", "paper"), default=None,
                        help="sample sizes (default: $PRIVLAB_SCALE, else book)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this entry (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="the suite's seed (default 0)")
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of the bounds (default 0.05)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    unknown = [x for x in args.only or () if x not in REGISTRY]
    if unknown:
        parser.error(f"not registered: {unknown}; see --list")
    if args.list:
        rows = [{"name": r.name, "relation": r.relation, "unit": r.unit, "epsilon": r.epsilon, "delta": r.delta,
                 "kind": "functional" if r.functional else "statistical", "twin_of": r.twin_of, "bug": r.bug}
                for r in REGISTRY.values()]
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'name':34s} {'relation':11s} {'unit':18s} {'epsilon':>8s} {'delta':>7s}  twin of")
            for r in rows:
                print(f"{r['name']:34s} {r['relation']:11s} {r['unit']:18s} {r['epsilon']:8.4g} {r['delta']:7.0e}  "
                      f"{r['twin_of'] or ''}")
        return 0
    header = (f"{'name':34s} {'relation':11s} {'kind':6s} {'claim (eps, d)':>14s} {'eps lower':>9s} {'verdict':7s} "
              f"{'samples':>9s} {'seconds':>7s}  statistic")
    if not args.json:
        print(header)
    results = run_suite(scale=args.scale, only=args.only, seed=args.seed, alpha=args.alpha,
                        progress=None if args.json else lambda r: print(_table_row(r), flush=True))
    if args.json:
        rows = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(r).items()}
                for r in results]  # strict JSON: no NaN
        print(json.dumps(rows, indent=1))
    else:
        bad = [r.name for r in results if not r.expected]
        print(f"{len(results)} entries, {sum(r.seconds for r in results):.1f} s; "
              + ("all as expected" if not bad else f"UNEXPECTED: {bad}"))
    return 0 if all(r.expected for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
