r"""The registry of the DP test suite: every release privlab offers, with its claim and worst-case neighbours.

An entry (:class:`Release`) states whom the release protects (its neighbouring
relation: ``"add/remove"`` one record, ``"replace-one"``, or ``"zero-out"`` for a record
zeroed in place), its claimed
:math:`(\varepsilon, \delta)`, one or more candidate pairs of neighbouring
inputs :math:`(D, D')` chosen to be the worst case (the pair that makes the
privacy loss largest, e.g. a canary with a huge gradient), and ``draw(data, n,
rng)``, which returns :math:`n` independent outputs of the release on ``data``
through the package's own code. A *functional* entry checks a property that is
not a distribution (the budget odometer) and reports the measured
:math:`\varepsilon` directly.

Planted-broken twins (``twin_of`` set) are the same releases with one classic
mistake (:mod:`privlab.audit.planted`); :mod:`privlab.audit.dp_test` must catch
every one of them and pass every honest entry.

**Adding an entry** (e.g. the sparse-vector variants of Lyu, Su and Li 2017,
arXiv:1603.01699, as twins of an honest sparse vector):
``register(Release(name=..., relation=..., epsilon=..., delta=..., pairs=((D, D'),),
draw=..., twin_of="sparse vector", bug="..."))``. ``draw`` returns the answer
vector (e.g. 1 for :math:`\top`, 0 for :math:`\bot`), shape ``(n, k)``; the
tester then tries a mean-difference projection and a logistic-regression
classifier; where the violating event is known (their Section 5 uses events
such as "the answers are exactly :math:`(\bot, \dots, \bot, \top)`"), pass it
as an extra statistic, ``statistics=(lambda y: np.all(y == pattern, axis=1),)``,
which the tester adds to its candidates and chooses among on the pilot sample.

Used in: chapters 5, 12.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from privlab import sensitivity as sens
from privlab.accounting import dpsgd_epsilon
from privlab.audit.planted import (
    StaleLedgerOdometer,
    classic_gaussian_any_epsilon,
    half_noise_laplace,
    old_snapping_mechanism,
    subgroup_mean,
)
from privlab.budget import BudgetExceededError, Ledger, PrivacyOdometer
from privlab.discrete import (
    discrete_gaussian_epsilon,
    discrete_gaussian_mechanism,
    discrete_laplace_mechanism,
    snapping_mechanism,
)
from privlab.dpsgd import DPOptimizer
from privlab.federated.dp import ClientLevelDP
from privlab.federated.fedavg import FedAvg
from privlab import continual as _continual
from privlab.local_dp import cms_client, grr_perturb, unary_perturb
from privlab.losses import bce_losses
from privlab.local_sensitivity import smooth_median
from privlab.selection import permute_and_flip, report_noisy_max
from privlab.sparse_vector import broken_svt_threshold_noise_only, broken_svt_unscaled_query_noise
from privlab.sparse_vector import sparse_vector as sparse_vector_mechanism
from privlab.synthetic.marginal import MarginalSynthesizer
from privlab.mechanisms import (
    exponential_mechanism,
    exponential_mechanism_gumbel,
    gaussian_mechanism,
    laplace_mechanism,
    randomized_response,
)

__all__ = ["REGISTRY", "RELATIONS", "FunctionalOutcome", "Release", "register"]

RELATIONS = ("add/remove", "replace-one", "zero-out")


@dataclass(frozen=True)
class FunctionalOutcome:
    """What a functional check measured: the privacy loss actually incurred against the claim, in words too."""

    epsilon_measured: float
    detail: str


@dataclass(frozen=True)
class Release:
    r"""One release of the package under test: its claim, its worst-case neighbours, how to draw its outputs.

    Attributes:
        name: unique, e.g. ``"laplace count"``.
        relation: ``"add/remove"``, ``"replace-one"`` or ``"zero-out"`` (one record's contribution replaced
            by zero in place, as in DP-FTRL's fixed order) (the privacy unit is one record unless ``unit``
            says otherwise).
        epsilon: the claimed :math:`\varepsilon`.
        delta: the claimed :math:`\delta`.
        pairs: candidate neighbouring pairs :math:`(D, D')`; the tester chooses one on its pilot sample.
        draw: ``draw(data, n, rng) -> array`` of ``n`` outputs, shape ``(n,)`` or ``(n, k)``.
        check: for a functional entry (``draw`` is ``None``): ``check(rng) -> FunctionalOutcome``.
        twin_of: for a planted-broken twin, the honest entry it breaks; the suite must catch it.
        bug: the planted mistake, in words.
        unit: the privacy unit, e.g. ``"record"``, ``"client"``, ``"user's bit"``.
        samples: outputs per neighbour in the main stage, per scale (the pilot draws half as many).
        statistics: extra test statistics ``s(outputs) -> (n,)`` to try (e.g. a known violating event).
    """

    name: str
    relation: str
    epsilon: float
    delta: float
    pairs: tuple = ()
    draw: Callable | None = None
    check: Callable | None = None
    twin_of: str | None = None
    bug: str = ""
    unit: str = "record"
    samples: dict = field(default_factory=lambda: {"smoke": 20_000, "book": 200_000})
    statistics: tuple = ()

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be a finite number > 0, got {self.epsilon}")
        if not 0 <= self.delta < 1:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        if (self.draw is None) == (self.check is None):
            raise ValueError(f"{self.name!r}: give exactly one of draw (statistical) or check (functional)")
        if self.draw is not None and not self.pairs:
            raise ValueError(f"{self.name!r}: a statistical entry needs at least one pair (D, D')")

    @property
    def functional(self) -> bool:
        return self.check is not None


#: name -> :class:`Release`, in registration order.
REGISTRY: dict[str, Release] = {}


def register(release: Release) -> Release:
    """Add ``release`` to :data:`REGISTRY` (a twin's ``twin_of`` must name a registered entry); returns it."""
    if release.name in REGISTRY:
        raise ValueError(f"a release named {release.name!r} is already registered")
    if release.twin_of is not None and release.twin_of not in REGISTRY:
        raise ValueError(f"{release.name!r}: twin_of {release.twin_of!r} is not registered")
    REGISTRY[release.name] = release
    return release


def _repeat(value, n: int) -> np.ndarray:
    """``n`` copies of ``value`` along a new first axis (one release each).

    Passing the copies in one call is ``n`` independent releases for the mechanisms whose noise per
    coordinate does not depend on the number of coordinates (Laplace, Gaussian, discrete Laplace and
    Gaussian, randomized response); snapping, whose vector calibration does, is called per release.
    """
    v = np.asarray(value)
    return np.broadcast_to(v, (n, *v.shape)).copy()


# ----- the mechanisms (privlab.mechanisms, privlab.discrete) ----------------------------------------
register(Release(
    name="laplace count", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((1, 0),),
    draw=lambda c, n, rng: laplace_mechanism(_repeat(float(c), n), sensitivity=sens.counting_sensitivity(),
                                             epsilon=1.0, rng=rng)))
register(Release(
    name="gaussian classic", relation="add/remove", epsilon=0.9, delta=1e-5, pairs=((1.0, 0.0),),
    draw=lambda c, n, rng: gaussian_mechanism(_repeat(c, n), sensitivity=1.0, epsilon=0.9, delta=1e-5, rng=rng,
                                              calibration="classic")))
register(Release(
    name="gaussian analytic", relation="add/remove", epsilon=1.0, delta=1e-5, pairs=((1.0, 0.0),),
    draw=lambda c, n, rng: gaussian_mechanism(_repeat(c, n), sensitivity=1.0, epsilon=1.0, delta=1e-5, rng=rng)))
register(Release(
    name="gaussian analytic eps 10", relation="add/remove", epsilon=10.0, delta=0.1, pairs=((1.0, 0.0),),
    draw=lambda c, n, rng: gaussian_mechanism(_repeat(c, n), sensitivity=1.0, epsilon=10.0, delta=0.1, rng=rng),
    samples={"smoke": 1_000_000, "book": 4_000_000}))
# exponential mechanism, k = 100 candidates: u(D) = (1, 0, ..., 0), u(D') = (0, 1, ..., 1) moves every
# utility by Delta = 1, the pair for which Pr[r = 0] changes by a factor of nearly e^eps
_U0 = np.r_[1.0, np.zeros(99)]
register(Release(
    name="exponential mechanism", relation="replace-one", epsilon=1.0, delta=0.0, pairs=((_U0, 1.0 - _U0),),
    draw=lambda u, n, rng: exponential_mechanism(u, epsilon=1.0, sensitivity=1.0, rng=rng, size=n)))
register(Release(
    name="exponential mechanism (gumbel)", relation="replace-one", epsilon=1.0, delta=0.0,
    pairs=((_U0, 1.0 - _U0),), samples={"smoke": 10_000, "book": 100_000},
    draw=lambda u, n, rng: exponential_mechanism_gumbel(u, epsilon=1.0, sensitivity=1.0, rng=rng, size=n)))
register(Release(
    name="randomized response", relation="replace-one", epsilon=1.0, delta=0.0, pairs=((1, 0),), unit="user's bit",
    draw=lambda bit, n, rng: randomized_response(np.full(n, bit), epsilon=1.0, rng=rng)))
register(Release(
    name="discrete laplace", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((1, 0),),
    draw=lambda c, n, rng: discrete_laplace_mechanism(np.full(n, c), sensitivity=1, epsilon=1, rng=rng)))
register(Release(
    name="discrete gaussian", relation="add/remove", epsilon=discrete_gaussian_epsilon(sigma2=1, delta=1e-5),
    delta=1e-5, pairs=((1, 0),),
    draw=lambda c, n, rng: discrete_gaussian_mechanism(np.full(n, c), sigma2=1, rng=rng)))
register(Release(
    name="snapping", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((1.0, 0.0), (0.505, -0.495)),
    draw=lambda x, n, rng: snapping_mechanism(np.full(n, x), sensitivity=1.0, epsilon=1, lower=-8.0, upper=8.0,
                                              rng=rng, grid_bits=0, elementwise=True)))
# snapping on a vector, d = 100: 0.505 vs 0.495 in every coordinate (L1 distance 1) round 100 grid steps apart
register(Release(
    name="snapping vector", relation="add/remove", epsilon=1.0, delta=0.0,
    pairs=((np.full(100, 0.505), np.full(100, 0.495)),), samples={"smoke": 200, "book": 1_000},
    draw=lambda x, n, rng: np.array([snapping_mechanism(x, sensitivity=1.0, epsilon=1, lower=-1e4, upper=1e4,
                                                        rng=rng, grid_bits=0) for _ in range(n)])))

# ----- DP statistics the chapters compute (Laplace on a bounded query) -------------------------------
_SUM_D, _SUM_D1 = [1.0, -2.0, 5.0], [1.0, -2.0]  # D' = D minus a record at the bound b = 5
register(Release(
    name="dp sum", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((_SUM_D, _SUM_D1),),
    draw=lambda d, n, rng: laplace_mechanism(_repeat(sens.bounded_sum(d, lower=-2, upper=5), n), epsilon=1.0,
                                             sensitivity=sens.bounded_sum_sensitivity(lower=-2, upper=5), rng=rng)))
_MEAN_D, _MEAN_D1 = np.zeros(10), np.r_[np.zeros(9), 1.0]  # n = 10 public, one record replaced 0 -> 1
register(Release(
    name="dp mean", relation="replace-one", epsilon=1.0, delta=0.0, pairs=((_MEAN_D1, _MEAN_D),),
    draw=lambda d, n, rng: laplace_mechanism(_repeat(sens.bounded_mean(d, lower=0, upper=1), n), epsilon=1.0,
                                             sensitivity=sens.bounded_mean_sensitivity(lower=0, upper=1, n=len(d)),
                                             rng=rng)))
_HIST_D, _HIST_D1 = np.array([3, 1, 0, 2, 0]), np.array([3, 1, 1, 2, 0])  # D' adds a record in bin 2
register(Release(
    name="dp histogram", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((_HIST_D1, _HIST_D),),
    draw=lambda h, n, rng: laplace_mechanism(_repeat(h.astype(float), n), epsilon=1.0,
                                             sensitivity=sens.histogram_l1_sensitivity(), rng=rng)))


# ----- one DP-SGD step (privlab.dpsgd) -----------------------------------------------------------
def _dpsgd_step_draw(sigma: float, q: float, clip: float):
    r"""``draw`` for one Poisson-sampled DP-SGD step of a tiny logistic model through :class:`DPOptimizer`'s stages.

    Data: one background example and (in :math:`D`) a canary whose gradient is huge and orthogonal to
    the background's (worst case, add/remove). The clipped sum of every possible batch is computed once
    with the optimizer's own ``clipped_sum``; each of the ``n`` steps draws its Poisson batch, and the
    optimizer's ``add_noise`` and ``scale`` (one call for all ``n`` steps: i.i.d. noise per coordinate).
    """
    model = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()

    bce = bce_losses

    def draw(rows, n, rng):
        X = torch.tensor([[1.0, 0.0], [0.0, 100.0]], dtype=torch.float64)[list(rows)]
        y = torch.ones(len(rows), dtype=torch.float64)
        dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=sigma, max_grad_norm=clip,
                         expected_batch_size=q * 2, generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
                         method="loop")
        sums = {}
        for mask in range(2 ** len(rows)):  # every Poisson batch: the optimizer's clipped sum, once
            idx = [i for i in range(len(rows)) if mask >> i & 1]
            sums[mask] = (dp.clipped_sum(model, bce, X[idx], y[idx]).grads[0].reshape(-1) if idx
                          else torch.zeros(2, dtype=torch.float64))
        masks = (rng.random((n, len(rows))) < q) @ (1 << np.arange(len(rows)))
        table = torch.stack([sums[m] for m in range(2 ** len(rows))])
        summed = table[torch.as_tensor(masks)]  # (n, 2)
        return dp.scale(dp.add_noise([summed]))[0].numpy()

    return draw


