r"""Federated data: who holds which records, and how unequal the clients are.

A federated data set is a list of clients :math:`k = 1, \dots, K`, client
:math:`k` holding :math:`n_k` labelled records :math:`(x_i, y_i)_{i \in D_k}`,
:math:`n = \sum_k n_k`. How the records are spread decides how hard federated
learning is (Kairouz et al. 2021, *Advances and Open Problems in Federated
Learning*, arXiv:1912.04977, section 3.1):

=========================  ===========================================================
natural silos              :func:`cps1988_silos` (the real CPS1988 table, one silo
                           per US region) and :func:`hospital_sites` (the published
                           five-hospital demo)
IID                        :func:`iid_partition`: a uniformly random split
label skew                 :func:`dirichlet_label_skew`: class :math:`c`'s records
                           split by :math:`p_c \sim \mathrm{Dir}(\alpha \mathbf 1_K)`
                           (Yurochkin et al. 2019; Hsu et al. 2019 draw per client instead)
quantity skew              :func:`quantity_skew`: sizes split by
                           :math:`p \sim \mathrm{Dir}(\alpha \mathbf 1_K)`, labels IID
=========================  ===========================================================

Every partition is a :class:`FederatedDataset`; :meth:`FederatedDataset.summary`
gives each client's size, share and label rates as a DataFrame.

>>> import numpy as np
>>> from privlab.config import make_rng
>>> x, y = np.zeros((10, 2)), np.array([0, 1] * 5)
>>> fd = iid_partition(x, y, num_clients=3, rng=make_rng(0))
>>> fd.sizes.tolist()
[4, 3, 3]

Used in: chapter 9.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validate import check_int, check_positive, check_rng

__all__ = [
    "HOSPITAL_SITES",
    "FederatedDataset",
    "cps1988_silos",
    "dirichlet_label_skew",
    "hospital_sites",
    "iid_partition",
    "quantity_skew",
]

#: The published demo (COURSE.md, its chapter 8; chapter 9 here): site, patients, positive rate.
HOSPITAL_SITES: tuple[tuple[str, int, float], ...] = (
    ("Boston", 800, 0.30),
    ("Chicago", 500, 0.40),
    ("London", 350, 0.35),
    ("Munich", 200, 0.25),
    ("Tokyo", 150, 0.50),
)


@dataclass(frozen=True)
class FederatedDataset:
    """Clients' local data: ``x[k]`` of shape ``(n_k, d)``, ``y[k]`` of shape ``(n_k,)``.

    Args:
        names: one name per client (used in every error message).
        x: per-client float32 feature matrices, all with the same ``d``.
        y: per-client labels (integers ``0..C-1``, stored as float32).
        feature_names: ``d`` names (defaults to ``x0, x1, ...``).

    Raises:
        ValueError: naming the client, for a client with zero samples, a feature
            count that differs from the first client's, non-finite values, or
            labels that do not match the samples.
    """

    names: tuple[str, ...]
    x: tuple[np.ndarray, ...]
    y: tuple[np.ndarray, ...]
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.x) == len(self.y)) or not self.names:
            raise ValueError(
                f"need one name, x and y per client and at least one client, got "
                f"{len(self.names)} names, {len(self.x)} x, {len(self.y)} y"
            )
        xs, ys = [], []
        for name, xk, yk in zip(self.names, self.x, self.y):
            xk, yk = np.asarray(xk, dtype=np.float32), np.asarray(yk, dtype=np.float32)
            if xk.ndim != 2 or xk.shape[0] == 0:
                raise ValueError(f"client {name!r} has zero samples or x is not (n, d): shape {xk.shape}")
            if xk.shape[1] != np.asarray(self.x[0]).shape[1]:
                raise ValueError(
                    f"client {name!r} has {xk.shape[1]} features, client {self.names[0]!r} has "
                    f"{np.asarray(self.x[0]).shape[1]}"
                )
            if yk.shape != (xk.shape[0],):
                raise ValueError(f"client {name!r}: y has shape {yk.shape}, expected ({xk.shape[0]},)")
            if not (np.isfinite(xk).all() and np.isfinite(yk).all()):
                raise ValueError(f"client {name!r} has NaN or infinite values")
            odd = yk[(yk < 0) | (yk != np.round(yk))]
            if odd.size:  # summary() would truncate 0.4 to class 0 and count classes from the maximum
                raise ValueError(f"client {name!r}: labels must be integers 0..C-1, got {odd[0]}")
            xs.append(xk)
            ys.append(yk)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "x", tuple(xs))
        object.__setattr__(self, "y", tuple(ys))
        d = xs[0].shape[1]
        if not self.feature_names:
            object.__setattr__(self, "feature_names", tuple(f"x{j}" for j in range(d)))
        elif len(self.feature_names) != d:
            raise ValueError(f"feature_names has {len(self.feature_names)} names for {d} features")

    @property
    def num_clients(self) -> int:
        return len(self.names)

    @property
    def num_features(self) -> int:
        return self.x[0].shape[1]

    @property
    def sizes(self) -> np.ndarray:
        """:math:`n_k`, one per client (int64)."""
        return np.array([len(yk) for yk in self.y], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return int(max(yk.max() for yk in self.y)) + 1 if self.num_clients else 0

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All clients' records stacked (what a central server would hold)."""
        return np.concatenate(self.x), np.concatenate(self.y)

    def subset(self, clients: Sequence[int]) -> FederatedDataset:
        """The data set restricted to the clients with these indices."""
        idx = [int(k) for k in clients]
        return FederatedDataset(
            tuple(self.names[k] for k in idx), tuple(self.x[k] for k in idx),
            tuple(self.y[k] for k in idx), self.feature_names,
        )

    def summary(self) -> pd.DataFrame:
        """One row per client: ``samples``, ``share`` (:math:`n_k/n`) and label rates.

        Binary labels give one column ``positive_rate``; more classes give
        ``rate_c`` for each class ``c``.
        """
        sizes = self.sizes
        table = {"client": list(self.names), "samples": sizes, "share": sizes / sizes.sum()}
        classes = max(self.num_classes, 2)
        counts = np.stack([np.bincount(yk.astype(np.int64), minlength=classes) for yk in self.y])
        rates = counts / sizes[:, None]
        if classes == 2:
            table["positive_rate"] = rates[:, 1]
        else:
            table.update({f"rate_{c}": rates[:, c] for c in range(classes)})
        return pd.DataFrame(table)


