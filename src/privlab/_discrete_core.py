r"""The exact sampling algorithms of Canonne, Kamath, Steinke (2020), scalar and vectorised.

Private engine of :mod:`privlab.discrete`. Two implementations of the same
algorithms (arXiv:2004.00010, Algorithms 1-3), both using only exactly uniform
integers:

- scalar, Python integers of any size: :class:`UniformIntegers` turns 64-bit
  words from ``rng.integers`` (or ``random.SystemRandom.randrange``) into
  uniform integers below any bound by rejection;
- vectorised, int64 arrays: ``rng.integers(0, high_array)`` (numpy's bounded
  integers are exactly uniform: Lemire's method with rejection), used for a
  numpy Generator, 64 draws or more, and parameters for which every
  intermediate fits in 62 bits. The coin
  :math:`\mathrm{Bernoulli}(\gamma/k)`, :math:`\gamma = n/d`, is drawn as
  :math:`\mathrm{Bernoulli}(n/d) \wedge \mathrm{Bernoulli}(1/k)`, two independent
  coins whose bounds stay small.

Rejection loops draw for a whole batch and keep the first accepted draws in
index order; acceptance is independent across indices, so they are i.i.d.

Used in: chapter 12.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np

from privlab._validate import check_array

_LIMIT = 2**62  # every vectorised intermediate stays below this
_MIN_BATCH = 64  # fewer draws than this are faster one by one


class UniformIntegers:
    """Exactly uniform integers below any bound, from a numpy Generator or a random.SystemRandom."""

    __slots__ = ("_batch", "_pos", "_rng", "_secure", "_words")

    def __init__(self, rng):
        if isinstance(rng, random.SystemRandom):
            self._secure = rng
        elif isinstance(rng, np.random.Generator):
            self._secure = None
        else:
            raise ValueError(
                "rng must be a numpy.random.Generator (privlab.config.make_rng(seed)) or a "
                f"random.SystemRandom (secure mode), got {rng!r}"
            )
        self._rng, self._words, self._pos, self._batch = rng, [], 0, 8

    def _word(self) -> int:  # a uniform 64-bit integer, fetched in growing batches
        if self._pos == len(self._words):
            self._words = self._rng.integers(0, 2**64, size=self._batch, dtype=np.uint64).tolist()
            self._pos, self._batch = 0, min(2 * self._batch, 1024)
        self._pos += 1
        return self._words[self._pos - 1]

    def below(self, m: int) -> int:
        """Uniform on {0, ..., m - 1}: (bit length of m - 1) uniform bits, rejected while >= m."""
        if m == 1:
            return 0
        if self._secure is not None:
            return self._secure.randrange(m)
        k = (m - 1).bit_length()
        while True:
            r, have = self._word(), 64
            while have < k:
                r, have = (r << 64) | self._word(), have + 64
            r >>= have - k
            if r < m:  # accepted with probability m / 2^k > 1/2
                return r


# --------------------------------------------------------------------------- validation (shared with privlab.discrete)


def check_rational(name: str, value, *, allow_zero: bool = False) -> Fraction:
    """An int or Fraction, > 0 (>= 0 with allow_zero); floats, NaN, strings refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, Fraction)):
        raise ValueError(
            f"{name} must be an exact rational (int or fractions.Fraction), got {value!r}; "
            f"write Fraction('0.1'), not 0.1"
        )
    f = Fraction(int(value)) if isinstance(value, np.integer) else Fraction(value)
    if f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return f


def check_integers(name: str, value) -> np.ndarray:
    """A non-empty integer array (integral floats accepted), as int64."""
    arr = np.asarray(value)
    if arr.dtype.kind == "O" and arr.size and all(isinstance(v, (int, np.integer)) for v in arr.ravel()):
        big = [v for v in arr.ravel() if abs(int(v)) >= 2**62]  # Python ints: check before any cast
        if big:
            raise ValueError(f"{name} must be integers below 2^62 in absolute value, got {big[0]}")
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        if arr.size == 0:
            raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
        # int64 with headroom for the noise (a uint64 beyond 2^63 or a count near 2^63 would wrap)
        if np.any(arr >= 2**62) or (arr.dtype.kind == "i" and np.any(arr <= -(2**62))):
            bad = arr[(arr >= 2**62) | ((arr <= -(2**62)) if arr.dtype.kind == "i" else False)].ravel()[0]
            raise ValueError(f"{name} must be integers below 2^62 in absolute value, got {bad}")
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise ValueError(f"{name} must be integers, got booleans {value!r}")
    arr = check_array(name, arr)
    bad = (arr != np.round(arr)) | (np.abs(arr) >= 2**53)  # beyond 2^53 a float is no exact integer count
    if np.any(bad):
        raise ValueError(f"{name} must be integers below 2^53, got {arr[bad].ravel()[0]}")
    return arr.astype(np.int64)


