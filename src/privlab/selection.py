r"""Private selection: report-noisy-max and permute-and-flip.

Given a quality score :math:`q(D, r)` for each candidate :math:`r` (a count, a
negative loss), release the index of a candidate with a high score. Every
mechanism here is :math:`\varepsilon`-DP when each score has sensitivity
:math:`\Delta` (it changes by at most :math:`\Delta` between neighbours):

* report-noisy-max with Laplace noise :math:`\mathrm{Lap}(2\Delta/\varepsilon)`
  (:math:`\mathrm{Lap}(\Delta/\varepsilon)` when the scores are *monotonic*,
  all moving the same way between neighbours, as counts do under add/remove);
* report-noisy-max with Gumbel noise of scale :math:`2\Delta/\varepsilon`, which
  is the exponential mechanism exactly (the Gumbel-max trick);
* permute-and-flip: visit the candidates in a random order and stop at
  :math:`r` with probability :math:`\exp(\varepsilon (q_r - q^*) / (2\Delta))`,
  :math:`q^* = \max_r q_r`. It never does worse than the exponential mechanism
  in expected score and can do better (McKenna and Sheldon 2020); it equals
  report-noisy-max with exponential noise (Ding et al. 2021).

The privacy unit and neighbouring relation are those of the scores: with counts
of records per category, one record under add/remove (monotonic, :math:`\Delta = 1`).

>>> from privlab.config import make_rng
>>> report_noisy_max([100, 0, 0], epsilon=1.0, sensitivity=1.0, rng=make_rng(0))
0
>>> permute_and_flip([100, 0, 0], epsilon=1.0, sensitivity=1.0, rng=make_rng(0))
0

References: Dwork and Roth (2014), Claim 3.9 (report-noisy-max); McSherry and
Talwar (2007); McKenna and Sheldon (2020), "Permute-and-flip: a new mechanism
for differentially private selection", NeurIPS, arXiv:2010.12603; Ding, Kifer,
Saghaian, Steinke, Wang, Xiao, Zhang (2021), "The permute-and-flip mechanism is
identical to report-noisy-max with exponential noise", arXiv:2105.07260.

Used in: the chapter "Selection, the sparse vector and local DP".
"""

from __future__ import annotations

import numpy as np
from scipy import integrate

from privlab._validate import check_array, check_bool, check_epsilon, check_int, check_positive, check_rng
from privlab.mechanisms import exponential_mechanism_gumbel

__all__ = ["report_noisy_max", "permute_and_flip", "SELECTORS", "expected_score_gap",
           "selection_probabilities"]


def _scores(scores) -> np.ndarray:
    q = check_array("scores", scores)
    if q.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {q.shape}")
    return q


def report_noisy_max(scores, *, epsilon, sensitivity, rng: np.random.Generator, noise="laplace",
                     monotonic: bool = False, size=None):
    r"""Report-noisy-max: :math:`\arg\max_r \, q_r + Z_r`.

    :math:`Z_r \sim \mathrm{Lap}(b)` with :math:`b = 2\Delta/\varepsilon`
    (:math:`\Delta/\varepsilon` for monotonic scores), or standard Gumbel noise
    on :math:`\varepsilon q_r / (2\Delta)` (``noise="gumbel"``: the exponential
    mechanism), or exponential noise :math:`\mathrm{Expo}(2\Delta/\varepsilon)`
    (``noise="exponential"``: permute-and-flip in distribution). Each is
    :math:`\varepsilon`-DP (Dwork and Roth 2014, Claim 3.9; Ding et al. 2021).

    Args:
        scores: :math:`q(D, r)`, a finite non-empty 1-D array.
        epsilon: :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta > 0` of every score.
        rng: the source of randomness.
        noise: ``"laplace"``, ``"gumbel"`` or ``"exponential"``.
        monotonic: scores all move in the same direction between neighbours.
        size: ``None`` for one draw, else the number of independent draws.

    Returns:
        An ``int`` index, or an integer array of ``size`` draws.

    Raises:
        ValueError: invalid privacy parameters, ``scores``, ``noise`` or ``rng``.

    >>> from privlab.config import make_rng
    >>> report_noisy_max([5.0, 50.0], epsilon=2.0, sensitivity=1.0, rng=make_rng(1), noise="gumbel")
    1
    """
    q = _scores(scores)
    epsilon = check_epsilon(epsilon)
    delta_q = check_positive("sensitivity", sensitivity)
    rng = check_rng(rng)
    if noise == "gumbel":
        return exponential_mechanism_gumbel(q, epsilon=epsilon, sensitivity=delta_q, rng=rng,
                                            monotonic=monotonic, size=size)
    scale = (1.0 if check_bool("monotonic", monotonic) else 2.0) * delta_q / epsilon
    shape = () if size is None else (check_int("size", size),)
    if noise == "laplace":
        z = rng.laplace(scale=scale, size=shape + q.shape)
    elif noise == "exponential":
        z = rng.exponential(scale=scale, size=shape + q.shape)
    else:
        raise ValueError(f"noise must be 'laplace', 'gumbel' or 'exponential', got {noise!r}")
    # shifted by the top score (the argmax is unchanged): noise added to scores near 2^52 would be
    # rounded to their coarse grid
    idx = np.argmax((q - q.max()) + z, axis=-1)
    return int(idx) if size is None else idx