def _split_by_assignment(x, y, assignment: Sequence[np.ndarray], names=None, feature_names=()):
    names = names or tuple(f"client {k}" for k in range(len(assignment)))
    return FederatedDataset(
        tuple(names), tuple(x[idx] for idx in assignment), tuple(y[idx] for idx in assignment),
        tuple(feature_names),
    )


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got shapes {x.shape} and {y.shape}")
    return x, y


def iid_partition(x, y, *, num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    r"""Split records uniformly at random into ``num_clients`` near-equal clients.

    Args:
        x: ``(n, d)`` features. y: ``(n,)`` labels.
        num_clients: :math:`K \le n`.
        rng: the generator for the permutation.

    Raises:
        ValueError: if :math:`K < 1` or :math:`K > n`.

    Used in: chapter 9.
    """
    x, y = _check_xy(x, y)
    k = check_int("num_clients", num_clients)
    check_rng(rng)
    if k > len(y):
        raise ValueError(f"num_clients must be <= the number of records {len(y)}, got {k}")
    return _split_by_assignment(x, y, np.array_split(rng.permutation(len(y)), k))


def dirichlet_label_skew(
    x, y, *, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1, max_tries: int = 100
) -> FederatedDataset:
    r"""Label-skewed split: each class's records spread over clients by a Dirichlet draw.

    .. math::  p_c \sim \mathrm{Dir}(\alpha \mathbf 1_K), \qquad
        \text{client } k \text{ gets a share } p_{c,k} \text{ of class } c

    Small :math:`\alpha` (0.1) gives clients dominated by one class; large
    :math:`\alpha` (100) approaches IID. Draws are repeated until every client
    has at least ``min_size`` records.

    This is the per-class variant (Yurochkin et al. 2019, arXiv:1905.12022; Wang et
    al. 2020, arXiv:2002.06440; Li, Diao, Chen, He 2022, arXiv:2102.02079, the
    NIID-Bench's distribution-based label imbalance). Hsu, Qi, Brown 2019 (arXiv:1909.06335) draw the
    other way round: each client's class proportions :math:`q \sim \mathrm{Dir}(\alpha p)`.

    Args:
        x, y: the pooled records; ``y`` integer class labels.
        num_clients: :math:`K`. alpha: the concentration :math:`\alpha > 0`.
        rng: the generator. min_size: the smallest client allowed.
        max_tries: redraws before giving up.

    Raises:
        ValueError: for a bad ``alpha`` or ``num_clients``, or when no draw in
            ``max_tries`` gives every client ``min_size`` records.

    Used in: chapter 9.
    """
    x, y = _check_xy(x, y)
    k = check_int("num_clients", num_clients)
    a = check_positive("alpha", alpha)
    check_rng(rng)
    labels = y.astype(np.int64)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(check_int("max_tries", max_tries)):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in classes:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(k, a))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        assignment = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(a_) for a_ in assignment) >= min_size:
            return _split_by_assignment(x, y, assignment)
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave all {k} clients >= {min_size} records; "
        "raise alpha or lower num_clients"
    )


