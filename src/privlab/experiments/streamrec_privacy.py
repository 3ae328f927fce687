r"""What the StreamRec guarantee means over time, for a user, and for the study that chose the model.

Three questions a single training's :math:`(\varepsilon, \delta)` does not answer:

* **Daily retraining** (:func:`retraining_epsilon`). The model is retrained every
  day on a sliding 30-day window, each training from scratch with fresh
  randomness. A row is used by up to :math:`W = 30` trainings, so its
  guarantee is the composition of :math:`W` runs of DP-SGD, i.e. one run of
  :math:`W T` steps (same :math:`\sigma, q`). Under *user-level* DP a user who
  stays is in every training: 30 per 30 days, 365 per year.
* **Group privacy** (:func:`group_privacy`). An example-level guarantee covers
  :math:`k` rows of one user only through
  :math:`(k\varepsilon,\; k e^{(k-1)\varepsilon}\delta)` (Vadhan 2017, "The
  complexity of differential privacy", Lemma 2.2): vacuous for a power user.
* **Choosing among models** (:func:`study_epsilon`, :func:`random_stopping_epsilon`).
  A study that trains several DP models on the same data and releases the best
  has spent the privacy of all of them (Papernot and Steinke 2022,
  "Hyperparameter tuning with Renyi differential privacy", ICLR,
  arXiv:2110.03620). The plain bound composes every candidate; their Theorem 2
  bounds running a *random* number :math:`K` of candidates (a truncated negative
  binomial, here :math:`\eta = 1`: geometric with mean :math:`1/\gamma`) and
  releasing the best: if each candidate is :math:`(\lambda, \rho(\lambda))`-RDP,
  the selection is :math:`(\lambda, \varepsilon')`-RDP with

.. math::
    \varepsilon'(\lambda) = \rho(\lambda) + \min_{\hat\lambda \ge 1}\Bigl[(1+\eta)\bigl(1 - \tfrac{1}{\hat\lambda}\bigr)
    \rho(\hat\lambda) + \frac{(1+\eta)\log(1/\gamma)}{\hat\lambda}\Bigr] + \frac{\log \mathbb E[K]}{\lambda - 1}.

Used in: chapter 13.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from privlab._validate import check_delta, check_int, check_nonnegative, check_positive
from privlab.accounting import dpsgd_epsilon, dpsgd_event, make_accountant
from privlab.accounting.rdp import DEFAULT_ORDERS, rdp_to_epsilon, subsampled_gaussian_rdp

__all__ = ["group_privacy", "random_stopping_epsilon", "retraining_epsilon", "study_epsilon"]


def retraining_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                       trainings: int, accountant: str = "pld") -> float:  # fmt: skip
    r"""Epsilon of ``trainings`` independent DP-SGD runs that all see the unit: one run of ``trainings * steps`` steps.

    Args:
        noise_multiplier: :math:`\sigma`; sample_rate: :math:`q`; steps: :math:`T` per training.
        delta: :math:`\delta` of the composed guarantee.
        trainings: :math:`W`, how many trainings use the unit (30: a row in a 30-day window).

    >>> e1 = retraining_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-6, trainings=1)
    >>> e30 = retraining_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-6, trainings=30)
    >>> e1 < e30 < 30 * e1
    True
    """
    w = check_int("trainings", trainings)
    return float(dpsgd_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                               steps=check_int("steps", steps) * w, delta=delta, accountant=accountant))  # fmt: skip


def group_privacy(*, epsilon: float, delta: float, k: int) -> tuple[float, float]:
    r"""Group privacy: :math:`(k\varepsilon, k e^{(k-1)\varepsilon}\delta)` for a group of ``k`` units.

    Reference: Vadhan 2017, Lemma 2.2 (group privacy for approximate DP).
    The delta is returned as ``inf`` when it overflows; any delta >= 1 is vacuous.

    >>> group_privacy(epsilon=0.1, delta=1e-6, k=1)
    (0.1, 1e-06)
    >>> eps, d = group_privacy(epsilon=1.0, delta=1e-6, k=130)
    >>> eps, d > 1
    (130.0, True)
    """
    eps = check_nonnegative("epsilon", epsilon)
    d = check_delta(delta, allow_zero=True)
    k = check_int("k", k)
    if d == 0:
        return k * eps, 0.0
    log_d = math.log(k) + (k - 1) * eps + math.log(d)  # log(k e^{(k-1) eps} delta)
    return k * eps, (math.exp(log_d) if log_d < 700 else math.inf)


def study_epsilon(runs: Iterable[dict], *, delta: float, accountant: str = "pld") -> float:
    r"""Epsilon of releasing anything chosen from several DP-SGD runs on the same data: their composition.

    Args:
        runs: dicts with ``noise_multiplier`` (> 0), ``sample_rate`` and ``steps``.
        delta: :math:`\delta` of the composed guarantee.

    >>> r = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100}
    >>> from privlab.accounting import dpsgd_epsilon
    >>> abs(study_epsilon([r, r], delta=1e-6) - dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.01,
    ...                                                         steps=200, delta=1e-6)) < 1e-3
    True
    """
    acc = make_accountant(accountant)
    n = 0
    for r in runs:
        acc.compose(dpsgd_event(noise_multiplier=check_positive("noise_multiplier", r["noise_multiplier"]),
                                sample_rate=r["sample_rate"], steps=r["steps"]))  # fmt: skip
        n += 1
    if n == 0:
        raise ValueError("runs must hold at least one DP-SGD run, got none")
    return float(acc.get_epsilon(check_delta(delta)))


def random_stopping_epsilon(*, candidates: Iterable[dict], delta: float, mean_candidates: float) -> float:
    r"""Epsilon of the best of :math:`K \sim \mathrm{Geometric}` DP-SGD candidates (Papernot-Steinke, :math:`\eta = 1`).

    The RDP curve every candidate must satisfy is the pointwise maximum over
    ``candidates`` (dicts with ``noise_multiplier``, ``sample_rate``, ``steps``)
    of their DP-SGD curves, :math:`\rho(\lambda) = \max_i T_i\,\rho_i(\lambda)`.
    The formula is the module docstring's with :math:`\eta = 1`,
    :math:`\gamma = 1/\mathbb E[K]`, minimised over the accountant's RDP orders,
    then converted to :math:`(\varepsilon, \delta)`.

    Reference: Papernot and Steinke 2022 (arXiv:2110.03620), Theorem 2.

    >>> run = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 1000}
    >>> one = random_stopping_epsilon(candidates=[run], delta=1e-6, mean_candidates=1.0)
    >>> ten = random_stopping_epsilon(candidates=[run], delta=1e-6, mean_candidates=10.0)
    >>> one < ten
    True
    """
    mean_k = check_positive("mean_candidates", mean_candidates)
    if mean_k < 1:
        raise ValueError(f"mean_candidates must be >= 1, got {mean_candidates}")
    orders = np.asarray(DEFAULT_ORDERS, float)
    curves = [check_int("steps", r["steps"]) * subsampled_gaussian_rdp(
        sample_rate=r["sample_rate"], noise_multiplier=check_positive("noise_multiplier", r["noise_multiplier"]),
        orders=orders) for r in candidates]  # fmt: skip
    if not curves:
        raise ValueError("candidates must hold at least one DP-SGD run, got none")
    rho = np.max(curves, axis=0)
    eta, log_inv_gamma = 1.0, math.log(mean_k)  # geometric: E[K] = 1/gamma
    inner = np.min((1 + eta) * (1 - 1 / orders) * rho + (1 + eta) * log_inv_gamma / orders)
    eps_prime = rho + inner + math.log(mean_k) / (orders - 1)
    return float(rdp_to_epsilon(orders=orders, rdp=eps_prime, delta=check_delta(delta))[0])