_SGD = dict(sigma=1.0, q=0.5, clip=1.0)
register(Release(
    name="dp-sgd step", relation="add/remove", delta=1e-5,
    epsilon=float(dpsgd_epsilon(noise_multiplier=_SGD["sigma"], sample_rate=_SGD["q"], steps=1, delta=1e-5)),
    pairs=(((0, 1), (0,)),), draw=_dpsgd_step_draw(**_SGD), samples={"smoke": 20_000, "book": 400_000}))


# ----- one DP-FedAvg round (privlab.federated.dp) ---------------------------------------------------
def _fedavg_round_draw(rule: ClientLevelDP, algo: FedAvg):
    """``draw`` for one client-level DP-FedAvg round: the rule's own select, clip and finish, per round.

    ``data`` is the clients' model updates ``(K, P)``; background clients send 0 (the canary's direction is
    untouched by anyone else), the canary client a huge update.
    """
    def draw(updates, n, rng):
        deltas = torch.as_tensor(np.asarray(updates, dtype=np.float64))
        clipped = rule.client_vectors(deltas, np.ones(len(deltas)))
        k = len(deltas)
        out = np.empty((n, deltas.shape[1]))
        for r in range(n):
            sel = rule.select(k, algo, rng)
            total = clipped[torch.as_tensor(sel, dtype=torch.long)].sum(0)
            out[r] = rule.finish(total, k, algo, rng).numpy()
        return out
    return draw