def permute_and_flip(scores, *, epsilon, sensitivity, rng: np.random.Generator,
                     monotonic: bool = False, size=None):
    r"""Permute-and-flip (McKenna and Sheldon 2020, Algorithm 1).

    Visit the candidates in a uniformly random order; at candidate :math:`r`
    flip a coin with heads probability
    :math:`p_r = \exp\big(\varepsilon (q_r - q^*) / (2\Delta)\big)` and return
    :math:`r` on heads. The best candidate has :math:`p = 1`, so it stops. With
    monotonic scores the factor 2 is dropped. :math:`\varepsilon`-DP.

    Args:
        scores: :math:`q(D, r)`, a finite non-empty 1-D array.
        epsilon: :math:`\varepsilon > 0`.
        sensitivity: :math:`\Delta > 0`.
        rng: the source of randomness.
        monotonic: scores all move in the same direction between neighbours.
        size: ``None`` for one draw, else the number of independent draws.

    Returns:
        An ``int`` index, or an integer array of ``size`` draws.

    Raises:
        ValueError: invalid privacy parameters, ``scores`` or ``rng``.
    """
    q = _scores(scores)
    epsilon = check_epsilon(epsilon)
    delta_q = check_positive("sensitivity", sensitivity)
    rng = check_rng(rng)
    factor = 1.0 if check_bool("monotonic", monotonic) else 2.0
    log_p = epsilon * (q - q.max()) / (factor * delta_q)   # log of each coin's heads probability
    n = 1 if size is None else check_int("size", size)
    # Vectorised over draws: a random order per draw, coins for every candidate, the first head wins.
    order = np.argsort(rng.random((n, q.size)), axis=1)
    heads = np.log(rng.random((n, q.size))) < log_p[order]
    first = np.argmax(heads, axis=1)                      # the maximum always comes up heads
    idx = order[np.arange(n), first]
    return int(idx[0]) if size is None else idx


SELECTORS = {
    "noisy max (Laplace)": lambda q, **kw: report_noisy_max(q, noise="laplace", **kw),
    "exponential (Gumbel max)": lambda q, **kw: report_noisy_max(q, noise="gumbel", **kw),
    "permute-and-flip": permute_and_flip,
}


def expected_score_gap(scores, selected) -> float:
    r"""Mean shortfall of the selected candidates' scores, :math:`q^* - \mathbb{E}[q_{\hat r}]`.

    >>> expected_score_gap([3.0, 1.0], np.array([0, 1, 0, 0]))
    0.5
    """
    q = _scores(scores)
    return float(q.max() - q[np.asarray(selected)].mean())


def selection_probabilities(scores, *, epsilon, sensitivity, noise="exponential",
                            monotonic: bool = False) -> np.ndarray:
    r"""Exact :math:`\Pr[\hat r = r]` of report-noisy-max with the given noise.

    ``"gumbel"`` (the exponential mechanism) is the softmax of :math:`q/b`;
    ``"exponential"`` (permute-and-flip) and ``"laplace"`` are the one-dimensional
    integrals :math:`\int f_b(x - q_r) \prod_{s \ne r} F_b(x - q_s)\, dx`
    (independent noises of scale :math:`b`), by adaptive quadrature
    (:func:`scipy.integrate.quad_vec`) with breakpoints at the scores, where the
    integrand has kinks. No sampling: use it to judge a simulation.

    >>> p = selection_probabilities([1.0, 0.0], epsilon=1.0, sensitivity=1.0,
    ...                             monotonic=True)
    >>> bool(abs(p.sum() - 1) < 1e-8), bool(p[0] > p[1])
    (True, True)
    """
    q = _scores(scores)
    delta_q = check_positive("sensitivity", sensitivity)
    b = (1.0 if check_bool("monotonic", monotonic) else 2.0) * delta_q / check_epsilon(epsilon)
    if noise == "gumbel":
        z = (q - q.max()) / b
        return np.exp(z) / np.exp(z).sum()
    if noise == "exponential":
        lo, hi = q.max(), q.max() + 60 * b          # the winner's noisy score is >= q*

        def log_cdf(x):
            with np.errstate(divide="ignore"):
                return np.log1p(-np.exp(-np.maximum(x - q, 0.0) / b))

        def log_pdf(x):
            return np.where(x >= q, -(x - q) / b - np.log(b), -np.inf)
    elif noise == "laplace":
        lo, hi = q.min() - 60 * b, q.max() + 60 * b

        def log_cdf(x):
            u = (x - q) / b
            return np.where(u < 0, u - np.log(2), np.log1p(-0.5 * np.exp(-np.abs(u))))

        def log_pdf(x):
            return -np.abs(x - q) / b - np.log(2 * b)
    else:
        raise ValueError(
            f"noise must be 'laplace', 'gumbel' or 'exponential', got {noise!r}")

    def integrand(x):          # the k densities of "r wins with noisy score x"
        lc = log_cdf(x)
        dead = np.isneginf(lc)
        n_dead, finite_sum = dead.sum(), np.where(dead, 0.0, lc).sum()
        if n_dead > 1:                   # two factors of the product are zero
            return np.zeros(q.size)
        # log prod_{s != r} F(x - q_s): zero when another factor is zero
        others = np.where(dead, finite_sum, finite_sum - lc if n_dead == 0 else -np.inf)
        return np.exp(log_pdf(x) + others)

    pts = np.unique(q[(q > lo) & (q < hi)])
    return integrate.quad_vec(integrand, lo, hi, points=pts if pts.size else None,
                              epsabs=1e-13, epsrel=1e-10)[0]
