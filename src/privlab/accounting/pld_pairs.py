r"""Privacy loss distributions of single mechanisms, and their pessimistic discretisation.

For a pair of output distributions :math:`(P, Q)` (the mechanism on a dataset
and on a neighbour), the privacy loss is :math:`L = \ln(dP/dQ)` and its
distribution under :math:`P` is the *privacy loss distribution* (PLD). It
determines the whole privacy profile (Sommer, Meiser, Mohammadi 2019; Koskela,
Jälkö, Honkela 2020, arXiv:1906.03049):

.. math::
    \delta(\varepsilon) = \mathbb E_P\big[(1 - e^{\varepsilon - L})_+\big]
        = P(L > \varepsilon) - e^{\varepsilon} Q(L > \varepsilon).

Each pair here is described only by its loss tails :math:`P(L > l), Q(L > l)`
and their complements :math:`P(L \le l), Q(L \le l)`, each computed directly so
that tiny tails keep their relative precision:

* Gaussian, :math:`\sigma`: :math:`L \sim \mathcal N(\mu, 2\mu)` under P and
  :math:`\mathcal N(-\mu, 2\mu)` under Q, :math:`\mu = 1/(2\sigma^2)`;
* Laplace, scale b: :math:`L = (|x-1| - |x|)/b \in [-1/b, 1/b]`, with atoms at both ends;
* (epsilon, delta)-DP: the canonical worst-case pair (Kairouz, Oh, Viswanath 2015);
* Poisson subsampling of any base pair with loss :math:`\ell`, rate :math:`q`:
  "remove" :math:`L = \ln(1 - q + q e^{\ell})` with
  :math:`P' = qP + (1-q)Q,\ Q' = Q`; "add" :math:`L = -\ln(1 - q + q e^{\ell})`
  with :math:`P' = Q,\ Q' = qP + (1-q)Q` (Zhu, Dong, Wang 2022, arXiv:2106.08567).
  Both are monotone in :math:`\ell`, so their tails are the base tails at
  :math:`t(l) = \ln((e^l - 1 + q)/q)`.

Discretisation (:func:`discretise`) on the grid :math:`l_i = i\Delta`: the mass
of each interval :math:`(l_i, l_{i+1}]` is split between its two ends so that
both its P-mass and its Q-mass are kept,

.. math::
    b_i = \frac{P_i - e^{l_i} Q_i}{1 - e^{-\Delta}}\ \text{at } l_{i+1}, \qquad a_i = P_i - b_i\ \text{at } l_i.

This is exactly the pessimistic "connect-the-dots" PLD of Doroshenko, Ghazi,
Kamath, Kumar, Manurangsi 2022 (arXiv:2207.04380): its privacy profile is the
chord of the true one (convex in :math:`e^\varepsilon`) between grid points, so
it lies above it and every epsilon computed from it is an upper bound; its error
is second order in :math:`\Delta`, unlike plain rounding up whose bias grows
like :math:`k\Delta/2` over k compositions. Mass below the grid is rounded up
to the lowest point, mass above it is sent to :math:`+\infty` (counted in delta).

>>> pmf = discretise(GaussianLoss(1.0), step=0.01, tail_mass=1e-12, bulk=(-5.0, 6.0))
>>> round(float(pmf.probs.sum()) + pmf.infinity_mass, 12)
1.0

Used in: chapter 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from .events import EpsilonDeltaEvent, GaussianEvent, LaplaceEvent, PoissonSampledEvent

__all__ = ["GaussianLoss", "LaplaceLoss", "EpsilonDeltaLoss", "SubsampledLoss", "DiscretePld", "event_pairs",
           "discretise", "loss_range", "loss_moments", "delta_of_pmf", "epsilon_of_pmf"]


class GaussianLoss:
    """Loss pair of the Gaussian mechanism with noise multiplier ``sigma`` (symmetric)."""

    def __init__(self, sigma: float) -> None:
        if not 2 * sigma * sigma > 0:  # 1e-300 squared underflows: the loss would divide by zero
            raise ValueError(f"noise multiplier {sigma!r} is too small: 2 sigma^2 underflows to 0")
        self.sigma, self.mu = sigma, 1.0 / (2 * sigma * sigma)

    def tails(self, l):
        """``(P(L>l), Q(L>l), P(L<=l), Q(L<=l))``."""
        s, mu = self.sigma, self.mu
        return (special.ndtr((mu - l) * s), special.ndtr((-mu - l) * s),
                special.ndtr((l - mu) * s), special.ndtr((l + mu) * s))


def _laplace_cdf(x, m: float, b: float):
    """P(X < x) and P(X >= x) for X ~ Lap(m, b), both without cancellation."""
    z = (x - m) / b
    half_tail = 0.5 * np.exp(-np.abs(z))
    return np.where(z < 0, half_tail, 1 - half_tail), np.where(z < 0, 1 - half_tail, half_tail)


class LaplaceLoss:
    """Loss pair of the Laplace mechanism with scale ``b`` (sensitivity 1, symmetric)."""

    def __init__(self, b: float) -> None:
        self.b = b

    def tails(self, l):
        l = np.asarray(l, dtype=float)
        b, top = self.b, 1.0 / self.b
        x = (1 - b * np.clip(l, -top, top)) / 2  # L > l  <=>  x < (1 - b l) / 2
        p_lt, p_ge = _laplace_cdf(x, 0.0, b)
        q_lt, q_ge = _laplace_cdf(x, 1.0, b)
        above, below = l >= top, l < -top  # L never exceeds 1/b; always exceeds l < -1/b
        fix = lambda v, hi, lo: np.where(above, hi, np.where(below, lo, v))  # noqa: E731
        return fix(p_lt, 0.0, 1.0), fix(q_lt, 0.0, 1.0), fix(p_ge, 1.0, 0.0), fix(q_ge, 1.0, 0.0)


class EpsilonDeltaLoss:
    r"""The worst (epsilon, delta)-DP pair: atoms at :math:`\pm\varepsilon` and :math:`+\infty` (symmetric)."""

    def __init__(self, epsilon: float, delta: float) -> None:
        self.eps, self.delta = epsilon, delta
        self.p_hi = (1 - delta) * float(special.expit(epsilon))  # P-mass at +eps (= Q-mass at -eps)
        self.p_lo = (1 - delta) * float(special.expit(-epsilon))  # P-mass at -eps; no overflow past eps = 709

    def tails(self, l):
        l = np.asarray(l, dtype=float)
        hi, lo = (l < self.eps).astype(float), (l < -self.eps).astype(float)
        p_gt = self.delta + self.p_hi * hi + self.p_lo * lo
        q_gt = self.p_lo * hi + self.p_hi * lo
        p_le = self.p_hi * (1 - hi) + self.p_lo * (1 - lo)
        q_le = self.delta + self.p_lo * (1 - hi) + self.p_hi * (1 - lo)
        return p_gt, q_gt, p_le, q_le


class SubsampledLoss:
    """Loss pair of ``base`` run on a Poisson subsample of rate ``q``, for one adjacency direction."""

    def __init__(self, base, q: float, direction: str) -> None:
        if direction not in ("remove", "add"):
            raise ValueError(f"direction must be 'remove' or 'add', got {direction!r}")
        self.base, self.q, self.direction = base, q, direction

    def _t(self, l):
        r"""t(l) = log((e^l - 1 + q) / q) and the mask where it exists (e^l > 1 - q).

        For l > 0 as :math:`l + \ln(1 - (1-q)e^{-l}) - \ln q`, which never overflows: ``expm1(l)`` is
        inf beyond l = 709.78, which made every larger loss count as 709.78 and the PLD under-report
        epsilon (a red-team read: a subsampled Laplace step of epsilon 1000 at q = 1/2 read 709.79,
        the truth being 999.31).
        """
        l = np.asarray(l, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            pos = l > 0
            big = l + np.log1p(-(1 - self.q) * np.exp(-np.where(pos, l, 0.0)))  # l > 0: the log's argument >= q
            arg = np.expm1(np.where(pos, 0.0, l)) + self.q
            ok = pos | (arg > 0)
            small = np.log(np.where(arg > 0, arg, 1.0))
            return np.where(ok, np.where(pos, big, small) - math.log(self.q), -np.inf), ok

    def tails(self, l):
        l = np.asarray(l, dtype=float)
        q = self.q
        if self.direction == "remove":  # L > l  <=>  base loss > t(l); L >= log(1-q) always
            t, ok = self._t(l)
            bp_gt, bq_gt, bp_le, bq_le = self.base.tails(t)
            out = (q * bp_gt + (1 - q) * bq_gt, bq_gt, q * bp_le + (1 - q) * bq_le, bq_le)
            return tuple(np.where(ok, v, fill) for v, fill in zip(out, (1.0, 1.0, 0.0, 0.0)))
        # add: L > l  <=>  base loss < t(-l); L <= -log(1-q) always
        u, ok = self._t(-l)
        bp_gt, bq_gt, bp_le, bq_le = self.base.tails(u)
        out = (bq_le, q * bp_le + (1 - q) * bq_le, bq_gt, q * bp_gt + (1 - q) * bq_gt)
        return tuple(np.where(ok, v, fill) for v, fill in zip(out, (0.0, 0.0, 1.0, 1.0)))


@dataclass
class DiscretePld:
    """A PLD on grid points ``index * step`` (``index`` increasing integers) plus mass at +infinity."""

    step: float
    index: np.ndarray
    probs: np.ndarray
    infinity_mass: float

    @property
    def losses(self) -> np.ndarray:
        return self.index * self.step


_PROBE = np.concatenate([-np.geomspace(2.0**24, 2.0**-40, 129), [0.0], np.geomspace(2.0**-40, 2.0**24, 129)])


def _bisect(f, lo: float, hi: float, rounds: int = 4, points: int = 64) -> tuple[float, float]:
    """Shrink [lo, hi] around the switch of the vectorised monotone predicate f (False at lo, True at hi)."""
    for _ in range(rounds):
        x = np.linspace(lo, hi, points + 2)[1:-1]
        ok = f(x)
        i = int(np.argmax(ok)) if ok.any() else points
        lo, hi = (x[i - 1] if i > 0 else lo), (x[i] if i < points else hi)
    return lo, hi


def loss_range(pair, tail_mass: float) -> tuple[float, float]:
    """``(lo, hi)`` with ``P(L <= lo) <= tail_mass`` and ``P(hi < L < inf) <= tail_mass``."""
    p_inf = float(pair.tails(np.array([np.inf]))[0][0])
    too_high = lambda x: pair.tails(x)[0] - p_inf <= tail_mass  # noqa: E731
    too_low = lambda x: pair.tails(x)[2] > tail_mass  # noqa: E731
    p_gt, _, p_le, _ = pair.tails(_PROBE)
    upper_ok, lower_bad = p_gt - p_inf <= tail_mass, p_le > tail_mass  # both False ... True in l
    hi, lo = _PROBE[-1], _PROBE[0]
    if upper_ok.any():
        i = int(np.argmax(upper_ok))
        hi = _PROBE[i] if i == 0 else _bisect(too_high, _PROBE[i - 1], _PROBE[i])[1]
    if lower_bad.any():
        j = int(np.argmax(lower_bad))
        lo = _PROBE[j] if j == 0 else _bisect(too_low, _PROBE[j - 1], _PROBE[j])[0]
    return float(min(lo, hi)), float(max(hi, lo))


def loss_moments(pair, lo: float, hi: float) -> tuple[float, float]:
    """Mean and variance of the finite part of L under P, from its CDF on a grid fine near 0 and across [lo, hi]."""
    span = max(abs(lo), abs(hi), 1e-300)
    grid = np.unique(np.concatenate([
        np.linspace(lo, hi, 2049),
        np.geomspace(span * 1e-14, span, 1024), -np.geomspace(span * 1e-14, span, 1024), [0.0]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    _, _, p_le, _ = pair.tails(grid)
    mass = np.diff(p_le)
    mid = 0.5 * (grid[1:] + grid[:-1])
    total = mass.sum()
    if total <= 0:
        return 0.0, 0.0
    mean = (mass * mid).sum() / total
    return float(mean), float((mass * (mid - mean) ** 2).sum() / total)


_MAX_BULK_POINTS = 1 << 24  # 16M grid points (128 MiB of float64) for one step's bulk


class PldGridTooLargeError(ValueError):
    """The privacy loss spans too many grid steps for a discretised PLD (noise far too small)."""


def _grid_indices(i_lo: int, i_a: int, i_b: int, i_hi: int, growth: float) -> np.ndarray:
    """All integers in [i_a, i_b]; outside, gaps that grow geometrically out to i_lo and i_hi."""
    if i_b - i_a > _MAX_BULK_POINTS:
        raise PldGridTooLargeError(
            f"the bulk of the privacy loss needs {i_b - i_a:,} grid points (limit {_MAX_BULK_POINTS:,})")
    def side(start: int, stop: int, sign: int) -> list:
        out, pos, gap = [], start, 1
        while sign * (stop - pos) > 0:
            pos = pos + sign * gap if sign * (stop - pos - sign * gap) > 0 else stop
            out.append(pos)
            gap = max(gap + 1, int(gap * growth))
        return out

    below = side(i_a, i_lo, -1)[::-1]
    above = side(i_b, i_hi, +1)
    return np.concatenate([np.array(below, dtype=np.int64), np.arange(i_a, i_b + 1, dtype=np.int64),
                           np.array(above, dtype=np.int64)])


def discretise(pair, *, step: float, tail_mass: float, bounds: tuple[float, float] | None = None,
               bulk: tuple[float, float] | None = None, growth: float = 1.02) -> DiscretePld:
    """Pessimistic (connect-the-dots) discretisation of ``pair`` on grid points ``i * step``.

    Every grid point inside ``bulk`` is used; outside it the gaps between the
    points used grow geometrically (by ``growth``), which keeps a few hundred
    points where a uniform grid would need 10^5, at no loss of pessimism (the
    connect-the-dots split works on any set of grid points).

    Args:
        pair: a loss pair (an object with ``tails(l)``).
        step: the grid spacing :math:`\\Delta`.
        tail_mass: mass allowed beyond the grid on each side (below: rounded up;
            above: sent to infinity).
        bounds: precomputed :func:`loss_range` (optional).
        bulk: the region discretised at full resolution (default: all of it).
        growth: growth factor of the gaps outside ``bulk``.

    Returns:
        The discretised PLD.
    """
    lo, hi = bounds if bounds is not None else loss_range(pair, tail_mass)
    i_lo, i_hi = math.floor(lo / step), math.ceil(hi / step)
    i_hi = max(i_hi, i_lo + 1)
    a, b = bulk if bulk is not None else (lo, hi)
    i_a = min(max(math.floor(a / step), i_lo), i_hi)
    i_b = min(max(math.ceil(b / step), i_a), i_hi)
    index = _grid_indices(i_lo, i_a, i_b, i_hi, growth)
    grid = index * step
    p_gt, q_gt, p_le, q_le = pair.tails(grid)
    # interval masses of (l_i, l_{i+1}]: difference the upper tail where it is small, else the lower one
    p_int = np.where(p_gt[:-1] <= 0.5, p_gt[:-1] - p_gt[1:], p_le[1:] - p_le[:-1]).clip(min=0.0)
    q_int = np.where(q_gt[:-1] <= 0.5, q_gt[:-1] - q_gt[1:], q_le[1:] - q_le[:-1]).clip(min=0.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # e^{l_i} Q_i computed as exp(l_i + log Q_i) so that it cannot overflow
        eq = np.where(q_int > 0, np.exp(grid[:-1] + np.log(np.where(q_int > 0, q_int, 1.0))), 0.0)
    upper = np.clip((p_int - eq) / -np.expm1(-np.diff(grid)), 0.0, p_int)  # mass moved to l_{i+1}
    probs = np.zeros(grid.size)
    probs[:-1] += p_int - upper
    probs[1:] += upper
    probs[0] += p_le[0]  # everything at or below the grid, rounded up to its lowest point
    keep = probs > 0
    keep[0] = True
    return DiscretePld(step=step, index=index[keep], probs=probs[keep], infinity_mass=float(p_gt[-1]))


def _base_pair(event):
    """The loss pair of a mechanism that is not subsampled."""
    if isinstance(event, GaussianEvent):
        return GaussianLoss(event.noise_multiplier)
    if isinstance(event, LaplaceEvent):
        return LaplaceLoss(event.scale)
    return EpsilonDeltaLoss(event.epsilon, event.delta)


def event_pairs(event) -> tuple:
    """(remove pair, add pair) of a leaf event; the same object twice when symmetric."""
    if isinstance(event, PoissonSampledEvent):
        base = _base_pair(event.event)
        return (SubsampledLoss(base, event.sample_rate, "remove"), SubsampledLoss(base, event.sample_rate, "add"))
    pair = _base_pair(event)
    return pair, pair


def has_atoms(event) -> bool:
    """Whether the event's privacy loss has atoms (point masses)."""
    inner = event.event if isinstance(event, PoissonSampledEvent) else event
    return isinstance(inner, (LaplaceEvent, EpsilonDeltaEvent))


