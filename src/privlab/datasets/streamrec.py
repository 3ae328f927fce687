r"""StreamRec: a seeded, vectorised generator of click data for a fictional streaming service.

The generative model (all symbols per user :math:`u`, item :math:`i`):

* **users** have a segment :math:`s_u \in` {power_users, casual, new_users}
  (15 / 65 / 20 % of users) and a market :math:`m_u \in` {eu, us, jp}
  (35 / 45 / 20 %). Power and casual users are active on all days
  :math:`1..D` (:math:`D = 30`); a new user joins on a day
  :math:`f_u \sim \mathrm{U}\{2..D\}`, so is active on fewer than 30 days.
  Each user has an activity rate :math:`\lambda_u = \rho_{s_u} \cdot
  \mathrm{LogNormal}(0, 0.5^2)` (interactions per active day; :math:`\rho` =
  4, 0.6, 0.5: new users have sparse histories) and a latent taste
  :math:`p_u = c_{m_u} + z_u`, :math:`z_u \sim \mathcal N(0, I_d)`, around a
  market centroid :math:`c_m` of norm 0.75.
* **items** (a catalogue) have a latent :math:`q_i \sim \mathcal N(0, I_d)`,
  a click bias :math:`b_i \sim \mathcal N(0, 0.5^2)` and an exposure
  popularity :math:`\pi_i \propto r_i^{-0.8}` (Zipf over a random rank :math:`r_i`).
* **interactions** (impressions): user :math:`\propto \lambda_u \times`
  (active days), day uniform over the user's active days, item
  :math:`\sim \pi`; then a click :math:`y \sim \mathrm{Bernoulli}(\sigma(\ell_{ui}))` with

.. math::
    \ell_{ui} = \alpha_{s_u} + \beta_{m_u} + b_i + \kappa_{s_u} \tilde\pi_i
              + \gamma_{s_u}\,\frac{\langle p_u, q_i \rangle}{\sqrt d},

  :math:`\alpha = (0, -0.5, -1)`, :math:`\kappa = (0, 0.2, 0.8)`,
  :math:`\gamma = (2, 1.5, 1)` (power/casual/new), :math:`\beta = (-0.2, 0, 0.2)`
  (eu/us/jp), :math:`\tilde\pi_i` the :math:`\log \pi_i` z-scored under
  :math:`\pi` (mean 0 over impressions): power users
  click most and follow their own taste most; new users click less, follow the
  crowd (popular items), and their behaviour must be learned from the few rows
  they contribute.
* **features** (what a model sees; 40 per interaction, z-scored): 20 per user,
  :math:`[\log\lambda_u + \epsilon,\; \text{active days}/D + \epsilon,\; W_u p_u/\sqrt d + \eta_u]`
  with :math:`\eta_u \sim \mathcal N(0, \tau_{s_u}^2 I_{18})`, :math:`\tau = (0.5, 0.8, 1.5)`:
  new users' features are noisiest, their history being short; 20 per item,
  :math:`[b_i/0.5 + \epsilon,\; \log \pi_i + \epsilon,\; W_i q_i/\sqrt d + \eta_i]`,
  :math:`\eta_i \sim \mathcal N(0, 0.5^2 I_{18})`. :math:`W_u, W_i \in \mathbb R^{18 \times d}`
  are fixed Gaussian projections, :math:`d = 8`. The features carry real but
  imperfect signal: a linear model only sees the main effects (bias terms), the
  taste match :math:`\langle p_u, q_i\rangle` needs the interaction of user and item features.
* **split by time**: days :math:`1..D-5` train, the last 5 days test. **Ranking
  candidates**: a sample of test users with at least one test click; each gets
  its distinct test impressions (relevant if clicked) plus up to 100 items drawn
  from :math:`\pi` it was not shown in the test days (label 0), in random order. An
  item the user was shown, or clicked, in the training days can be one of them
  (measured, seed 0: 4% of the negatives were clicked in training at this module's smoke
  scale, 10% for power users, 0.4% for new users; 6%, 13%, 0.8% with the experiment's smoke
  profile, ``streamrec_profile("smoke")``), so Recall@20 counts a return to an old favourite
  as a miss.

The true logit (:meth:`StreamRecData.oracle_logit`) gives a ceiling no
feature-based model can beat in AUC (:meth:`StreamRecData.ceiling`). Measured,
seed 0 (AUC on the test rows; Recall@20 over the candidates):

=====================================  ==============  ==============
scorer                                 smoke           book
=====================================  ==============  ==============
true logit (ceiling)                   0.852 / 0.538   0.848 / 0.452
logistic regression on the features    0.606 / 0.302   0.618 / 0.327
random scores                          0.5 / 0.234     0.5 / 0.221
=====================================  ==============  ==============

Sizes by scale (:func:`privlab.config.get_scale`): smoke 40,000 interactions,
book 1.5 million, paper 50 million (1 million users, 50,000 items). Rows are
generated in chunks of one million, each with its own child generator, so the
data depend only on the seed and the chunk size; they take 14 bytes a row
(0.7 GB at the paper scale, 160 more bytes a row if ``X_train`` is built).
Measured on 2 shared CPU cores: smoke 0.1 s, book 2 s, 5 million rows with
the paper's users and items 5 s, so about a minute for 50 million (an estimate).

>>> from privlab.config import make_rng
>>> data = generate_streamrec("smoke", rng=make_rng(0), progress=False)
>>> data.X_train.shape[1], data.X_train.dtype, data.n_train + data.n_test
(40, dtype('float32'), 40000)
>>> round(float(data.ceiling().loc["overall", "auc"]), 3)
0.852

References: Koren, Bell and Volinsky (2009), "Matrix factorization techniques
for recommender systems" (the latent-factor click model); Krichene and Rendle
(2020), "On sampled metrics for item recommendation" (sampled negatives).

Used in: chapters 8, 13.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy.special import expit
from tqdm.auto import tqdm

from privlab._validate import check_int, check_nonnegative, check_rng
from privlab.config import Scale, get_scale
from privlab.metrics import metrics_table

__all__ = ["MARKETS", "SEGMENTS", "StreamRecConfig", "StreamRecData", "generate_streamrec"]

SEGMENTS = ("power_users", "casual", "new_users")
MARKETS = ("eu", "us", "jp")
N_USER_FEATURES = N_ITEM_FEATURES = 20


@dataclass(frozen=True)
class StreamRecConfig:
    """Every knob of the generator; the symbols are those of the module docstring.

    Tuples are indexed by segment (power_users, casual, new_users) or market (eu, us, jp).
    """

    n_users: int = 50_000
    n_items: int = 5_000
    n_interactions: int = 1_500_000
    n_days: int = 30  # D
    test_days: int = 5
    n_eval_users: int = 5_000
    n_negatives: int = 100
    latent_dim: int = 8  # d
    segment_shares: tuple[float, float, float] = (0.15, 0.65, 0.20)
    market_shares: tuple[float, float, float] = (0.35, 0.45, 0.20)
    segment_rate: tuple[float, float, float] = (4.0, 0.6, 0.5)  # rho
    segment_bias: tuple[float, float, float] = (0.0, -0.5, -1.0)  # alpha
    segment_affinity: tuple[float, float, float] = (2.0, 1.5, 1.0)  # gamma
    segment_popularity: tuple[float, float, float] = (0.0, 0.2, 0.8)  # kappa
    market_bias: tuple[float, float, float] = (-0.2, 0.0, 0.2)  # beta
    market_taste: float = 0.75  # |c_m|
    item_bias_std: float = 0.5  # sd of b_i
    popularity_exponent: float = 0.8
    user_feature_noise: tuple[float, float, float] = (0.5, 0.8, 1.5)  # tau
    item_feature_noise: float = 0.5
    chunk_size: int = 1_000_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                check_int(f.name, v, minimum=1)
            elif f.type == "float":
                check_nonnegative(f.name, v)
            elif np.shape(v) != (3,) or not np.all(np.isfinite(v)):
                raise ValueError(f"{f.name} must be 3 finite numbers, got {v!r}")
        if self.test_days >= self.n_days:
            raise ValueError(f"test_days must be < n_days={self.n_days}, got {self.test_days}")
        for name in ("segment_shares", "market_shares"):
            v = getattr(self, name)
            if min(v) < 0 or not math.isclose(sum(v), 1.0, abs_tol=1e-9):
                raise ValueError(f"{name} must be 3 non-negative shares summing to 1, got {v!r}")
        if min(self.segment_rate) <= 0 or min(self.user_feature_noise) < 0:
            raise ValueError(f"segment_rate must be > 0 and user_feature_noise >= 0, "
                             f"got {self.segment_rate} and {self.user_feature_noise}")  # fmt: skip

    @classmethod
    def for_scale(cls, scale: str | Scale | None = None, **overrides) -> StreamRecConfig:
        """The configuration of a scale profile, with optional overrides.

        >>> StreamRecConfig.for_scale("paper").n_interactions
        50000000
        >>> StreamRecConfig.for_scale("smoke", n_users=100).n_users
        100
        """
        s = get_scale(scale)
        base = cls(
            n_users=s.pick(smoke=2_000, book=50_000, paper=1_000_000),
            n_items=s.pick(smoke=500, book=5_000, paper=50_000),
            n_interactions=s.pick(smoke=40_000, book=1_500_000, paper=50_000_000),
            n_eval_users=s.pick(smoke=500, book=5_000, paper=50_000),
        )
        return dataclasses.replace(base, **overrides)


@dataclass(frozen=True, eq=False, repr=False)
class StreamRecData:
    """A generated StreamRec data set: per-user and per-item tables, and the rows that index them.

    Rows store (user, item) ids; the 40 features of a row are
    ``[user_features[user], item_features[item]]`` (:meth:`features`), built
    on demand (``X_train`` etc., cached) or chunk by chunk (:meth:`iter_chunks`).
    Ground truth (``user_latent``, ``item_latent``, ``item_bias``,
    :meth:`oracle_logit`) is for checks and ceilings; a model must never see it.
    Arrays are read-only. Codes index :data:`SEGMENTS` and :data:`MARKETS`.
    """

    config: StreamRecConfig
    user_features: np.ndarray  # (U, 20) float32, z-scored
    item_features: np.ndarray  # (I, 20) float32, z-scored
    user_segment: np.ndarray  # (U,) int8
    user_market: np.ndarray  # (U,) int8
    user_first_day: np.ndarray  # (U,) int16, 1 unless new user
    user_activity: np.ndarray  # (U,) float32, lambda_u
    user_latent: np.ndarray  # (U, d) float32, p_u
    item_latent: np.ndarray  # (I, d) float32, q_i
    item_bias: np.ndarray  # (I,) float32, b_i
    item_popularity: np.ndarray  # (I,) float64, pi_i
    train_user: np.ndarray  # (N_train,) int32
    train_item: np.ndarray  # (N_train,) int32
    train_day: np.ndarray  # (N_train,) int16, 1..D-test_days
    y_train: np.ndarray  # (N_train,) float32 in {0, 1}
    test_user: np.ndarray  # (N_test,) int32
    test_item: np.ndarray  # (N_test,) int32
    test_day: np.ndarray  # (N_test,) int16
    y_test: np.ndarray  # (N_test,) float32
    cand_user: np.ndarray  # (M,) int32, sorted by user, random order within user
    cand_item: np.ndarray  # (M,) int32
    cand_label: np.ndarray  # (M,) float32: 1 = clicked in the test days

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v.setflags(write=False)

    def __repr__(self) -> str:
        c = self.config
        return (f"StreamRecData(users={c.n_users:,}, items={c.n_items:,}, train={self.n_train:,}, "
                f"test={self.n_test:,}, candidates={self.cand_user.size:,})")  # fmt: skip

    # ----------------------------------------------------------------- features and truth
    def features(self, user, item) -> np.ndarray:
        """The (n, 40) float32 feature rows of (user, item) pairs."""
        return np.concatenate([self.user_features[user], self.item_features[item]], axis=1)

    def oracle_logit(self, user, item) -> np.ndarray:
        r"""The true click logit :math:`\ell_{ui}` of (user, item) pairs (ground truth, float32)."""
        return _true_logit(self.config, self.user_segment, self.user_market, self.user_latent, self.item_latent,
                           self.item_bias, _popularity_z(self.item_popularity), user, item)  # fmt: skip

    @cached_property
    def X_train(self) -> np.ndarray:
        """(N_train, 40) float32 training features (materialised once: 160 bytes per row)."""
        return self.features(self.train_user, self.train_item)

    @cached_property
    def X_test(self) -> np.ndarray:
        """(N_test, 40) float32 test features."""
        return self.features(self.test_user, self.test_item)

    @cached_property
    def cand_X(self) -> np.ndarray:
        """(M, 40) float32 features of the ranking candidates."""
        return self.features(self.cand_user, self.cand_item)

    n_train = property(lambda self: int(self.train_user.size), doc="Number of training rows.")
    n_test = property(lambda self: int(self.test_user.size), doc="Number of test rows.")
    train_segment = property(lambda self: self.user_segment[self.train_user], doc="Segment code per train row.")
    train_market = property(lambda self: self.user_market[self.train_user], doc="Market code per train row.")
    test_segment = property(lambda self: self.user_segment[self.test_user], doc="Segment code per test row.")
    test_market = property(lambda self: self.user_market[self.test_user], doc="Market code per test row.")
    cand_segment = property(lambda self: self.user_segment[self.cand_user], doc="Segment code per candidate.")
    cand_market = property(lambda self: self.user_market[self.cand_user], doc="Market code per candidate.")

    def groups(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{name: (test_mask, cand_mask)}`` for the six reported groups, for :func:`privlab.metrics.metrics_table`.

        Names: power_users, casual, new_users, eu_market, us_market, jp_market.
        """
        out = {}
        for codes, names, suffix in ((self.user_segment, SEGMENTS, ""), (self.user_market, MARKETS, "_market")):
            for j, name in enumerate(names):
                out[name + suffix] = (codes[self.test_user] == j, codes[self.cand_user] == j)
        return out

    def ceiling(self, *, k: int = 20) -> pd.DataFrame:
        """Metrics of the true click probability: the ceiling for any model of the features.

        Its AUC bounds every feature-based scorer's (the features are noisy
        functions of the latents). Its Recall@K is the ceiling of a click
        model, not of every ranker: sampled negatives are label 0 whatever their
        click probability.
        """
        return metrics_table(self.y_test, expit(self.oracle_logit(self.test_user, self.test_item)),
                        self.cand_user, self.cand_label, self.oracle_logit(self.cand_user, self.cand_item),
                        k=k, groups=self.groups())  # fmt: skip

    def summary(self) -> pd.DataFrame:
        """Users, interactions, interactions per user, active days and click rate per group."""
        n_int = np.bincount(self.train_user, minlength=self.config.n_users) + np.bincount(
            self.test_user, minlength=self.config.n_users
        )
        clicks = np.bincount(self.train_user, weights=self.y_train, minlength=self.config.n_users) + np.bincount(
            self.test_user, weights=self.y_test, minlength=self.config.n_users
        )
        days = self.config.n_days - self.user_first_day.astype(int) + 1
        masks = {"overall": np.ones_like(n_int, bool)}
        masks |= {n: self.user_segment == j for j, n in enumerate(SEGMENTS)}
        masks |= {f"{n}_market": self.user_market == j for j, n in enumerate(MARKETS)}
        rows = {
            name: {"users": int(m.sum()), "user_share": float(m.mean()), "interactions": int(n_int[m].sum()),
                   "per_user": float(n_int[m].mean()), "active_days": float(days[m].mean()),
                   "ctr": float(clicks[m].sum() / max(n_int[m].sum(), 1))}
            for name, m in masks.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index")

    # ----------------------------------------------------------------- torch
    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arrays = {
            "train": (self.train_user, self.train_item, self.y_train),
            "test": (self.test_user, self.test_item, self.y_test),
            "cand": (self.cand_user, self.cand_item, self.cand_label),
        }
        if split not in arrays:
            raise ValueError(f"split must be 'train', 'test' or 'cand', got {split!r}")
        return arrays[split]

    def tensors(self, split: str = "train", *, device=None):
        """``(X, y)`` torch tensors of a split, float32, built on ``device`` by gathering the tables there.

        Only the tables and the (user, item) ids cross to the device (12 bytes a
        row instead of 164). Needs ``40 * 4`` bytes a row on the device: 6.7 GB
        for the paper-scale training split; use :meth:`iter_chunks` if that is too much.
        """
        import torch  # only the tensor views need torch: the generator itself is numpy

        user, item, y = self._split(split)
        dev = torch.device(device if device is not None else "cpu")
        # copies throughout: the arrays are read-only, the tensors handed out must not alias them
        uf = torch.tensor(self.user_features, device=dev)
        itf = torch.tensor(self.item_features, device=dev)
        u = torch.from_numpy(user.astype(np.int64)).to(dev)
        i = torch.from_numpy(item.astype(np.int64)).to(dev)
        return torch.cat([uf[u], itf[i]], dim=1), torch.tensor(y, device=dev)

    def iter_chunks(self, split: str = "train", *, chunk_size: int = 1 << 20, device=None) -> Iterator:
        """Yield ``(X, y)`` torch tensors of consecutive row chunks of a split, on ``device``.

        On CUDA each chunk goes through pinned memory with a non-blocking copy.
        """
        import torch  # only the tensor views need torch: the generator itself is numpy

        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        user, item, y = self._split(split)
        dev = torch.device(device if device is not None else "cpu")
        for lo in range(0, user.size, chunk_size):
            sl = slice(lo, lo + chunk_size)
            x_c, y_c = torch.from_numpy(self.features(user[sl], item[sl])), torch.from_numpy(y[sl].copy())
            if dev.type == "cuda":
                x_c, y_c = x_c.pin_memory(), y_c.pin_memory()
            yield x_c.to(dev, non_blocking=True), y_c.to(dev, non_blocking=True)


# --------------------------------------------------------------------------- generation


def _popularity_z(pop: np.ndarray) -> np.ndarray:
    """log pi_i z-scored under the exposure distribution pi (the term averages 0 over impressions)."""
    log_pop = np.log(pop)
    mean = pop @ log_pop
    return ((log_pop - mean) / max(math.sqrt(pop @ (log_pop - mean) ** 2), 1e-12)).astype(np.float32)


def _true_logit(c: StreamRecConfig, seg, mkt, p, q, b, pop_z, user, item) -> np.ndarray:
    """ell_ui of the module docstring, float32, for arrays of user and item ids."""
    a, g, k, m = (np.asarray(t, np.float32) for t in
                  (c.segment_bias, c.segment_affinity, c.segment_popularity, c.market_bias))  # fmt: skip
    su = seg[user]
    match = np.einsum("ij,ij->i", p[user], q[item]) / np.float32(math.sqrt(c.latent_dim))
    return a[su] + m[mkt[user]] + b[item] + k[su] * pop_z[item] + g[su] * match


def _zscore(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-8)).astype(np.float32)


