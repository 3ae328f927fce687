r"""Planted bugs: broken DP-SGD optimizers and broken releases that the audits must catch.

**DP-SGD optimizers.** Each bug subclasses :class:`privlab.dpsgd.DPOptimizer` and overrides one named
stage, so it trains (and is audited) exactly as the honest optimizer would,
with the accountant still claiming the honest epsilon: noise off, clipping off,
noise std :math:`C/(qN)` instead of :math:`\sigma C`, and shuffled batches
accounted as Poisson (Chua et al. 2024, arXiv:2403.17673).

**Releases** (the planted-broken twins of :mod:`privlab.audit.dp_test`): each
is an honest release of the package with one classic mistake, kept here so the
DP test suite can show that it catches it:

- :func:`half_noise_laplace`: Laplace noise of scale :math:`\Delta/(2\varepsilon)` (true :math:`2\varepsilon`);
- :func:`subgroup_mean`: a subgroup mean whose sensitivity :math:`(b - a)/n_g` uses the private
  subgroup count :math:`n_g` (the noise scale itself reveals :math:`n_g`; unbounded privacy loss);
- :func:`old_snapping_mechanism`: the snapping calibration before its fix for vectors, noise for
  the integer sensitivity :math:`\lceil\Delta/\gamma\rceil` while rounding each of :math:`d`
  coordinates can add one grid step (:math:`d` steps in all);
- :func:`classic_gaussian_any_epsilon`: :math:`\sigma = \Delta\sqrt{2\ln(1.25/\delta)}/\varepsilon`
  (Dwork and Roth 2014, Theorem A.1, proved for :math:`\varepsilon < 1`) used at :math:`\varepsilon > 1`;
- :class:`StaleLedgerOdometer`: an odometer that reads its ledger once, so two odometers on one
  ledger each accept spending that together exceeds the budget.

Used in: chapter 12.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from privlab._validate import check_epsilon, check_positive, check_rng
from privlab.budget import BudgetExceededError, Ledger, LedgerRecord
from privlab.dpsgd import DPOptimizer

__all__ = [
    "PLANTED_BUGS", "NoClipOptimizer", "NoNoiseOptimizer", "StaleLedgerOdometer", "WrongNoiseScaleOptimizer",
    "classic_gaussian_any_epsilon", "half_noise_laplace", "old_snapping_mechanism", "subgroup_mean",
]  # fmt: skip


class NoNoiseOptimizer(DPOptimizer):
    """Planted bug: ``add_noise`` returns its input (the accountant still claims sigma)."""

    def add_noise(self, grads):
        return grads


class NoClipOptimizer(DPOptimizer):
    """Planted bug: ``clip_factors`` returns ones (no clipping)."""

    def clip_factors(self, norms):
        return torch.ones_like(norms)


class WrongNoiseScaleOptimizer(DPOptimizer):
    r"""Planted bug: noise std :math:`C/(qN)` (the scale of the *averaged* gradient) instead of :math:`\sigma C`."""

    def noise_std(self):
        return self.max_grad_norm / self.expected_batch_size


#: name -> (optimizer class, sampler) of each planted bug; ``"honest"`` is the reference.
PLANTED_BUGS = {
    "honest": (DPOptimizer, "poisson"),
    "no noise": (NoNoiseOptimizer, "poisson"),
    "no clipping": (NoClipOptimizer, "poisson"),
    "noise C/B": (WrongNoiseScaleOptimizer, "poisson"),
    "shuffle as Poisson": (DPOptimizer, "shuffle"),
}


# ----- planted-broken releases (twins of the DP test suite) ------------------------------------
def half_noise_laplace(value, *, sensitivity, epsilon, rng: np.random.Generator) -> np.ndarray:
    r"""Planted bug: :math:`f(D) + \mathrm{Lap}(\Delta/(2\varepsilon))`, half the noise; really :math:`2\varepsilon`-DP.

    >>> half_noise_laplace(np.zeros(3), sensitivity=1.0, epsilon=1.0, rng=np.random.default_rng(0)).shape
    (3,)
    """
    b = check_positive("sensitivity", sensitivity) / (2.0 * check_epsilon(epsilon))
    x = np.asarray(value, dtype=float)
    return x + check_rng(rng).laplace(0.0, b, x.shape)


def subgroup_mean(values, in_group, *, lower, upper, epsilon, rng: np.random.Generator, size: int) -> np.ndarray:
    r"""Planted bug: the mean of a subgroup released with sensitivity :math:`(b - a)/n_g`, :math:`n_g` private.

    .. math:: \bar x_g + \mathrm{Lap}\Big(\frac{b - a}{n_g\,\varepsilon}\Big), \qquad n_g = |\{i : g_i\}|

    Under add/remove (the subgroup's membership is private), a record joining the subgroup
    changes :math:`n_g` and so the noise scale: with :math:`n_g = 1` against 2 and equal means,
    the privacy loss :math:`\ln(p_D(y)/p_{D'}(y)) = \varepsilon |y| - \ln 2` is unbounded.
    The honest release spends budget on :math:`n_g` (a noisy count) or uses a public size.

    Returns ``size`` independent releases.
    """
    x = np.clip(np.asarray(values, dtype=float)[np.asarray(in_group, dtype=bool)], lower, upper)
    if x.size == 0:
        raise ValueError("the subgroup is empty")
    scale = (upper - lower) / (x.size * check_epsilon(epsilon))  # the bug: x.size is private
    return float(x.mean()) + check_rng(rng).laplace(0.0, scale, size)


def old_snapping_mechanism(value, *, sensitivity, epsilon, lower, upper, rng: np.random.Generator,
                           grid_bits: int = 0) -> np.ndarray:  # fmt: skip
    r"""Planted bug: the snapping calibration before its fix, on vectors.

    .. math:: \gamma\,(n_j + Z_j), \quad n_j = \lfloor \mathrm{clamp}(x_j)/\gamma + \tfrac12 \rfloor, \quad
              Z_j \sim \mathrm{Lap}_{\mathbb Z}(\lceil \Delta/\gamma \rceil / \varepsilon)

    The noise is set for the integer sensitivity :math:`\lceil\Delta/\gamma\rceil`, but rounding
    each of :math:`d` coordinates can add one grid step: with :math:`d = 100`, ``grid_bits=0``,
    :math:`\Delta = 1`, inputs 0.495 and 0.505 in every coordinate (L1 distance 1) round to 0 and
    1, 100 grid steps apart. The integer noise is drawn as a difference of two geometrics
    (the bug is the calibration, not the sampler). Reference: Mironov (2012); Canonne, Kamath,
    Steinke (2020), arXiv:2004.00010.

    Args:
        value: the vector :math:`f(D)`, any shape (the last axes are the coordinates).
        sensitivity: :math:`\Delta` (L1). epsilon: :math:`\varepsilon`. lower, upper: the clamp.
        rng: numpy ``Generator``. grid_bits: :math:`k`, :math:`\gamma = 2^{-k}`.
    """
    gamma = 2.0 ** -int(grid_bits)
    x = np.clip(np.asarray(value, dtype=float), lower, upper)
    n = np.floor(x / gamma + 0.5)
    t = math.ceil(check_positive("sensitivity", sensitivity) / gamma) / check_epsilon(epsilon)
    p = -math.expm1(-1.0 / t)  # P[Lap_Z(t) = z] is proportional to e^{-|z|/t}: a difference of Geometric(p)
    rng = check_rng(rng)
    z = rng.geometric(p, x.shape) - rng.geometric(p, x.shape)
    return np.clip(gamma * (n + z), lower, upper)


def classic_gaussian_any_epsilon(value, *, sensitivity, epsilon, delta, rng: np.random.Generator) -> np.ndarray:
    r"""Planted bug: the classic Gaussian calibration used outside its theorem, at :math:`\varepsilon > 1`.

    .. math:: \sigma = \frac{\Delta\sqrt{2\ln(1.25/\delta)}}{\varepsilon}

    Dwork and Roth (2014), Theorem A.1, proves it for :math:`\varepsilon < 1` only;
    :func:`privlab.mechanisms.gaussian_mechanism` refuses it there. At :math:`\varepsilon = 10`,
    :math:`\delta = 0.1` (:math:`\sigma = 0.225`) the true :math:`\delta(10)` of this :math:`\sigma` is
    0.406 and its true :math:`\varepsilon` at :math:`\delta = 0.1` is 14.7 (the exact Gaussian privacy
    profile, Balle and Wang 2018, arXiv:1805.06530, Theorem 8); the analytic calibration gives
    :math:`\sigma = 0.282`.
    """
    sigma = check_positive("sensitivity", sensitivity) * math.sqrt(2.0 * math.log(1.25 / delta)) / check_epsilon(epsilon)
    x = np.asarray(value, dtype=float)
    return x + sigma * check_rng(rng).standard_normal(x.shape)


class StaleLedgerOdometer:
    r"""Planted bug: an odometer that reads its ledger once, at construction, then trusts its own total.

    Two of them on one ledger file, each with budget 1.0, both accept a query of 0.6 (the
    ledger ends at 1.2): the check must re-read the ledger under the file lock, as
    :class:`privlab.budget.PrivacyOdometer` must. Basic composition of :math:`\varepsilon` only.

    Args:
        total_epsilon: the budget. ledger: a path or :class:`privlab.budget.Ledger`.
    """

    def __init__(self, *, total_epsilon: float, ledger: Ledger | str | os.PathLike) -> None:
        self.total_epsilon = check_epsilon(total_epsilon, name="total_epsilon")
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.spent_epsilon = self.ledger.totals()[0]  # the bug: read once

    def spend(self, query: str, *, epsilon: float) -> LedgerRecord:
        """Append the query if the *cached* total allows it, else raise :class:`~privlab.budget.BudgetExceededError`."""
        if self.spent_epsilon + epsilon > self.total_epsilon:
            raise BudgetExceededError(f"query {query!r} refused: over the budget {self.total_epsilon}")
        record = LedgerRecord(query, epsilon=epsilon)
        self.ledger.append(record)
        self.spent_epsilon += epsilon
        return record