def pure_atom(event):
    """The loss atom of a pure-DP-style event that is not subsampled (None otherwise)."""
    if isinstance(event, LaplaceEvent):
        return event.epsilon
    if isinstance(event, EpsilonDeltaEvent) and event.epsilon > 0:
        return event.epsilon
    return None


def delta_of_pmf(s: np.ndarray, p: np.ndarray, p_inf: float, epsilon: float) -> float:
    """delta(eps) = sum_{s > eps} p(s) (1 - e^{eps - s}) + p(inf) for a pmf on losses s."""
    keep = s > epsilon
    return float(np.sum(p[keep] * -np.expm1(epsilon - s[keep])) + p_inf)


def epsilon_of_pmf(s: np.ndarray, p: np.ndarray, p_inf: float, delta: float):
    """Exact epsilon of the discrete PLD at delta: (epsilon, index of its grid cell), or None if below."""
    if p_inf >= delta:
        return math.inf, len(s) - 1
    a = np.cumsum(p[::-1])[::-1]                                   # A_j = sum_{m >= j} p_m
    with np.errstate(divide="ignore"):
        if s[-1] - s[0] < 700:  # B_j = sum_{m >= j} p_m e^{-s_m}, scaled by e^{s_top}: no overflow
            log_b = np.log(np.cumsum((p * np.exp(s[-1] - s))[::-1])[::-1]) - s[-1]
        else:
            log_b = np.logaddexp.accumulate((np.log(p) - s)[::-1])[::-1]
    # delta at s_j uses the mass strictly above s_j: A_{j+1} - e^{s_j} B_{j+1} + p_inf
    with np.errstate(divide="ignore"):
        d = a[1:] - np.exp(np.minimum(s[:-1] + log_b[1:], 700.0)) + p_inf
    over = np.nonzero(d > delta)[0]
    if over.size == 0:
        return (0.0, 0) if s[0] <= 0 else None
    j = int(over[-1])
    # on (s_j, s_{j+1}]: delta(eps) = A_{j+1} + p_inf - e^eps B_{j+1}
    eps = math.log(max(a[j + 1] + p_inf - delta, 1e-300)) - log_b[j + 1]
    return max(0.0, min(max(eps, s[j]), s[j + 1])), j