_FED_RULE, _FED_ALGO = ClientLevelDP(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5), FedAvg(clients_per_round=5)
_FED_D = np.r_[[[50.0, 0.0]], np.zeros((9, 2))]  # 10 clients, the first one the canary
register(Release(
    name="dp-fedavg round", relation="add/remove", unit="client", delta=1e-5,
    epsilon=_FED_RULE.epsilon(1, len(_FED_D), _FED_ALGO), pairs=((_FED_D, _FED_D[1:]),),
    draw=_fedavg_round_draw(_FED_RULE, _FED_ALGO), samples={"smoke": 2_000, "book": 20_000}))


# ----- the marginal synthesizer's measurements (privlab.synthetic.marginal) --------------------------
def _marginal_draw(data, n, rng):
    """The raw noisy measurements of :class:`~privlab.synthetic.marginal.MarginalSynthesizer` (1-way, 2-way)."""
    df = pd.DataFrame(data, columns=["a", "b"])
    out = []
    for _ in range(n):
        syn = MarginalSynthesizer(epsilon=1.0, delta=1e-6, domain={"a": ["x", "y"], "b": ["u", "v"]},
                                  ipf_iterations=1).fit(df, rng=rng)
        out.append(np.concatenate([*syn.noisy_one_way_.values(), *[t.ravel() for t in syn.noisy_two_way_.values()]]))
    return np.array(out)


