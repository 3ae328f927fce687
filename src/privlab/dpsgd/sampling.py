r"""Batch samplers for DP-SGD: Poisson sampling (what the accountants assume) and shuffling.

**Poisson sampling.** Every example joins each batch independently with
probability :math:`q` (the *sample rate*). Equivalently, and this is how it is
drawn here,

.. math::
    m \sim \mathrm{Binomial}(N, q), \qquad
    S \mid m \;\sim\; \text{uniform over the } \tbinom{N}{m} \text{ subsets of } \{0,\dots,N-1\}
    \text{ of size } m,

since under independent inclusion every subset of a given size is equally
likely. The size comes from NumPy's exact binomial sampler; the subset from
``numpy.random.Generator.choice(N, m, replace=False, shuffle=False)``, which
runs *Floyd's algorithm* with a hash set (expected :math:`O(m)` time and
memory) when :math:`m \le N/20` or :math:`N \le 10^4`, and a partial
Fisher-Yates shuffle of the last :math:`m` of :math:`N` positions otherwise,
:math:`O(N) \le O(20 m)` there (see ``numpy/random/_generator.pyx``). Either way
the cost is proportional to the batch, not to :math:`N`: about 0.2 ms for
:math:`m = 4096` out of :math:`N = 5 \cdot 10^7`, sorting included. Indices are
returned sorted (kinder to memory) as int64 CPU tensors. Empty batches
(:math:`m = 0`) happen and are returned as empty tensors; the DP step must still
add noise for them.

Floyd's algorithm (Bentley and Floyd, *Programming pearls: a sample of
brilliance*, CACM 30(9), 1987): for :math:`j = N-m, \dots, N-1`, draw
:math:`t` uniform in :math:`\{0..j\}`; insert :math:`t` unless already chosen,
else insert :math:`j`. Each :math:`m`-subset comes out with probability
:math:`1/\binom{N}{m}`.

**Shuffling.** Fixed-size batches from a random permutation per epoch, as most
training code does. The Poisson accountants do *not* apply to it: Chua et al.,
*How Private are DP-SGD Implementations?*, ICML 2024 (arXiv:2403.17673) show the
privacy of shuffled batches can be much worse than the Poisson epsilon usually
reported for them. :class:`ShuffleSampler` warns with
:class:`PoissonAccountingWarning`.

Randomness: a ``torch.Generator`` (a NumPy generator is derived from it once,
deterministically) or a ``numpy.random.Generator`` used directly.

Reference for Poisson subsampling in DP-SGD: Abadi et al. 2016
(arXiv:1607.00133); Mironov, Talwar, Zhang 2019 (arXiv:1908.10530).

Used in: chapters 6, 7, 13.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .._validate import check_int, check_probability

__all__ = ["SAMPLERS", "PoissonAccountingWarning", "PoissonSampler", "ShuffleSampler", "make_sampler",
           "steps_per_epoch", "uniform_subset"]

#: The batch samplers a DP-SGD run can name (:attr:`privlab.dpsgd.DPSGDConfig.sampler`):
#: :class:`PoissonSampler` and :class:`ShuffleSampler`.
SAMPLERS = ("poisson", "shuffle")


#: The most steps :func:`steps_per_epoch` gives (sample rates below its inverse are refused).
MAX_STEPS_PER_EPOCH = 10**9


def steps_per_epoch(sample_rate: float) -> int:
    r"""Steps in one epoch at sample rate :math:`q`: :math:`\max(1, \mathrm{round}(1/q))`.

    An epoch then sees :math:`N` examples in expectation (:math:`qN` per step), so
    :math:`E` epochs are :math:`T = E \cdot \max(1, \mathrm{round}(1/q))` steps:
    the convention of :func:`privlab.dpsgd.train` and of every experiment that
    accounts a run by its epochs. (Opacus and ``privlab epsilon`` count
    :math:`\lceil EN/B \rceil` instead.)

    Raises:
        ValueError: ``sample_rate`` not in :math:`(0, 1]`, or so small that an epoch would be more
            than :data:`MAX_STEPS_PER_EPOCH` steps.

    >>> steps_per_epoch(0.16), steps_per_epoch(0.01), steps_per_epoch(0.9)
    (6, 100, 1)

    Used in: chapters 6, 7, 12, 13.
    """
    q = check_probability("sample_rate", sample_rate)
    if q * MAX_STEPS_PER_EPOCH < 1:  # also 1/q overflowing to inf (q = 1e-320)
        raise ValueError(f"sample_rate must be at least 1/{MAX_STEPS_PER_EPOCH:.0e} (an epoch of at most "
                         f"{MAX_STEPS_PER_EPOCH:.0e} steps), got {sample_rate!r}")
    return max(1, round(1 / q))



class PoissonAccountingWarning(UserWarning):
    """Batches are not Poisson-sampled, so a Poisson accountant's epsilon does not apply."""