def quantity_skew(
    x, y, *, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1
) -> FederatedDataset:
    r"""Quantity-skewed split: client sizes from a Dirichlet draw, records assigned at random.

    .. math::  p \sim \mathrm{Dir}(\alpha \mathbf 1_K), \qquad
        n_k = m + \mathrm{Multinomial}(n - K m, p)_k

    with :math:`m` = ``min_size``. Labels stay IID; only the amounts differ.

    Reference: Li, Diao, Chen, He 2022, *Federated Learning on Non-IID Data
    Silos: An Experimental Study*, arXiv:2102.02079, section 4.

    Raises:
        ValueError: for a bad ``alpha`` or when :math:`K m > n`.

    Used in: chapter 9.
    """
    x, y = _check_xy(x, y)
    k = check_int("num_clients", num_clients)
    a = check_positive("alpha", alpha)
    m = check_int("min_size", min_size, minimum=1)
    check_rng(rng)
    if k * m > len(y):
        raise ValueError(f"num_clients * min_size = {k * m} exceeds the {len(y)} records")
    sizes = m + rng.multinomial(len(y) - k * m, rng.dirichlet(np.full(k, a)))
    return _split_by_assignment(x, y, np.split(rng.permutation(len(y)), np.cumsum(sizes)[:-1]))