_ROWS = [("x", "u"), ("y", "v"), ("x", "v")]
register(Release(
    name="marginal synthesizer", relation="add/remove", epsilon=1.0, delta=1e-6,
    pairs=((_ROWS + [("y", "u")], _ROWS),), draw=_marginal_draw, samples={"smoke": 100, "book": 1_000}))


# ----- the budget odometer (privlab.budget): a functional entry ---------------------------------------
def _two_odometers(make) -> Callable:
    """Two odometers on one ledger, budget 1.0 each, each asked for 0.6: the ledger's total is what was spent."""
    def check(rng) -> FunctionalOutcome:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ledger.jsonl"
            first, second = make(path), make(path)
            accepted = 0
            for odometer in (first, second):
                try:
                    odometer.spend("query", epsilon=0.6)
                    accepted += 1
                except BudgetExceededError:
                    pass
            total = Ledger(path).totals()[0]
        return FunctionalOutcome(total, f"{accepted} of 2 queries of 0.6 accepted; ledger total {total:g}")
    return check


register(Release(
    name="odometer", relation="add/remove", epsilon=1.0, delta=1e-6, unit="data set (budget)",
    check=_two_odometers(lambda p: PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=p))))


# ----- selection, the sparse vector, local DP (privlab.selection, .sparse_vector, .local_dp) ----------
_SELECT_PAIR = ((np.array([1.0, 0.0, 0.0]), np.zeros(3)),)      # one record added to candidate 0's count


def _svt_pattern(out) -> np.ndarray:
    """1 if the SVT's two answers are exactly (bot, top): impossible on (1, 0) without query noise."""
    return np.all(np.asarray(out)[:, :2] == [0, 1], axis=1).astype(float)


def _svt_half_difference(out) -> np.ndarray:
    """Tops among the first half of the queries minus tops among the second half (rho cancels)."""
    o = np.asarray(out) == 1
    h = o.shape[1] // 2
    return o[:, :h].sum(1) - o[:, h:].sum(1)


_SVT_PAIRS = ((np.array([0.0, 1.0]), np.array([1.0, 0.0])),
              (np.r_[np.ones(10), np.zeros(10)], np.r_[np.zeros(10), np.ones(10)]))


# the pairs move queries in opposite directions (some down by 1, others up by 1), which counts
# under add/remove cannot and counts under replace-one can (the record leaves one set and enters
# another): relation replace-one, and the general-query SVT (monotonic=False, query noise
# Lap(2c Delta/eps2), Lyu et al. Alg. 1)
_SVT_UNIT = "record (replace-one: counting queries each move by <= 1, in any direction)"


def _svt_draw(fn):
    return lambda q, n, rng: fn(q, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=rng, size=n)


