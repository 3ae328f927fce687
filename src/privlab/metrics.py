r"""Evaluation metrics: accuracy, F1, AUC-ROC, and Recall@K / NDCG@K from per-user rankings.

Two kinds of evaluation, both needed by the StreamRec case study:

* **pointwise** (one row per test interaction, binary click label ``y_true``, a
  score ``y_score``): :func:`accuracy`, :func:`f1_score` at a threshold, and the
  threshold-free :func:`roc_auc`;
* **ranking** (per test user, a set of candidate items with a binary relevance
  label and a model score): the candidates of each user are sorted by score,
  and :func:`recall_at_k` / :func:`ndcg_at_k` read the top :math:`K`. Ranking
  metrics are always computed from the ranking, never derived from accuracy.

Conventions for user :math:`u` with candidates ranked :math:`1, 2, \dots`,
relevance :math:`r_u(j) \in \{0, 1\}` at rank :math:`j`, and
:math:`R_u = \sum_j r_u(j)` relevant candidates:

.. math::
    \mathrm{Recall@K}(u) = \frac{\sum_{j \le K} r_u(j)}{R_u}, \qquad
    \mathrm{NDCG@K}(u) = \frac{\sum_{j \le K} r_u(j) / \log_2(j + 1)}
                              {\sum_{j \le \min(R_u, K)} 1 / \log_2(j + 1)}.

Users with :math:`R_u = 0` have neither metric; they are skipped and counted
(``n_skipped``). The reported value is the mean over the remaining users
(macro average). Tied scores are broken at random *in expectation*: a block of
:math:`g` tied candidates holding :math:`r` relevant ones spreads
:math:`r/g` relevance over each rank it spans (McSherry and Najork 2008), so
the result never depends on the order the candidates come in.

>>> user  = [1, 1, 1, 2, 2]
>>> label = [1, 0, 1, 0, 1]
>>> score = [0.9, 0.8, 0.1, 0.3, 0.2]
>>> recall_at_k(user, label, score, k=1)   # user 1: 1 of 2; user 2: 0 of 1
0.25
>>> round(roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.75

References: Jarvelin and Kekalainen (2002), "Cumulated gain-based evaluation of
IR techniques" (NDCG); McSherry and Najork (2008), "Computing information
retrieval performance measures efficiently in the presence of tied scores";
Hanley and McNeil (1982) (AUC as the Mann-Whitney statistic).

Used in: chapters 7, 8, 13.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from privlab._validate import check_array, check_int

__all__ = [
    "RankingResult", "accuracy", "f1_score", "metrics_table", "ndcg_at_k", "ranking_per_user", "recall_at_k",
    "roc_auc",
]  # fmt: skip


# --------------------------------------------------------------------------- input checks


def _numpy(x) -> np.ndarray:
    """A 1-D view of ``x`` as numpy (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scores(name: str, x) -> np.ndarray:
    return check_array(name, _numpy(x), ndim=1)


def _labels(name: str, y) -> np.ndarray:
    y = _numpy(y)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {y.shape}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1, got a value {y[bad][0].item()!r}")
    return y.astype(bool)


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")


def _pointwise(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y, s = _labels("y_true", y_true), _scores("y_score", y_score)
    _same_length(y_true=y, y_score=s)
    return y, s


def _threshold(threshold) -> float:
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return t


# --------------------------------------------------------------------------- pointwise


def accuracy(y_true, y_score, *, threshold: float = 0.5) -> float:
    r"""Share of rows whose prediction :math:`\mathbb{1}[s_i \ge t]` equals the label.

    .. math:: \mathrm{acc} = \frac{1}{n} \sum_i \mathbb{1}\bigl[\mathbb{1}[s_i \ge t] = y_i\bigr]

    Args:
        y_true: labels :math:`y_i \in \{0, 1\}`, shape ``(n,)``.
        y_score: scores :math:`s_i`, shape ``(n,)``: probabilities with the default
            ``threshold=0.5``, or logits with ``threshold=0.0``.
        threshold: :math:`t`.

    Returns:
        The accuracy in :math:`[0, 1]`.

    Raises:
        ValueError: labels other than 0/1, NaN or infinite scores, empty or
            mismatched arrays, a non-finite threshold.

    >>> accuracy([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5])
    0.5

    Used in: chapters 7, 8, 13.
    """
    y, s = _pointwise(y_true, y_score)
    return float(np.mean((s >= _threshold(threshold)) == y))


def f1_score(y_true, y_score, *, threshold: float = 0.5) -> float:
    r"""F1 of the positive class, predictions :math:`\mathbb{1}[s_i \ge t]`.

    .. math:: F_1 = \frac{2\,TP}{2\,TP + FP + FN}

    (0 when the denominator is 0: no positives and none predicted; as
    scikit-learn's ``zero_division=0``).

    Args:
        y_true: labels in {0, 1}, shape ``(n,)``.
        y_score: scores, shape ``(n,)``.
        threshold: :math:`t` (0.5 for probabilities, 0.0 for logits).

    Returns:
        :math:`F_1 \in [0, 1]`.

    Raises:
        ValueError: as :func:`accuracy`.

    >>> f1_score([0, 1, 1, 0], [0.2, 0.7, 0.4, 0.5])   # TP=1, FP=1, FN=1
    0.5

    Used in: chapters 8, 13.
    """
    y, s = _pointwise(y_true, y_score)
    pred = s >= _threshold(threshold)
    tp = int(np.sum(pred & y))
    denom = 2 * tp + int(np.sum(pred & ~y)) + int(np.sum(~pred & y))
    return 0.0 if denom == 0 else 2 * tp / denom


def roc_auc(y_true, y_score) -> float:
    r"""Area under the ROC curve, as the Mann-Whitney statistic with average ranks for ties.

    .. math::
        \mathrm{AUC} = \frac{\sum_{i: y_i = 1} \mathrm{rank}(s_i) - n_+(n_+ + 1)/2}{n_+ n_-}
        = \Pr[s_+ > s_-] + \tfrac12 \Pr[s_+ = s_-],

    where ranks start at 1 and tied scores share their average rank; equal to
    ``sklearn.metrics.roc_auc_score``. Reference: Hanley and McNeil (1982),
    Radiology 143(1).

    Args:
        y_true: labels in {0, 1}, shape ``(n,)``; both classes must occur.
        y_score: scores (any monotone scale: logits or probabilities).

    Returns:
        AUC in :math:`[0, 1]`; 0.5 for a scorer that ignores its input.

    Raises:
        ValueError: only one class present, or as :func:`accuracy`.

    >>> roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.1, 0.9])   # one tie counts one half
    0.875

    Used in: chapters 8, 12, 13.
    """
    y, s = _pointwise(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --------------------------------------------------------------------------- ranking


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Per-user Recall@K and NDCG@K, for the users that have at least one relevant candidate.

    Attributes:
        k: the cut-off :math:`K`.
        users: ids of the evaluated users, ascending, shape ``(U,)``.
        recall: Recall@K per user, shape ``(U,)``.
        ndcg: NDCG@K per user, shape ``(U,)``.
        n_relevant: :math:`R_u` per user, shape ``(U,)``.
        n_skipped: number of users without any relevant candidate (not in ``users``).
    """

    k: int
    users: np.ndarray
    recall: np.ndarray
    ndcg: np.ndarray
    n_relevant: np.ndarray
    n_skipped: int

    @property
    def mean_recall(self) -> float:
        """Mean Recall@K over evaluated users (NaN if there are none)."""
        return float(self.recall.mean()) if self.recall.size else float("nan")

    @property
    def mean_ndcg(self) -> float:
        """Mean NDCG@K over evaluated users (NaN if there are none)."""
        return float(self.ndcg.mean()) if self.ndcg.size else float("nan")


def ranking_per_user(user, label, score, *, k: int) -> RankingResult:
    r"""Recall@K and NDCG@K of every user, from the ranking of each user's candidates.

    Vectorised over users: one ``np.lexsort`` orders the rows by (user, score
    descending); rank positions, tie blocks and per-user sums come from
    cumulative sums and ``np.add.reduceat``, with no loop over users. A block of
    :math:`g` tied candidates at ranks :math:`a+1..a+g` holding :math:`r`
    relevant ones contributes :math:`r \cdot |[a, a+g) \cap [0, K)| / g` hits
    and :math:`(r/g) \sum_{j \in (a, a+g],\, j \le K} 1/\log_2(j+1)` DCG: the
    expectation over random tie-breaking (McSherry and Najork 2008).

    Args:
        user: user id of each candidate row, shape ``(n,)`` (any integers; rows
            of one user need not be contiguous).
        label: relevance :math:`r \in \{0, 1\}` of each row.
        score: model score of each row (higher ranks first).
        k: the cut-off :math:`K \ge 1`.

    Returns:
        A :class:`RankingResult`.

    Raises:
        ValueError: ``k`` < 1, mismatched lengths, NaN/inf scores, labels not in {0, 1}.

    >>> r = ranking_per_user([7, 7, 7], [0, 1, 0], [0.5, 0.4, 0.3], k=2)
    >>> float(r.recall[0]), round(float(r.ndcg[0]), 4)   # hit at rank 2: 1/log2(3)
    (1.0, 0.6309)

    Used in: chapter 13.
    """
    k = check_int("k", k, minimum=1)
    user = _numpy(user)
    rel = _labels("label", label)
    s = _scores("score", score)
    if user.ndim != 1:
        raise ValueError(f"user must be 1-D, got shape {user.shape}")
    _same_length(user=user, label=rel, score=s)

    order = np.lexsort((-s, user))  # by user, then score descending
    u, s, rel = user[order], s[order], rel[order].astype(np.float64)
    n = u.size
    new_user = np.r_[True, u[1:] != u[:-1]]
    user_start = np.flatnonzero(new_user)
    user_idx = np.cumsum(new_user) - 1
    pos = np.arange(n) - user_start[user_idx]  # 0-based rank within the user

    new_tie = new_user | np.r_[True, s[1:] != s[:-1]]
    tie_start = np.flatnonzero(new_tie)
    tie_size = np.diff(np.r_[tie_start, n])
    tie_rel = np.add.reduceat(rel, tie_start)
    tie_pos = pos[tie_start]

    # cum_disc[m] = sum_{j < m} 1 / log2(j + 2): the DCG of m relevant items at the top
    cum_disc = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]
    lo, hi = np.minimum(tie_pos, k), np.minimum(tie_pos + tie_size, k)
    hits = tie_rel * (hi - lo) / tie_size
    dcg = tie_rel / tie_size * (cum_disc[hi] - cum_disc[lo])

    n_users = user_start.size
    hits_u = np.bincount(user_idx[tie_start], weights=hits, minlength=n_users)
    dcg_u = np.bincount(user_idx[tie_start], weights=dcg, minlength=n_users)
    n_rel = np.add.reduceat(rel, user_start).astype(np.int64)
    ok = n_rel > 0
    idcg = cum_disc[np.minimum(n_rel[ok], k)]
    return RankingResult(
        k=k,
        users=u[user_start][ok],
        recall=hits_u[ok] / n_rel[ok],
        ndcg=dcg_u[ok] / idcg,
        n_relevant=n_rel[ok],
        n_skipped=int((~ok).sum()),
    )


def recall_at_k(user, label, score, *, k: int) -> float:
    r"""Mean over users of :math:`\mathrm{Recall@K}(u) = \#\{\text{relevant in top } K\} / R_u`.

    Users without relevant candidates are skipped (see :func:`ranking_per_user`,
    which also reports how many). Args, Raises: as :func:`ranking_per_user`.

    >>> recall_at_k([0, 0, 0, 0], [1, 0, 0, 1], [4, 3, 2, 1], k=2)
    0.5

    Used in: chapter 13.
    """
    return ranking_per_user(user, label, score, k=k).mean_recall


def ndcg_at_k(user, label, score, *, k: int) -> float:
    r"""Mean over users of NDCG@K (binary relevance, :math:`\log_2` discount, ideal DCG from :math:`\min(R_u, K)`).

    Args, Raises: as :func:`ranking_per_user`.

    >>> ndcg_at_k([0, 0, 0], [1, 1, 0], [3, 2, 1], k=2)   # a perfect ranking
    1.0

    Used in: chapter 13.
    """
    return ranking_per_user(user, label, score, k=k).mean_ndcg


# --------------------------------------------------------------------------- all at once


def _row(y, s, cu, cl, cs, k: int, threshold: float) -> dict:
    out: dict = {"n_rows": int(y.size), "ctr": float(y.mean()) if y.size else float("nan")}
    if y.size:
        out["accuracy"] = accuracy(y, s, threshold=threshold)
        out["f1"] = f1_score(y, s, threshold=threshold)
        out["auc"] = roc_auc(y, s) if 0 < y.sum() < y.size else float("nan")
    else:
        out.update(accuracy=float("nan"), f1=float("nan"), auc=float("nan"))
    if cu.size:
        r = ranking_per_user(cu, cl, cs, k=k)
        out.update({f"recall@{k}": r.mean_recall, f"ndcg@{k}": r.mean_ndcg,
                    "n_users": int(r.users.size), "n_skipped": r.n_skipped})  # fmt: skip
    else:
        out.update({f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan"), "n_users": 0, "n_skipped": 0})
    return out


def metrics_table(
    y_true, y_score, cand_user, cand_label, cand_score, *, k: int = 20, threshold: float = 0.5,
    groups: Mapping[str, tuple] | None = None,
) -> pd.DataFrame:  # fmt: skip
    r"""Every metric, overall and per group (segment, market, ...), in one table.

    Pointwise metrics (accuracy, F1, AUC) come from the test rows, ranking
    metrics (Recall@K, NDCG@K) from the candidate rows. A group is a pair of
    boolean masks (one over test rows, one over candidate rows); its metrics are
    exactly those of the filtered subset. Groups may overlap (segments and
    markets). A group with one class only gets AUC NaN rather than an error.

    Args:
        y_true, y_score: test labels and scores, shape ``(n,)``.
        cand_user, cand_label, cand_score: candidate rows, shape ``(m,)``.
        k: :math:`K` for Recall@K and NDCG@K.
        threshold: decision threshold for accuracy and F1 (0.5 for
            probabilities, 0.0 for logits).
        groups: ``{name: (test_mask, cand_mask)}``, e.g.
            :meth:`privlab.datasets.streamrec.StreamRecData.groups`.

    Returns:
        A DataFrame indexed by group name (first row ``"overall"``), with columns
        ``accuracy, auc, f1, recall@K, ndcg@K, ctr, n_rows, n_users, n_skipped``.

    Raises:
        ValueError: as the individual metrics; masks of the wrong length.

    >>> df = metrics_table([0, 1], [0.2, 0.9], [0, 0], [1, 0], [0.9, 0.1], k=1)
    >>> df.loc["overall", ["accuracy", "auc", "recall@1"]].tolist()
    [1.0, 1.0, 1.0]

    Used in: chapters 8, 13.
    """
    k = check_int("k", k, minimum=1)
    threshold = _threshold(threshold)
    y, s = _pointwise(y_true, y_score)
    cu, cs = _numpy(cand_user), _scores("cand_score", cand_score)
    cl = _labels("cand_label", cand_label)
    _same_length(cand_user=cu, cand_label=cl, cand_score=cs)
    rows = {"overall": _row(y, s, cu, cl, cs, k, threshold)}
    for name, (test_mask, cand_mask) in (groups or {}).items():
        tm, cm = _numpy(test_mask).astype(bool), _numpy(cand_mask).astype(bool)
        if tm.shape != y.shape or cm.shape != cu.shape:
            raise ValueError(
                f"group {name!r}: masks must have shapes {y.shape} and {cu.shape}, got {tm.shape} and {cm.shape}"
            )
        rows[name] = _row(y[tm], s[tm], cu[cm], cl[cm], cs[cm], k, threshold)
    cols = ["accuracy", "auc", "f1", f"recall@{k}", f"ndcg@{k}", "ctr", "n_rows", "n_users", "n_skipped"]
    return pd.DataFrame.from_dict(rows, orient="index")[cols]