def cps1988_silos(*, df: pd.DataFrame | None = None) -> FederatedDataset:
    r"""The real CPS1988 table as four silos, one per US region; label: a high wage.

    Label :math:`y = 1` when the weekly wage exceeds the public threshold
    :data:`privlab.datasets.real.CPS1988_WAGE_THRESHOLD` (USD 500 a week, 1992 dollars).
    Features: education, experience and experience squared (the Mincer equation's
    terms) standardised by the uniform distribution on the codebook's ranges
    (:func:`privlab.datasets.real.cps1988_public_features`), and indicators for
    ``ethnicity == afam``, ``smsa == yes``, ``parttime == yes``. Nothing is computed
    from the rows: a pooled mean, standard deviation or median would be a release of
    the clients' data (secure aggregation publishes the sum it hides the inputs of),
    outside any DP guarantee. The silos differ in size (south 8,760 ... west 6,091)
    and label rate (northeast 0.58 ... south 0.46): natural non-IID data.

    Args:
        df: the table (default :func:`privlab.datasets.load_cps1988`).

    >>> fd = cps1988_silos()
    >>> fd.names, fd.sizes.tolist()
    (('northeast', 'midwest', 'south', 'west'), [6441, 6863, 8760, 6091])

    Used in: chapter 9.
    """
    if df is None:
        from ..datasets import load_cps1988

        df = load_cps1988()
    from ..datasets.real import cps1988_high_wage, cps1988_public_features

    cont = cps1988_public_features(df).to_numpy(float)
    ind = np.column_stack([
        (df["ethnicity"] == "afam").to_numpy(float),
        (df["smsa"] == "yes").to_numpy(float),
        (df["parttime"] == "yes").to_numpy(float),
    ])
    x = np.hstack([cont, ind]).astype(np.float32)
    y = cps1988_high_wage(df).to_numpy(np.float32)
    region = df["region"].astype(str).to_numpy()
    names = ("northeast", "midwest", "south", "west")
    features = ("education", "experience", "experience_sq", "ethnicity_afam", "smsa_yes", "parttime_yes")
    return _split_by_assignment(x, y, [np.flatnonzero(region == r) for r in names], names, features)


def hospital_sites(
    *, rng: np.random.Generator, num_features: int = 8, shift: float = 0.5, noise: float = 1.0,
    sites: Sequence[tuple[str, int, float]] = HOSPITAL_SITES,
) -> FederatedDataset:
    r"""The published five-hospital demo with a label that depends on the features.

    Site :math:`s` draws patients :math:`x \sim \mathcal N(\mu_s, I_d)` with a
    site-specific mean :math:`\mu_s \sim \mathcal N(0, \text{shift}^2 I_d)`
    (covariate shift). One risk score shared by all sites,
    :math:`r = w^\top x + \text{noise} \cdot \varepsilon`, :math:`\|w\| = 2`,
    :math:`\varepsilon` standard logistic; the top :math:`\lceil \pi_s n_s \rfloor`
    scores at site :math:`s` are positive, so each site's positive rate is :math:`\pi_s` to the
    nearest integer count (London: 122 of 350, 0.3486) (Boston 800 patients, 0.30; Chicago 500, 0.40; London 350, 0.35;
    Munich 200, 0.25; Tokyo 150, 0.50) and the label is learnable from :math:`x`.

    Args:
        rng: the generator for everything drawn.
        num_features: :math:`d`. shift: the spread of site means.
        noise: the scale of the logistic noise (0 makes labels a threshold of :math:`w^\top x`).
        sites: ``(name, patients, positive rate)`` triples.

    >>> from privlab.config import make_rng
    >>> fd = hospital_sites(rng=make_rng(0))
    >>> fd.summary()[["client", "samples", "positive_rate"]].to_numpy().tolist()[0]
    ['Boston', 800, 0.3]

    Used in: chapter 9.
    """
    check_rng(rng)
    d = check_int("num_features", num_features)
    if not sites:
        raise ValueError("sites must not be empty")
    w = rng.standard_normal(d)
    w *= 2.0 / np.linalg.norm(w)
    xs, ys = [], []
    for name, n, rate in sites:
        n = check_int(f"patients at {name}", n)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"positive rate at {name} must be in (0, 1), got {rate}")
        mu = shift * rng.standard_normal(d)
        x = mu + rng.standard_normal((n, d))
        score = x @ w + noise * rng.logistic(size=n)
        y = np.zeros(n, dtype=np.float32)
        y[np.argsort(-score)[: round(rate * n)]] = 1.0
        xs.append(x.astype(np.float32))
        ys.append(y)
    return FederatedDataset(tuple(s[0] for s in sites), tuple(xs), tuple(ys))