register(Release(
    name="report noisy max (laplace)", relation="add/remove", epsilon=1.0, delta=0.0, pairs=_SELECT_PAIR,
    draw=lambda q, n, rng: report_noisy_max(q, epsilon=1.0, sensitivity=1.0, rng=rng, monotonic=True, size=n)))
register(Release(
    name="permute-and-flip", relation="add/remove", epsilon=1.0, delta=0.0, pairs=_SELECT_PAIR,
    draw=lambda q, n, rng: permute_and_flip(q, epsilon=1.0, sensitivity=1.0, rng=rng, monotonic=True, size=n)))
register(Release(
    name="sparse vector", relation="replace-one", epsilon=1.0, delta=0.0, unit=_SVT_UNIT,
    pairs=_SVT_PAIRS[:1], statistics=(_svt_pattern,), draw=_svt_draw(sparse_vector_mechanism)))
register(Release(
    name="sparse vector, 20 queries", relation="replace-one", epsilon=1.0, delta=0.0,
    unit=_SVT_UNIT, pairs=_SVT_PAIRS[1:], statistics=(_svt_half_difference,),
    draw=_svt_draw(sparse_vector_mechanism)))
register(Release(
    name="k-ary randomized response", relation="replace-one", epsilon=1.0, delta=0.0, unit="person's value",
    pairs=((0, 1),), draw=lambda v, n, rng: grr_perturb(np.full(n, v), k=4, epsilon=1.0, rng=rng)))
for _kind in ("optimized", "symmetric"):
    register(Release(
        name=f"unary encoding ({_kind})", relation="replace-one", epsilon=1.0, delta=0.0,
        unit="person's value", pairs=((0, 1),), samples={"smoke": 20_000, "book": 200_000},
        draw=lambda v, n, rng, kind=_kind: unary_perturb(np.full(n, v), k=4, epsilon=1.0,
                                                         rng=rng, kind=kind).astype(float)))


def _cms_draw(v, n, rng):
    """The count-mean sketch report: hash index and the m flipped signs, one row each."""
    j, signs = cms_client(np.full(n, v), epsilon=1.0, m=8, h=2, rng=rng)
    return np.column_stack([j, signs])


register(Release(
    name="count-mean sketch", relation="replace-one", epsilon=1.0, delta=0.0,
    unit="person's value", pairs=((0, 1),), draw=_cms_draw))
# smooth sensitivity: replace-one with n public; the pair moves the median by its local
# sensitivity (5 -> 8)
register(Release(
    name="smooth-sensitivity median", relation="replace-one", epsilon=1.0, delta=1e-6,
    pairs=((np.array([1.0, 2.0, 5.0, 8.0, 9.0]), np.array([1.0, 2.0, 8.0, 8.0, 9.0])),),
    draw=lambda x, n, rng: smooth_median(x, upper=10.0, epsilon=1.0, delta=1e-6, rng=rng,
                                         size=n)))


def _stream_draw(fn):
    """All T = 8 prefix sums of a 0/1 stream, n runs (the mechanism takes one stream)."""
    return lambda x, n, rng: np.array([fn(x, epsilon=1.0, rng=rng) for _ in range(n)])


_STREAM_PAIR = ((np.zeros(8), np.r_[np.zeros(3), 1.0, np.zeros(4)]),)   # one event changed
for _name, _fn in (("noisy increments", _continual.noisy_increment_counts),
                   ("binary tree counts", _continual.binary_tree_counts)):
    register(Release(
        name=_name, relation="replace-one", epsilon=1.0, delta=0.0,
        unit="event of the stream (one x_t in {0, 1} changed)", pairs=_STREAM_PAIR,
        samples={"smoke": 2_000, "book": 40_000}, draw=_stream_draw(_fn)))


# ----- planted-broken twins ---------------------------------------------------------------------
register(Release(
    name="laplace half noise", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((1, 0),),
    samples={"smoke": 50_000, "book": 200_000},
    twin_of="laplace count", bug="Laplace scale Delta/(2 eps): half the noise (true eps = 2)",
    draw=lambda c, n, rng: half_noise_laplace(np.full(n, float(c)), sensitivity=1.0, epsilon=1.0, rng=rng)))
register(Release(
    name="mean, private subgroup size", relation="replace-one", epsilon=1.0, delta=0.0,
    pairs=(((np.zeros(3), [True, False, False]), (np.zeros(3), [True, True, False])),), twin_of="dp mean",
    bug="sensitivity (b - a)/n_g with n_g the private subgroup count (n_g = 1 vs 2, equal means)",
    draw=lambda d, n, rng: subgroup_mean(d[0], d[1], lower=0.0, upper=1.0, epsilon=1.0, rng=rng, size=n)))