def add_noise(name: str, x: np.ndarray, noise) -> np.ndarray:
    """``x + noise`` in int64, refusing a sum that wraps around (a huge noise scale on a large
    count): the wrapped value would be released as if it were the noisy count."""
    noise = np.asarray(noise, dtype=np.int64)
    with np.errstate(over="ignore"):
        out = x + noise
    wrapped = ((x ^ out) & (noise ^ out)) < 0  # both summands' signs differ from the sum's
    if np.any(wrapped):
        i = np.flatnonzero(np.ravel(wrapped))[0]
        raise ValueError(f"{name} + noise does not fit in int64 ({int(np.ravel(x)[i])} + "
                         f"{int(np.ravel(noise)[i])}): lower the noise scale or the values")
    return out


# --------------------------------------------------------------------------- scalar (any size)


def bernoulli_exp_unit(num: int, den: int, src: UniformIntegers) -> int:
    """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS Algorithm 1, first branch)."""
    k = 1
    while src.below(den * k) < num:  # A ~ Bernoulli(gamma / k); continue while A = 1
        k += 1
    return k & 1  # Pr[K odd] = sum_k (-1)^(k-1) gamma^(k-1)/(k-1)! = e^-gamma


def bernoulli_exp(num: int, den: int, src: UniformIntegers) -> int:
    """Bernoulli(exp(-num/den)) for num/den >= 0: floor(gamma) coins e^-1, then e^-(fractional part)."""
    whole, rest = divmod(num, den)
    for _ in range(whole):
        if not bernoulli_exp_unit(1, 1, src):
            return 0
    return bernoulli_exp_unit(rest, den, src)


def discrete_laplace(t: int, s: int, src: UniformIntegers) -> int:
    """One draw of Lap_Z(t / s) (CKS Algorithm 2)."""
    while True:
        u = src.below(t)
        if not bernoulli_exp_unit(u, t, src):  # keep U with probability e^(-U/t)
            continue
        v = 0
        while bernoulli_exp_unit(1, 1, src):  # V ~ Geometric(1 - e^-1)
            v += 1
        y = (u + t * v) // s  # U + tV ~ Geometric(1 - e^(-1/t)); dividing by s rescales it
        negative = src.below(2)
        if negative and y == 0:  # otherwise 0 would be counted twice
            continue
        return -y if negative else y


def _gaussian_coin_terms(p: int, q: int) -> tuple[int, int]:
    """t = floor(sigma) + 1 and the denominator 2 p q t^2 of the acceptance exponent."""
    t = math.isqrt(p * q) // q + 1  # floor(sqrt(p/q)) = floor(isqrt(pq) / q)
    return t, 2 * p * q * t * t


def discrete_gaussian(p: int, q: int, src: UniformIntegers) -> int:
    """One draw of N_Z(0, p/q) (CKS Algorithm 3): Lap_Z(t) proposals, t = floor(sigma) + 1."""
    t, den = _gaussian_coin_terms(p, q)
    while True:
        y = discrete_laplace(t, 1, src)
        # accept with exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)) = exp(-(|y| t q - p)^2 / (2 p q t^2))
        if bernoulli_exp((abs(y) * t * q - p) ** 2, den, src):
            return y


# --------------------------------------------------------------------------- vectorised (int64)


def _bernoulli_exp_unit_vec(rng: np.random.Generator, num: np.ndarray, den: int) -> np.ndarray:
    """Bernoulli(exp(-num/den)) elementwise, 0 <= num <= den < 2^62."""
    k = np.ones(num.shape, dtype=np.int64)
    live = np.arange(num.size)
    while live.size:
        # A ~ Bernoulli(num/(den k)) as Bernoulli(num/den) and Bernoulli(1/k), independent
        a = (rng.integers(0, den, size=live.size) < num[live]) & (rng.integers(0, k[live]) == 0)
        live = live[a]
        k[live] += 1
    return (k & 1).astype(bool)


def _bernoulli_exp_vec(rng: np.random.Generator, num: np.ndarray, den: int) -> np.ndarray:
    """Bernoulli(exp(-num/den)) elementwise, num >= 0, den < 2^62."""
    whole, rest = np.divmod(num, den)
    alive = _bernoulli_exp_unit_vec(rng, rest, den)
    ones = np.ones(num.size, dtype=np.int64)
    j = 0
    while True:  # one coin e^-1 per unit of floor(gamma), for the elements still alive
        live = np.flatnonzero(alive & (whole > j))
        if not live.size:
            return alive
        alive[live] = _bernoulli_exp_unit_vec(rng, ones[live], 1)
        j += 1