def _numpy_rng(generator) -> np.random.Generator:
    """The NumPy generator to draw from: ``generator`` itself, or one seeded once from a torch generator."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = torch.randint(0, 2**62, (2,), generator=generator, device=generator.device).tolist()
        return np.random.default_rng(seed)
    raise ValueError(
        "generator must be a torch.Generator or numpy.random.Generator "
        f"(privlab.config.make_torch_generator(seed)), got {generator!r}"
    )


def uniform_subset(n: int, m: int, *, rng: np.random.Generator) -> Tensor:
    r"""A uniformly random size-``m`` subset of :math:`\{0, \dots, n-1\}`, sorted, as an int64 tensor.

    Each of the :math:`\binom{n}{m}` subsets has probability :math:`1/\binom{n}{m}`;
    cost :math:`O(m \log m)`, independent of ``n`` (Floyd's algorithm; see the module docstring).

    Args:
        n: population size :math:`N \ge 1`.
        m: subset size, :math:`0 \le m \le N`.
        rng: NumPy generator.

    Raises:
        ValueError: if ``m`` is outside ``[0, n]``.

    >>> s = uniform_subset(10**12, 5, rng=np.random.default_rng(0))
    >>> s.shape, s.dtype, bool((s[1:] > s[:-1]).all())
    (torch.Size([5]), torch.int64, True)
    """
    n = check_int("n", n, minimum=1)
    m = check_int("m", m, minimum=0)
    if m > n:
        raise ValueError(f"m must be at most n = {n}, got {m}")
    idx = rng.choice(n, size=m, replace=False, shuffle=False).astype(np.int64, copy=False)
    idx.sort()
    return torch.from_numpy(idx)


class PoissonSampler:
    r"""Poisson-sampled batches of indices: each example is in a batch with probability ``sample_rate``.

    .. math::  m \sim \mathrm{Binomial}(N, q), \quad S = \text{uniform } m\text{-subset of } \{0,\dots,N-1\}

    Symbols: :math:`N` is ``n``, :math:`q` is ``sample_rate``. One epoch is
    ``steps`` batches, by default :math:`\max(1, \mathrm{round}(1/q))` (an epoch
    then sees :math:`N` examples in expectation). Iterating yields sorted int64
    CPU tensors; a batch may be empty. Cost per batch :math:`O(m \log m)`.

    Args:
        n: dataset size :math:`N \ge 1`.
        sample_rate: :math:`q \in (0, 1]`.
        generator: ``torch.Generator`` or ``numpy.random.Generator``, the only
            source of randomness.
        steps: batches per epoch (default :math:`\max(1, \mathrm{round}(1/q))`).

    Raises:
        ValueError: naming a bad ``n``, ``sample_rate``, ``steps`` or generator.

    Reference: Abadi et al. 2016 (arXiv:1607.00133), section 3.1 ("lots").

    >>> sampler = PoissonSampler(1000, sample_rate=0.01, generator=torch.Generator().manual_seed(0))
    >>> len(sampler), all(b.numel() <= 1000 for b in sampler)
    (100, True)

    Used in: chapters 6, 7, 13.
    """

    def __init__(self, n: int, *, sample_rate: float, generator, steps: int | None = None):
        self.n = check_int("n", n, minimum=1)
        self.sample_rate = check_probability("sample_rate", sample_rate)
        default = steps_per_epoch(self.sample_rate)
        self.steps = default if steps is None else check_int("steps", steps, minimum=1)
        self.rng = _numpy_rng(generator)

    def __len__(self) -> int:
        return self.steps

    @property
    def expected_batch_size(self) -> float:
        """:math:`qN`, the normaliser of the DP-SGD update."""
        return self.sample_rate * self.n

    def batch_size(self) -> int:
        r"""Draw :math:`m \sim \mathrm{Binomial}(N, q)`."""
        return int(self.rng.binomial(self.n, self.sample_rate))

    def sample(self) -> Tensor:
        """One Poisson batch: sorted int64 indices (possibly empty)."""
        return uniform_subset(self.n, self.batch_size(), rng=self.rng)

    def __iter__(self) -> Iterator[Tensor]:
        for _ in range(self.steps):
            yield self.sample()


class ShuffleSampler:
    r"""Fixed-size batches from a fresh random permutation each epoch (warns: not Poisson).

    Args:
        n: dataset size :math:`N \ge 1`.
        batch_size: examples per batch :math:`b`.
        generator: ``torch.Generator`` or ``numpy.random.Generator``.
        drop_last: drop the last, smaller batch.

    Warns:
        PoissonAccountingWarning: always, on construction; the Poisson epsilon
        does not describe this sampler (Chua et al. 2024, arXiv:2403.17673).

    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     s = ShuffleSampler(10, batch_size=4, generator=torch.Generator().manual_seed(0))
    >>> [b.numel() for b in s], sorted(torch.cat(list(s)).tolist()) == list(range(10))
    ([4, 4, 2], True)

    Used in: chapters 6, 7.
    """

    def __init__(self, n: int, *, batch_size: int, generator, drop_last: bool = False):
        self.n = check_int("n", n, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.batch_size > self.n:
            raise ValueError(f"batch_size must be at most n = {self.n} with drop_last, got {batch_size}")
        self.rng = _numpy_rng(generator)
        warnings.warn(
            "ShuffleSampler: shuffled fixed-size batches are not Poisson sampling; an epsilon from a "
            "Poisson-subsampled accountant does not apply to them (Chua et al. 2024, arXiv:2403.17673)",
            PoissonAccountingWarning,
            stacklevel=2,
        )

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    @property
    def sample_rate(self) -> float:
        """:math:`b / N`, the rate a (mistaken) Poisson accounting would use."""
        return min(1.0, self.batch_size / self.n)

    @property
    def expected_batch_size(self) -> float:
        """:math:`b`."""
        return float(min(self.batch_size, self.n))

    def __iter__(self) -> Iterator[Tensor]:
        perm = torch.from_numpy(self.rng.permutation(self.n).astype(np.int64, copy=False))
        for k in range(len(self)):
            yield perm[k * self.batch_size : (k + 1) * self.batch_size].sort().values


def make_sampler(kind: str, n: int, *, sample_rate: float, seed: int) -> PoissonSampler | ShuffleSampler:
    r"""The batch sampler a DP-SGD run names (:data:`SAMPLERS`), seeded from one integer.

    ``"poisson"``: :class:`PoissonSampler` at rate :math:`q`; ``"shuffle"``:
    :class:`ShuffleSampler` with :math:`b = \max(1, \mathrm{round}(qN))` (warns). Both draw
    from ``torch.Generator().manual_seed(seed)``, so a seed from :func:`privlab.dpsgd.run_seeds`
    reproduces the batches of :func:`privlab.dpsgd.train`.

    Raises:
        ValueError: ``kind`` not in :data:`SAMPLERS`, or a bad ``n`` or ``sample_rate``.

    >>> [b.numel() for b in make_sampler("poisson", 100, sample_rate=0.25, seed=0)]
    [24, 22, 20, 33]

    Used in: chapters 6, 7.
    """
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "poisson":
        return PoissonSampler(n, sample_rate=sample_rate, generator=gen)
    if kind == "shuffle":
        q = check_probability("sample_rate", sample_rate)
        return ShuffleSampler(n, batch_size=max(1, round(q * n)), generator=gen)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {kind!r}")