register(Release(
    name="snapping, old vector calibration", relation="add/remove", epsilon=1.0, delta=0.0,
    pairs=((np.full(100, 0.505), np.full(100, 0.495)),), twin_of="snapping vector",
    samples={"smoke": 4_000, "book": 40_000},
    bug="noise for integer sensitivity ceil(Delta/gamma) = 1 while rounding 100 coordinates adds 100 grid steps",
    draw=lambda x, n, rng: old_snapping_mechanism(_repeat(x, n), sensitivity=1.0, epsilon=1.0, lower=-8.0,
                                                  upper=8.0, grid_bits=0, rng=rng)))
register(Release(
    name="gaussian classic at eps 10", relation="add/remove", epsilon=10.0, delta=0.1, pairs=((1.0, 0.0),),
    twin_of="gaussian analytic eps 10", samples={"smoke": 4_000_000, "book": 4_000_000},
    bug="sigma = sqrt(2 ln(1.25/delta))/eps (proved for eps < 1) at eps = 10, delta = 0.1: true eps 14.7",
    draw=lambda c, n, rng: classic_gaussian_any_epsilon(np.full(n, c), sensitivity=1.0, epsilon=10.0, delta=0.1,
                                                        rng=rng)))
register(Release(
    name="odometer, stale ledger", relation="add/remove", epsilon=1.0, delta=0.0, unit="data set (budget)",
    twin_of="odometer", bug="reads the shared ledger once; two odometers each accept 0.6 of a budget of 1",
    check=_two_odometers(lambda p: StaleLedgerOdometer(total_epsilon=1.0, ledger=p))))
register(Release(
    name="SVT, threshold noise only", relation="replace-one", epsilon=1.0, delta=0.0,
    unit=_SVT_UNIT, pairs=_SVT_PAIRS[:1], statistics=(_svt_pattern,),
    twin_of="sparse vector", bug="Lyu, Su, Li 2017 Alg. 5 (Stoddard et al. 2014): no noise on the queries",
    draw=_svt_draw(broken_svt_threshold_noise_only)))
register(Release(
    name="SVT, query noise not scaled by c", relation="replace-one", epsilon=1.0, delta=0.0,
    unit=_SVT_UNIT, pairs=_SVT_PAIRS[1:], statistics=(_svt_half_difference,),
    twin_of="sparse vector, 20 queries",
    bug="Lyu, Su, Li 2017 Alg. 6 (Chen et al. 2015): query noise Lap(2/eps), no cutoff",
    draw=_svt_draw(broken_svt_unscaled_query_noise)))


# ----- Lyu, Su, Li 2017 Alg. 3: the SVT that outputs the noisy answer (privlab.sparse_vector) --------
from privlab.sparse_vector import broken_svt_noisy_answer  # noqa: E402  (appended section)

_ALG3_M = 6  # queries; the privacy loss of the event below is exactly m eps / 2 = 3 (docstring)


def _svt_noisy_answer_draw(q, n, rng):
    """Alg. 3 with c = 1, encoded without loss as (index of the first top, or m; its noisy answer, or 0)."""
    codes, answers = broken_svt_noisy_answer(q, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=rng,
                                             size=n)
    top = codes == 1
    first = np.where(top.any(axis=1), top.argmax(axis=1), codes.shape[1])
    return np.column_stack([first, np.nan_to_num(answers, nan=0.0).sum(axis=1)])


def _svt_late_low_answer(out) -> np.ndarray:
    """-a if the first m - 1 answers are bot and the m-th is top with noisy answer a, else -1e6:
    {s >= t} is the event (bot^(m-1), a <= -t), whose probability ratio is e^(m eps / 2) for t >= 0."""
    y = np.asarray(out)
    return np.where(y[:, 0] == _ALG3_M - 1, -y[:, 1], -1e6)


def _svt_monotonic_draw(q, n, rng):
    """The honest monotone SVT (c = 1) in Alg. 3's encoding: (index of the first top, or m; 0 for its answer)."""
    codes = sparse_vector_mechanism(q, threshold=0.0, c=1, epsilon=1.0, sensitivity=1.0, rng=rng, monotonic=True,
                                    size=n)
    top = codes == 1
    first = np.where(top.any(axis=1), top.argmax(axis=1), codes.shape[1])
    return np.column_stack([first, np.zeros(n)])


# the honest control of Alg. 3: the same noise (Lap(c Delta/eps2) on the queries, monotone counts), the
# same pair, encoding and event (bot^(m-1), top), releasing top instead of the noisy answer
register(Release(
    name="sparse vector, monotonic", relation="add/remove", epsilon=1.0, delta=0.0,
    unit="record (counting queries, all up by <= 1 together)",
    pairs=((np.zeros(_ALG3_M), np.ones(_ALG3_M)),), statistics=(_svt_late_low_answer,),
    samples={"smoke": 100_000, "book": 400_000}, draw=_svt_monotonic_draw))