def _sample_cdf(cdf: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    """I.i.d. indices with probabilities ``diff(cdf)`` by inverse CDF.

    The uniforms are sorted first (sorted queries keep ``searchsorted`` in cache: 4x faster for
    a million users), then the draws are put back in a uniformly random order.
    """
    n = int(np.prod(size))
    idx = np.searchsorted(cdf, np.sort(rng.random(n)), side="right")
    return np.minimum(idx, cdf.size - 1).astype(np.int32)[rng.permutation(n)].reshape(size)


def _first_of_run(sorted_keys: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal keys (np.unique is slow on large int64 arrays)."""
    return np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if sorted_keys.size else np.zeros(0, bool)


def generate_streamrec(
    scale: str | Scale | None = None, *, rng: np.random.Generator, config: StreamRecConfig | None = None,
    progress: bool = True,
) -> StreamRecData:  # fmt: skip
    r"""Generate a StreamRec data set (model, features and split: see the module docstring).

    Args:
        scale: ``"smoke"``, ``"book"`` or ``"paper"`` (default: ``$PRIVLAB_SCALE``), for
            :meth:`StreamRecConfig.for_scale`; ignored when ``config`` is given.
        rng: the source of randomness (``privlab.config.make_rng(seed)``); it is
            split into independent children (users, items, each chunk of rows,
            candidates), so equal seeds give equal data.
        config: an explicit configuration.
        progress: a tqdm bar over the chunks of rows.

    Returns:
        A :class:`StreamRecData`.

    Raises:
        ValueError: an invalid scale, configuration or ``rng``.

    >>> from privlab.config import make_rng
    >>> d = generate_streamrec(config=StreamRecConfig(n_users=300, n_items=50, n_interactions=5_000,
    ...                        n_eval_users=20, n_negatives=10), rng=make_rng(1), progress=False)
    >>> int(d.train_day.max()), int(d.test_day.min()), len(np.unique(d.cand_user))
    (25, 26, 20)

    Used in: chapters 8, 13.
    """
    cfg = config if config is not None else StreamRecConfig.for_scale(scale)
    check_rng(rng)
    U, I, d, D = cfg.n_users, cfg.n_items, cfg.latent_dim, cfg.n_days
    n_chunks = -(-cfg.n_interactions // cfg.chunk_size)
    r_user, r_item, r_feat, r_eval, *r_chunks = rng.spawn(4 + n_chunks)

    # users: segment, market, first active day, activity rate lambda_u, taste p_u = c_m + z_u
    seg = r_user.choice(3, size=U, p=cfg.segment_shares).astype(np.int8)
    mkt = r_user.choice(3, size=U, p=cfg.market_shares).astype(np.int8)
    first = np.ones(U, np.int16)
    is_new = seg == 2
    first[is_new] = r_user.integers(2, D + 1, size=int(is_new.sum()))
    active = (D - first + 1).astype(np.float64)
    activity = np.asarray(cfg.segment_rate)[seg] * r_user.lognormal(0.0, 0.5, size=U)
    centroids = r_user.standard_normal((3, d))
    centroids *= cfg.market_taste / np.linalg.norm(centroids, axis=1, keepdims=True)
    p = (centroids[mkt] + r_user.standard_normal((U, d))).astype(np.float32)

    # items: latent q_i, click bias b_i, Zipf exposure popularity pi_i over a random rank
    q = r_item.standard_normal((I, d)).astype(np.float32)
    b = (cfg.item_bias_std * r_item.standard_normal(I)).astype(np.float32)
    pop = (1.0 + r_item.permutation(I)) ** -cfg.popularity_exponent
    pop /= pop.sum()

    # features: noisy views of the latents (new users' noisiest), z-scored
    n_proj, sqrt_d = N_USER_FEATURES - 2, math.sqrt(d)
    w_user, w_item = r_feat.standard_normal((n_proj, d)), r_feat.standard_normal((n_proj, d))
    tau = np.asarray(cfg.user_feature_noise)[seg][:, None]
    user_x = np.column_stack([
        np.log(activity) + 0.3 * r_feat.standard_normal(U),
        active / D + 0.05 * r_feat.standard_normal(U),
        p @ w_user.T / sqrt_d + tau * r_feat.standard_normal((U, n_proj)),
    ])  # fmt: skip
    item_x = np.column_stack([
        b / max(cfg.item_bias_std, 1e-8) + 0.5 * r_feat.standard_normal(I),
        np.log(pop) + 0.3 * r_feat.standard_normal(I),
        q @ w_item.T / sqrt_d + cfg.item_feature_noise * r_feat.standard_normal((I, n_proj)),
    ])  # fmt: skip

    data_kw = dict(
        config=cfg, user_features=_zscore(user_x), item_features=_zscore(item_x), user_segment=seg,
        user_market=mkt, user_first_day=first, user_activity=activity.astype(np.float32), user_latent=p,
        item_latent=q, item_bias=b, item_popularity=pop,
    )  # fmt: skip

    # interactions, chunk by chunk: user ~ lambda_u * active days, day ~ U(active days), item ~ pi
    user_cdf = np.cumsum(activity * active)
    user_cdf /= user_cdf[-1]
    item_cdf = np.cumsum(pop)
    item_cdf /= item_cdf[-1]
    first_test_day, pop_z = D - cfg.test_days + 1, _popularity_z(pop)
    parts: dict[str, list] = {f"{s}_{n}": [] for s in ("train", "test") for n in ("user", "item", "day")}
    parts |= {"y_train": [], "y_test": []}
    for j, r in enumerate(tqdm(r_chunks, desc="StreamRec rows", unit="chunk", disable=not progress, leave=False)):
        m = min(cfg.chunk_size, cfg.n_interactions - j * cfg.chunk_size)
        u = _sample_cdf(user_cdf, r, m)
        i = _sample_cdf(item_cdf, r, m)
        day = (first[u] + np.floor(r.random(m) * active[u])).astype(np.int16)
        y = (r.random(m) < expit(_true_logit(cfg, seg, mkt, p, q, b, pop_z, u, i))).astype(np.float32)
        test = day >= first_test_day
        for split, mask in (("train", ~test), ("test", test)):
            for name, arr in (("user", u), ("item", i), ("day", day)):
                parts[f"{split}_{name}"].append(arr[mask])
            parts[f"y_{split}"].append(y[mask])
    rows = {k: np.concatenate(v) for k, v in parts.items()}
    rows |= _candidates(cfg, rows["test_user"], rows["test_item"], rows["y_test"], item_cdf, r_eval)
    return StreamRecData(**data_kw, **rows)


def _candidates(cfg: StreamRecConfig, user, item, y, item_cdf, rng) -> dict[str, np.ndarray]:
    """Candidate sets of a sample of test users with a test click: their impressions plus negatives."""
    I = np.int64(cfg.n_items)
    eligible = np.flatnonzero(np.bincount(user, weights=y, minlength=cfg.n_users) > 0)
    n_eval = min(cfg.n_eval_users, eligible.size)
    chosen = np.zeros(cfg.n_users, bool)
    chosen[rng.choice(eligible, size=n_eval, replace=False)] = True
    keep = chosen[user]
    # distinct (user, item) impressions, relevant if any of them was clicked
    keys = user[keep].astype(np.int64) * I + item[keep]
    lab = y[keep]
    order = np.argsort(keys, kind="stable")
    keys, lab = keys[order], lab[order]
    start = np.flatnonzero(_first_of_run(keys))
    imp_keys = keys[start]
    imp_lab = np.maximum.reduceat(lab, start) if keys.size else lab
    # negatives: items drawn by exposure popularity that the user was not shown in the test days
    eval_users = np.flatnonzero(chosen).astype(np.int64)
    neg = _sample_cdf(item_cdf, rng, (n_eval, cfg.n_negatives))
    neg_keys = np.sort((eval_users[:, None] * I + neg).ravel())
    neg_keys = neg_keys[_first_of_run(neg_keys)]
    if imp_keys.size:  # drop the negatives the user was shown
        pos = np.minimum(np.searchsorted(imp_keys, neg_keys), imp_keys.size - 1)
        neg_keys = neg_keys[imp_keys[pos] != neg_keys]
    all_keys = np.concatenate([imp_keys, neg_keys])
    label = np.concatenate([imp_lab, np.zeros(neg_keys.size, np.float32)])
    cand_user = (all_keys // I).astype(np.int32)
    order = np.argsort(cand_user.astype(np.int64) << 32 | rng.integers(0, 1 << 32, all_keys.size))  # shuffle in user
    return {"cand_user": cand_user[order], "cand_item": (all_keys % I).astype(np.int32)[order],
            "cand_label": label[order].astype(np.float32)}  # fmt: skip
