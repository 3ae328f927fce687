r"""An honest evaluation of synthetic data: fidelity, utility, and what it leaks.

:func:`evaluate_synthetic` compares a synthetic table with the real table it was fitted
on (``real_train``) and with real records it never saw (``real_holdout``):

* **marginal fidelity** per column, synthetic against train: KS statistic for
  numeric columns, total variation distance for categorical ones (the same
  against the holdout is reported as the sampling-noise floor);
* **correlation distance**: Frobenius and mean absolute distance between the
  mixed-type association matrices (:mod:`privlab.synthetic.metrics`) of train
  and synthetic;
* **utility**, train-on-synthetic-test-on-real: a fixed classifier (scikit-learn
  ``HistGradientBoostingClassifier``, or ``LogisticRegression``) predicts the
  binary ``target`` from the other columns; its ROC AUC on the holdout when
  trained on synthetic, next to the AUC when trained on ``real_train``, and
  ``utility_ratio``, the share of the real model's gain over chance,
  :math:`(\mathrm{AUC}_{syn} - 1/2)/(\mathrm{AUC}_{real} - 1/2)`: 0 for a table
  that teaches nothing, 1 for one as good as the real data (the plain ratio
  :math:`\mathrm{AUC}_{syn}/\mathrm{AUC}_{real}` would not fall much below
  :math:`0.5/\mathrm{AUC}_{real}` even for noise);
* **NNDR**: per synthetic record, :math:`d_1/d_2` to its two nearest training
  records (mean and 5th percentile), beside the mean NNDR of holdout records
  (real people the generator never saw), its baseline;
* **DCR**: distance from each synthetic record to its closest training record,
  against the same distance for holdout records. ``dcr_share`` is the share of
  synthetic records closer to the training set than the median holdout record
  is (ties count half): about 0.5 for records as new as fresh real data, 1 for
  copies. A generator that piles its records onto dense regions also scores
  high without copying anyone, so read it next to the membership-inference AUC
  and next to ``train_closer_share``, Platzer and Reutterer's holdout test: the
  share of synthetic records closer to the training set than to an equally large
  holdout set (ties count half), with ``train_closer_se``, its permutation standard
  error under the null that the two halves are exchangeable
  (:func:`~privlab.synthetic.metrics.holdout_test`). Dense regions are dense in both
  halves, so a generator that crowds into them stays near 0.5 there; one that copies
  training rows goes to 1;
* **membership inference**: the attacker scores each record of
  ``real_train`` :math:`\cup` ``real_holdout`` by minus its distance to the
  closest synthetic record (closer means "member") and we report the ROC AUC
  of members against holdout records: 1 is total leakage; 0.5 means this attack does
  no better than chance on average over records, which does not rule out the leakage
  of some records (an outlier, say).

Records are compared on encoded features: numeric columns standardised with the
training mean and standard deviation, categorical columns one-hot (0/1).
Distances use at most ``max_records`` query records per set, drawn with ``rng``.

References: Xu et al. 2019 (arXiv:1907.00503) for TSTR; Platzer and Reutterer
2021 (DCR and NNDR, "Holdout-based fidelity and privacy assessment of mixed-type
synthetic data", arXiv:2104.00635); Stadler, Oprisanu, Troncoso 2022
(arXiv:2011.07018) on membership inference against synthetic data.

Used in: chapter 10.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from privlab._validate import check_int
from privlab.synthetic.domain import is_numeric_column
from privlab.synthetic.metrics import (
    association_matrix,
    correlation_distance,
    holdout_test,
    ks_statistic,
    nearest_distances,
    nndr,
    total_variation,
)
from privlab.synthetic.tables import as_rng, check_frame

__all__ = ["SyntheticEvaluation", "evaluate_synthetic", "binary_target", "encode_features", "gain_over_chance"]

_MODELS = ("hgb", "logistic")


@dataclass(frozen=True)
class SyntheticEvaluation:
    """The numbers :func:`evaluate_synthetic` computes (see the module docstring for each)."""

    marginal: dict  # column -> KS (numeric) or TV (categorical), synthetic vs train
    marginal_metric: dict  # column -> "KS" or "TV"
    marginal_holdout: dict  # the same, holdout vs train: the sampling-noise floor
    correlation_frobenius: float
    correlation_mean_abs: float
    utility_real: float  # AUC on the holdout, model trained on real_train
    utility_synthetic: float  # AUC on the holdout, model trained on synthetic
    utility_ratio: float  # (utility_synthetic - 1/2) / (utility_real - 1/2): the share of the gain over chance
    nndr_mean: float
    nndr_p05: float
    nndr_holdout_mean: float  # the same for holdout records: the baseline of fresh real data
    dcr_synthetic_median: float
    dcr_holdout_median: float
    dcr_share: float
    train_closer_share: float  # synthetic records nearer the training set than an equal-size holdout set
    train_closer_se: float  # its standard error under the null of exchangeable halves (permutation)
    mia_auc: float
    n_queries: int
    target: str  # how the utility label is defined, e.g. "parttime == 'yes'"
    association_real: pd.DataFrame = field(repr=False, compare=False)
    association_synthetic: pd.DataFrame = field(repr=False, compare=False)

    def summary(self) -> pd.Series:
        """The headline numbers, one per metric (mean marginal error over columns)."""
        return pd.Series({
            "marginal_mean": float(np.mean(list(self.marginal.values()))),
            "marginal_max": float(np.max(list(self.marginal.values()))),
            "corr_frobenius": self.correlation_frobenius,
            "corr_mean_abs": self.correlation_mean_abs,
            "tstr_auc": self.utility_synthetic,
            "trtr_auc": self.utility_real,
            "utility_ratio": self.utility_ratio,
            "nndr_mean": self.nndr_mean,
            "nndr_holdout_mean": self.nndr_holdout_mean,
            "dcr_share": self.dcr_share,
            "train_closer_share": self.train_closer_share,
            "mia_auc": self.mia_auc,
        })

    def to_frame(self) -> pd.DataFrame:
        """Every scalar, per-column marginals included, as a ``metric -> value`` table."""
        rows = {f"marginal[{c}] ({self.marginal_metric[c]})": v for c, v in self.marginal.items()}
        rows.update({f"holdout marginal[{c}] ({self.marginal_metric[c]})": v for c, v in self.marginal_holdout.items()})
        skip = {"target", "marginal", "marginal_metric", "marginal_holdout", "association_real", "association_synthetic"}
        rows.update({k: v for k, v in asdict(self).items() if k not in skip})
        return pd.DataFrame({"value": pd.Series(rows, dtype=float)})


def binary_target(train: pd.Series, *, positive=None):
    """``(labeller, description)``: a function mapping a column to 0/1 labels, fixed by the training column.

    A numeric column with more than two values becomes "above the training
    median" (e.g. a high-wage indicator); a two-valued column is 1 for
    ``positive`` (default: the last category of a Categorical, else the larger
    sorted value, e.g. ``"yes"``).

    Raises:
        ValueError: a categorical column with more than two values, or one value.
    """
    values = pd.unique(train)
    if is_numeric_column(train) and len(values) > 2 and positive is None:
        median = float(train.median())
        return lambda s: (s.to_numpy(dtype=float) > median).astype(int), f"{train.name} > {median:g}"
    if len(values) != 2:
        raise ValueError(f"target {train.name!r} must have two values (or be numeric), got {len(values)}")
    if positive is None:
        positive = (train.cat.categories[-1] if isinstance(train.dtype, pd.CategoricalDtype)
                    else max(values, key=str))
    if positive not in set(values):
        raise ValueError(f"positive label {positive!r} is not a value of {train.name!r}")
    return lambda s: (s.astype(object).to_numpy() == positive).astype(int), f"{train.name} == {positive!r}"


def encode_features(frames: list, numeric: list, categories: dict, *, reference: pd.DataFrame) -> list:
    """Encode frames alike: numeric columns standardised by ``reference``, categoricals one-hot.

    Raises:
        ValueError: a value outside a column's categories (``get_indexer`` gives -1 for it, which
            indexed the *last* one-hot row: a silent mis-encoding a red-team read found through
            ``evaluate_synthetic(members=...)``), naming the column.
    """
    mean = {c: float(reference[c].mean()) for c in numeric}
    std = {c: float(reference[c].std(ddof=0)) or 1.0 for c in numeric}
    out = []
    for df in frames:
        parts = [((df[c].to_numpy(dtype=float) - mean[c]) / std[c])[:, None] for c in numeric]
        for c, cats in categories.items():
            codes = pd.Index(cats).get_indexer(df[c].astype(object))
            if (codes < 0).any():
                raise ValueError(f"column {c!r} has values outside its categories {list(cats)!r} (not shown: they "
                                 "are data)")
            parts.append(np.eye(len(cats))[codes])
        out.append(np.hstack(parts) if parts else np.zeros((len(df), 0)))
    return out


def gain_over_chance(auc: float, auc_real: float) -> float:
    r"""The share of the real model's AUC gain over chance that the synthetic model keeps.

    .. math::

        \frac{\mathrm{AUC}_{syn} - 1/2}{\mathrm{AUC}_{real} - 1/2}

    0 for a synthetic table that teaches the classifier nothing, 1 for one as good
    as the real training data, negative for one that teaches the wrong sign. Not
    defined (NaN) when the real model itself does no better than chance.

    Args:
        auc: :math:`\mathrm{AUC}_{syn}`, the model trained on synthetic data.
        auc_real: :math:`\mathrm{AUC}_{real}`, the same model trained on real data.

    >>> round(gain_over_chance(0.7, 0.8), 4)  # two thirds of the gain, where 0.7 / 0.8 would say 0.875
    0.6667
    >>> gain_over_chance(0.5, 0.8)
    0.0

    Used in: chapter 10.
    """
    return (auc - 0.5) / (auc_real - 0.5) if auc_real > 0.5 else float("nan")


def _fit_predict_auc(model: str, x_train, y_train, x_test, y_test, seed: int) -> float:
    if np.unique(y_train).size < 2:  # a constant training label: a constant predictor
        return 0.5
    clf = (HistGradientBoostingClassifier(max_iter=100, random_state=seed) if model == "hgb"
           else LogisticRegression(max_iter=2000))
    # one thread: OpenMP spinning on a shared 2-core machine makes HGB 5x slower, never faster
    with threadpool_limits(1):
        clf.fit(x_train, y_train)
        return float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))


_REAL_CACHE: dict = {}  # results that depend on the real data only, reused across generators


def _frame_key(df: pd.DataFrame) -> bytes:
    """A content key for a frame (values, column names and dtypes), for ``_REAL_CACHE``."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    digest.update(repr((list(df.columns), [str(t) for t in df.dtypes])).encode())
    return digest.digest()