register(Release(
    name="SVT, noisy answer output", relation="add/remove", epsilon=1.0, delta=0.0,
    unit="record (counting queries, all up by <= 1 together)",
    pairs=((np.zeros(_ALG3_M), np.ones(_ALG3_M)),), statistics=(_svt_late_low_answer,),
    twin_of="sparse vector, monotonic", samples={"smoke": 100_000, "book": 400_000},
    bug="Lyu, Su, Li 2017 Alg. 3 (Roth 2011): releases q_i + nu_i for the answer above the threshold",
    draw=_svt_noisy_answer_draw))


# ----- local sensitivity and TopDown (privlab.local_sensitivity, privlab.topdown) -------------------
import pandas as _pd  # noqa: E402  (appended section)

from privlab import topdown as _topdown  # noqa: E402
from privlab.accounting.zcdp import zcdp_to_epsilon as _zcdp_to_epsilon  # noqa: E402
from privlab.local_sensitivity import ptr_median as _ptr_median  # noqa: E402
from privlab.local_sensitivity import sample_and_aggregate as _sample_and_aggregate  # noqa: E402

# propose-test-release at eps = 0.5 per step, (2 eps, delta) = (1, 1e-6), replace-one (n public). D: 141
# values in [0, 10], the 81 middle ones 0.035 apart, so gamma(D) = 28 sits at the test's threshold
# ln(1/delta)/eps = 27.6 (answers 58% of the time); D' replaces the median's upper neighbour by 0:
# gamma 27 (answers 36%) and the median moves down by 0.035
_PTR_D = np.sort(np.r_[np.zeros(30), 5 + 0.035 * np.arange(-40, 41), np.full(30, 10.0)])
_PTR_D1 = np.sort(np.r_[np.zeros(31), 5 + 0.035 * np.r_[np.arange(-40, 1), np.arange(2, 41)], np.full(30, 10.0)])


def _ptr_draw(x, n, rng):
    """(refused, released median or 0): the release's two parts."""
    out = _ptr_median(x, upper=10.0, bound=1.0, epsilon=0.5, delta=1e-6, rng=rng, size=n)
    return np.column_stack([np.isnan(out), np.nan_to_num(out, nan=0.0)])


register(Release(
    name="propose-test-release median", relation="replace-one", epsilon=1.0, delta=1e-6,
    pairs=((_PTR_D, _PTR_D1),), draw=_ptr_draw, samples={"smoke": 20_000, "book": 200_000}))


# sample-and-aggregate, add/remove: the block maximum clipped to [0, 1] over m = 3 random blocks; D' adds a
# record at 1, which moves exactly one block's value from 0 to 1, the mean by (b - a)/m: the Laplace
# mechanism's worst case (privacy loss exactly eps in the tails)
def _sa_draw(mechanism, statistic, blocks):
    """``draw(x, n, rng)``: n releases of a sample-and-aggregate ``mechanism`` on [0, 1] at epsilon 1."""
    def draw(x, n, rng):
        return np.array([mechanism(np.asarray(x, dtype=float), statistic, blocks=blocks, lower=0.0, upper=1.0,
                                   epsilon=1.0, rng=rng) for _ in range(n)])

    return draw


register(Release(
    name="sample-and-aggregate", relation="add/remove", epsilon=1.0, delta=0.0,
    pairs=((np.r_[np.zeros(6), 1.0], np.zeros(6)),), draw=_sa_draw(_sample_and_aggregate, np.max, 3),
    samples={"smoke": 3_000, "book": 20_000}))


# the same mechanism with a statistic that reads its block's size and whether the added record is in it
# (any statistic is allowed): D has 10 records at 0, D' adds one at 1, m = 5. With blocks drawn per record
# the added record changes one block value; with a balanced partition (the twin) D' always has one block
# of 3 and four of 2, D five of 2, and with probability 8/11 the statistic moves two block values: the
# privacy loss of outputs >= 2/5 is ln((8 e^(2 eps) + 3) / 11) = 1.73 (expert review, session 10)
from privlab.local_sensitivity import broken_balanced_sample_and_aggregate as _broken_balanced_sa  # noqa: E402


def _block_size_statistic(rows) -> float:
    has_added = bool(np.any(np.asarray(rows) == 1.0))
    return float((len(rows) == 3 and not has_added) or (len(rows) == 2 and has_added))


_SA_SIZE_PAIR = ((np.zeros(10), np.r_[np.zeros(10), 1.0]),)
register(Release(
    name="sample-and-aggregate, size-reading statistic", relation="add/remove", epsilon=1.0, delta=0.0,
    pairs=_SA_SIZE_PAIR, draw=_sa_draw(_sample_and_aggregate, _block_size_statistic, 5), samples={"smoke": 5_000, "book": 40_000}))
register(Release(
    name="sample-and-aggregate, balanced blocks", relation="add/remove", epsilon=1.0, delta=0.0,
    pairs=_SA_SIZE_PAIR, twin_of="sample-and-aggregate, size-reading statistic",
    samples={"smoke": 5_000, "book": 40_000}, draw=_sa_draw(_broken_balanced_sa, _block_size_statistic, 5),
    bug="blocks are a uniformly random balanced partition (permutation(n) % m): adding a record changes "
        "the block sizes and who shares a block, so two block values move"))