def _geometric_e1_vec(rng: np.random.Generator, n: int) -> np.ndarray:
    """V = number of Bernoulli(e^-1) successes before the first failure, n times."""
    v = np.zeros(n, dtype=np.int64)
    live, ones = np.arange(n), np.ones(n, dtype=np.int64)
    while live.size:
        live = live[_bernoulli_exp_unit_vec(rng, ones[: live.size], 1)]
        v[live] += 1
    return v


def _discrete_laplace_vec(rng: np.random.Generator, t: int, s: int, n: int) -> np.ndarray:
    """n draws of Lap_Z(t / s) (CKS Algorithm 2), t <= 2^52, s < 2^62."""
    parts, need = [], n
    while need > 0:
        m = need + need // 2 + 16  # oversample; a shortfall is drawn in the next round
        u = rng.integers(0, t, size=m)
        u = u[_bernoulli_exp_unit_vec(rng, u, t)]  # keep U with probability e^(-U/t)
        v = _geometric_e1_vec(rng, u.size)
        if np.any(v >= (_LIMIT - t) // t):  # pragma: no cover - probability below e^-1000
            raise OverflowError("discrete Laplace draw exceeds int64")
        y = (u + t * v) // s
        negative = rng.integers(0, 2, size=u.size).astype(bool)
        z = np.where(negative, -y, y)[~(negative & (y == 0))][:need]
        parts.append(z)
        need -= z.size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _discrete_gaussian_vec(rng: np.random.Generator, p: int, q: int, n: int) -> np.ndarray:
    """n draws of N_Z(0, p/q) (CKS Algorithm 3), for 2 p q t^2 < 2^62."""
    t, den = _gaussian_coin_terms(p, q)
    parts, need, src = [], n, None
    while need > 0:
        m = need + need // 2 + 16  # oversample; a shortfall is drawn in the next round
        y = _discrete_laplace_vec(rng, t, 1, m)
        fits = np.abs(y) < _LIMIT // (t * q)
        a = np.where(fits, np.abs(y), 0) * (t * q) - p  # |y| t q - p, for the draws where it fits
        small = fits & (np.abs(a) < 2**31)  # a^2 fits in int64; the rest in Python integers
        accept = np.zeros(m, dtype=bool)
        accept[small] = _bernoulli_exp_vec(rng, a[small] ** 2, den)
        for i in np.flatnonzero(~small):  # pragma: no cover - far tails only
            src = src or UniformIntegers(rng)
            accept[i] = bernoulli_exp((abs(int(y[i])) * t * q - p) ** 2, den, src)
        z = y[accept][:need]
        parts.append(z)
        need -= z.size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- dispatch


def _scalar_loop(one, rng, n: int) -> np.ndarray:
    src = UniformIntegers(rng)
    draws = [one(src) for _ in range(n)]
    try:
        return np.array(draws, dtype=np.int64)
    except OverflowError:  # astronomically large scales: keep Python integers
        return np.array(draws, dtype=object)


def draw_bernoulli_exp(num: int, den: int, rng, n: int) -> np.ndarray:
    """n draws of Bernoulli(exp(-num/den)), as int64."""
    UniformIntegers(rng)  # validates rng
    if isinstance(rng, np.random.Generator) and n >= _MIN_BATCH and den < _LIMIT and num < _LIMIT:
        return _bernoulli_exp_vec(rng, np.full(n, num, dtype=np.int64), den).astype(np.int64)
    return _scalar_loop(lambda src: bernoulli_exp(num, den, src), rng, n)


def draw_discrete_laplace(t: int, s: int, rng, n: int) -> np.ndarray:
    """n draws of Lap_Z(t / s), as int64."""
    UniformIntegers(rng)
    if isinstance(rng, np.random.Generator) and n >= _MIN_BATCH and t <= 2**52 and s < _LIMIT:
        return _discrete_laplace_vec(rng, t, s, n)
    return _scalar_loop(lambda src: discrete_laplace(t, s, src), rng, n)


def draw_discrete_gaussian(p: int, q: int, rng, n: int) -> np.ndarray:
    """n draws of N_Z(0, p/q), as int64."""
    UniformIntegers(rng)
    if isinstance(rng, np.random.Generator) and n >= _MIN_BATCH and _gaussian_coin_terms(p, q)[1] < _LIMIT:
        return _discrete_gaussian_vec(rng, p, q, n)
    return _scalar_loop(lambda src: discrete_gaussian(p, q, src), rng, n)