def _cached(key: tuple, compute):
    """``compute()`` once per ``key`` (the real model's AUC and the real association matrix are the same
    for every synthetic table evaluated against the same real data and seed); keeps the last 16 keys."""
    if key not in _REAL_CACHE:
        if len(_REAL_CACHE) >= 16:
            _REAL_CACHE.pop(next(iter(_REAL_CACHE)))
        _REAL_CACHE[key] = compute()
    return _REAL_CACHE[key]


def _subsample(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= m else x[rng.choice(len(x), m, replace=False)]


def evaluate_synthetic(real_train: pd.DataFrame, real_holdout: pd.DataFrame, synthetic: pd.DataFrame, *,
                       target: str, rng: np.random.Generator | int, positive=None, model: str = "hgb",
                       max_records: int = 5_000, bias_corrected: bool = True,
                       members: pd.DataFrame | None = None) -> SyntheticEvaluation:
    """Fidelity, utility and privacy metrics of ``synthetic`` (see the module docstring).

    Args:
        real_train: the records the generator was fitted on.
        real_holdout: real records it never saw (same columns).
        synthetic: the generated records (same columns).
        target: the column the utility model predicts (binary, or numeric: above the median).
        rng: Generator or int seed, for subsampling and the classifier.
        positive: the positive label of a two-valued ``target``.
        model: ``"hgb"`` (HistGradientBoostingClassifier) or ``"logistic"``.
        max_records: cap on query records per set for the distance metrics.
        bias_corrected: Cramér's V with Bergsma's correction.
        members: the rows the generator was actually fitted on, when it saw only a subset of
            ``real_train`` (:class:`~privlab.synthetic.SdvSynthesizer`'s ``max_rows`` subsample:
            ``real_train.iloc[model.fitted_rows_]``). NNDR, DCR and the membership attack use
            them as the training records: labelling rows the generator never saw as members
            would dilute the attack AUC towards 0.5. Default ``real_train``. Fidelity and
            utility still use ``real_train``.

    Returns:
        A :class:`SyntheticEvaluation`.

    Raises:
        ValueError: empty frames, mismatched columns, NaN or all-NaN columns, a
            synthetic, holdout or members category the training data does not have, a
            non-numeric synthetic value in a numeric column, a bad ``target``.

    Used in: chapter 10.
    """
    real_train = check_frame("real_train", real_train)
    cols = list(real_train.columns)
    real_holdout = check_frame("real_holdout", real_holdout, columns=cols)
    synthetic = check_frame("synthetic", synthetic, columns=cols)
    if members is not None:
        members = check_frame("members", members, columns=cols)
    others = (("real_holdout", real_holdout), ("synthetic", synthetic),
              *(() if members is None else (("members", members),)))
    if target not in cols:
        raise ValueError(f"target {target!r} is not a column; columns are {cols}")
    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    max_records = check_int("max_records", max_records, minimum=2)
    rng = as_rng(rng, None)
    numeric = [c for c in cols if is_numeric_column(real_train[c])]
    categories = {}
    for c in cols:
        if c in numeric:
            for name, df in others:
                if not is_numeric_column(df[c]):
                    raise ValueError(f"column {c!r} is numeric in real_train but {df[c].dtype} in {name}")
            continue
        dtype = real_train[c].dtype  # declared categories are the schema; otherwise what train holds
        seen = (list(dtype.categories) if isinstance(dtype, pd.CategoricalDtype)
                else list(pd.unique(real_train[c].astype(object))))
        for name, df in others:
            unseen = set(df[c].astype(object)) - set(seen)
            if unseen:
                raise ValueError(f"column {c!r} of {name} has values not in real_train's categories (neither "
                                 "shown nor counted: they are data)")
        categories[c] = seen

    # fidelity
    def marginal(a, b, c):
        return ks_statistic(a[c], b[c]) if c in numeric else total_variation(a[c].astype(object), b[c].astype(object))

    marg = {c: marginal(real_train, synthetic, c) for c in cols}
    marg_hold = {c: marginal(real_train, real_holdout, c) for c in cols}
    train_key = _frame_key(real_train)
    a_real = _cached(("association", train_key, tuple(numeric), bias_corrected),
                     lambda: association_matrix(real_train, numeric, bias_corrected=bias_corrected)).copy()
    a_syn = association_matrix(synthetic, numeric, bias_corrected=bias_corrected)
    frob, mean_abs = correlation_distance(a_real, a_syn)

    # utility: train on synthetic / on real, test on the holdout
    label, target_desc = binary_target(real_train[target], positive=positive)
    y_hold = label(real_holdout[target])
    if np.unique(y_hold).size < 2:
        raise ValueError(f"target {target!r} has one class in real_holdout; AUC is undefined")
    feats = [c for c in cols if c != target]
    xf = encode_features([real_train, real_holdout, synthetic], [c for c in numeric if c != target],
                         {c: v for c, v in categories.items() if c != target}, reference=real_train)
    seed = int(rng.integers(2**31 - 1))
    auc_real = _cached(("auc_real", train_key, _frame_key(real_holdout), target, repr(positive), model, seed),
                       lambda: _fit_predict_auc(model, xf[0], label(real_train[target]), xf[1], y_hold, seed)
                       ) if feats else 0.5
    auc_syn = _fit_predict_auc(model, xf[2], label(synthetic[target]), xf[1], y_hold, seed) if feats else 0.5

    # privacy: distances on all columns, to the rows the generator saw
    seen = real_train if members is None else members
    x_train, x_hold, x_syn = encode_features([seen, real_holdout, synthetic], numeric, categories,
                                             reference=real_train)
    q_syn = _subsample(x_syn, max_records, rng)
    ratio = nndr(x_train, q_syn) if len(x_train) >= 2 else np.ones(len(q_syn))
    dcr_syn = nearest_distances(x_train, q_syn)[:, 0]
    q_hold = _subsample(x_hold, max_records, rng)
    ratio_hold = nndr(x_train, q_hold) if len(x_train) >= 2 else np.ones(len(q_hold))
    dcr_hold = nearest_distances(x_train, q_hold)[:, 0]
    med = float(np.median(dcr_hold))
    share = float(np.mean(dcr_syn < med) + 0.5 * np.mean(dcr_syn == med))
    members, non_members = _subsample(x_train, max_records, rng), _subsample(x_hold, max_records, rng)
    dist = nearest_distances(x_syn, np.vstack([members, non_members]))[:, 0]
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    mia = float(roc_auc_score(labels, -dist))
    # Platzer and Reutterer's holdout test: train and holdout cut to the same size (a larger set
    # is nearer by its size alone); drawn last, so the numbers above do not depend on it
    m = min(len(x_train), len(x_hold))
    closer, closer_se = holdout_test(_subsample(x_train, m, rng), _subsample(x_hold, m, rng), q_syn)

    return SyntheticEvaluation(
        marginal=marg, marginal_metric={c: "KS" if c in numeric else "TV" for c in cols}, marginal_holdout=marg_hold,
        correlation_frobenius=frob, correlation_mean_abs=mean_abs,
        utility_real=auc_real, utility_synthetic=auc_syn, utility_ratio=gain_over_chance(auc_syn, auc_real),
        nndr_mean=float(ratio.mean()), nndr_p05=float(np.quantile(ratio, 0.05)),
        nndr_holdout_mean=float(ratio_hold.mean()),
        dcr_synthetic_median=float(np.median(dcr_syn)), dcr_holdout_median=med, dcr_share=share,
        train_closer_share=closer, train_closer_se=closer_se, mia_auc=mia, n_queries=len(q_syn),
        target=target_desc, association_real=a_real, association_synthetic=a_syn,
    )