# TopDown in miniature, replace-one with the national total invariant: nation -> 2 regions -> 2 areas
# each, 2 cells; D' moves one person to another region, area and cell (one cell -1, one +1 per level).
# Claim: 2 sum_l rho_l zCDP (L2 sensitivity sqrt 2 per level) converted at delta = 1e-6. The output is
# the raw measurements and the post-processed release, concatenated. The exact sampler is slow
# (a few ms a release): few samples at smoke scale.
_TD_DOMAINS = {"region": ["a", "b"], "area": ["x", "y"]}
_TD_ROWS = [("a", "x", "u"), ("a", "y", "v"), ("b", "x", "u"), ("b", "y", "v")] * 2
_TD_RHO = 0.02  # per level


def _td_hierarchy(rows):
    frame = _pd.DataFrame(rows, columns=["region", "area", "cell"])
    return _topdown.build_hierarchy(frame, levels=["region", "area"], cell="cell", level_domains=_TD_DOMAINS,
                                    cell_domain=["u", "v"])


def _topdown_draw(rows, n, rng):
    h = _td_hierarchy(rows)
    out = []
    for _ in range(n):
        noisy, released = _topdown.topdown(h, rho_per_level=[_TD_RHO] * 3, rng=rng)
        out.append(np.concatenate([a.ravel() for a in noisy + released]))
    return np.array(out, dtype=float)


register(Release(
    name="topdown", relation="replace-one", unit="person (national total invariant)",
    epsilon=float(_zcdp_to_epsilon(rho=2 * 3 * _TD_RHO, delta=1e-6)), delta=1e-6,
    pairs=((tuple(_TD_ROWS), tuple([("b", "y", "v")] + _TD_ROWS[1:])),), draw=_topdown_draw,
    samples={"smoke": 300, "book": 2_000}))


# the mistake the local-sensitivity section starts from: Laplace noise scaled to the local sensitivity
from privlab.local_sensitivity import broken_local_sensitivity_median as _broken_ls_median  # noqa: E402

register(Release(
    name="median, local-sensitivity noise", relation="replace-one", epsilon=1.0, delta=1e-6,
    pairs=((np.array([3.0, 5.0, 5.0, 5.0, 9.0]), np.array([3.0, 5.0, 5.0, 7.0, 9.0])),),
    twin_of="smooth-sensitivity median", samples={"smoke": 2_000, "book": 20_000},
    bug="noise Lap(LS(D)/eps): LS = 0 on D (three equal middle values) releases the exact median",
    draw=lambda x, n, rng: _broken_ls_median(x, upper=10.0, epsilon=1.0, rng=rng, size=n)))


# continual release, the third answer the chapter compares: fresh Lap(T/eps) on every prefix sum; the
# event changed at t = 1 moves all T = 8 releases (the worst case)
register(Release(
    name="fresh noise per release", relation="replace-one", epsilon=1.0, delta=0.0,
    unit="event of the stream (one x_t in {0, 1} changed)", pairs=((np.zeros(8), np.r_[1.0, np.zeros(7)]),),
    samples={"smoke": 2_000, "book": 40_000}, draw=_stream_draw(_continual.naive_fresh_counts)))


# ----- DP-FTRL's tree of prefix sums (privlab.ftrl) ------------------------------------------------
# One example's clipped gradient (norm C = 1) sits in the first of T = 4 leaves, against that
# leaf zeroed in place (zero-out: the fixed order keeps every other leaf where it is): it enters
# L = 3 nodes, all four prefix sums. Node noise z C with z calibrated to
# eps = 1 at delta = 1e-5 (one Gaussian mechanism of noise multiplier z / sqrt(L): exact). One coordinate per run: the n runs
# are the n columns of one tree (independent coordinates).
from privlab import ftrl as _ftrl  # noqa: E402

_FTRL_T = 4
_FTRL_Z = _ftrl.calibrate_ftrl_noise(target_epsilon=1.0, delta=1e-5, steps_per_epoch=_FTRL_T)


def _ftrl_tree_draw(stream, n, rng):
    tree = _ftrl.TreePrefixSum(_FTRL_T, dim=n, std=_FTRL_Z * 1.0, rng=rng)
    return np.array([tree.add(np.full(n, v)) for v in stream]).T   # (n, T): all prefix sums


register(Release(
    name="dp-ftrl tree", relation="zero-out", delta=1e-5,
    unit="example (its leaf zeroed in place)",
    epsilon=_ftrl.ftrl_epsilon(noise_multiplier=_FTRL_Z, steps_per_epoch=_FTRL_T, delta=1e-5),
    pairs=((np.r_[1.0, np.zeros(_FTRL_T - 1)], np.zeros(_FTRL_T)),), draw=_ftrl_tree_draw,
    samples={"smoke": 20_000, "book": 200_000}))
