r"""The DP StreamRec case study: the epsilon sweep, the batch-size, clip-norm and accounting studies.

The published configuration (COURSE.md, "Recurring example"): the
:class:`privlab.models.StreamRecClickPredictor` trained with DP-SGD (Poisson
sampling, :math:`C = 1`, Adam, lr :math:`5\cdot10^{-4}`, batch 4096, 15
epochs, :math:`\delta = 10^{-7}`) for :math:`\varepsilon \in \{1, 3, 8, \infty\}`.
For each target the noise multiplier is the smallest meeting it under the PLD
accountant, :math:`\sigma = \min\{\sigma : \varepsilon_{\mathrm{PLD}}(\sigma, q, T, \delta) \le \varepsilon\}`,
with :math:`q = b/N`, :math:`T = \mathrm{epochs}\cdot\mathrm{round}(1/q)`; the
RDP epsilon of the same :math:`\sigma` is reported beside it.

**Whom it protects.** The sweep is *example-level* DP: the privacy unit is one
interaction (one row), neighbouring datasets differ by adding or removing one
row. :func:`run_user_level` trains the same model with *user-level* DP (one
user with all their rows; :mod:`privlab.experiments.user_level`), and
:func:`privacy_over_time` states both guarantees under daily retraining on a
sliding 30-day window. :math:`\delta = 1/(100N)`, :math:`N` the number of
units (rows or users), well below :math:`1/N`: the mechanism that publishes each
unit's record with probability :math:`\delta` would publish at least one of the
:math:`N` with probability :math:`1 - e^{-0.01} \approx 1\%`.

**Clipping and initialisation from public data** (:func:`choose_clip_norm`).
:math:`C` is the median per-example gradient norm of a short non-private run on
a *public proxy* sample (:func:`public_proxy`: the generator with a seed that
is never a training seed, with as many rows per user as the private data, so
the per-user norms that choose the user-level :math:`C_u` have the private
users' scale), and the output bias starts at the proxy's prior
log-odds, so neither choice spends privacy. The published :math:`C = 1` is a
row of the clip study, and the clipping-only ablation (:math:`\sigma = 0`,
same :math:`C`) separates what clipping does from what noise does.

**Scale profiles** (:func:`streamrec_profile`). The paper *and book* profiles
run the published configuration (batch 4096, 15 epochs, Adam lr
:math:`5\cdot10^{-4}`) except for :math:`C` and :math:`\delta`; paper on 50
million rows, book on 200,000 interactions. The smoke profile (the whole
chapter in about a minute) shrinks what must shrink: 20,000 interactions, a
batch of 1024, 2 epochs and lr :math:`2\cdot10^{-3}`. The batch study
compares 512 with 4096 (256 with 1024 at smoke scale) and the clip-norm study
:math:`C \in \{0.1, 0.5, 1, 2, 5\}` plus the proxy's :math:`C` (0.1, 1 and
the proxy's at smoke scale), both at :math:`\varepsilon = 3` for
``study_epochs`` epochs (5 at book scale; else the sweep's). Two sets of seed
replicates (:func:`seed_replicates`) measure the seed variation at the epochs
of the runs they judge: ``seed_replicates`` repeat the sweep's
:math:`\varepsilon = 3` run (the sweep's epochs) with other seeds, and
``study_seed_replicates`` the studies' :math:`\varepsilon = 3` run at the
proxy's :math:`C` (the studies' epochs); where the two epoch counts are equal
the second set *is* the first (the same runs, trained once).

**Threads.** The model is small (16,065 parameters): torch's intra-op threads
gain little on its matrix products and, on shared cores, spin against other
processes (a batch-4096 step measured 10 times slower with 2 threads than with
1 on a loaded 2-core machine), so :func:`run_sweep` uses one thread by default
and restores torch's setting afterwards (:func:`torch_threads`).

**Per run** (:func:`run_one`): every metric of :func:`privlab.metrics.metrics_table`
overall and per segment and market, the loss per epoch and the final loss, the
*convergence epoch* (:func:`convergence_epoch`: the first epoch from which
the training loss stays within 1% of its final value), the wall-clock training
seconds, the gradient-norm profile of the unclipped per-example norms seen
in training (median, p95, fraction above :math:`C`), and sanity checks:
the loss falls from the first to the last epoch, the mean test logit sits
near the prior log-odds, both classes are predicted.

**Business threshold** (:func:`threshold_table`): a model passes in a group
when its Recall@20 is at least 90% of the non-private model's in that group.

Used in: chapter 13.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from privlab._validate import (
    check_epsilon,
    check_int,
    check_positive,
    check_probability,
)
from privlab.accounting import calibrate_noise, dpsgd_epsilon
from privlab.config import Scale, get_device, get_scale, make_rng, make_torch_generator, spawn_seeds
from privlab.datasets.streamrec import StreamRecConfig, generate_streamrec
from privlab.dpsgd import DPSGDConfig, profile_grad_norms, steps_per_epoch, summarize_grad_norms, train
from privlab.metrics import metrics_table
from privlab.models import StreamRecClickPredictor
from privlab.provenance import git_commit, library_versions, machine_info

from .streamrec_privacy import group_privacy, random_stopping_epsilon, retraining_epsilon, study_epsilon
from .user_level import pack_by_user, train_user_level

__all__ = [
    "METRICS", "PRIVACY_UNITS", "PUBLIC_SEED_OFFSET", "StreamRecProfile", "accounting_study", "calibrate_sigma",
    "choose_clip_norm", "clip_study", "convergence_epoch", "epsilon_label", "prior_log_odds", "privacy_over_time",
    "public_proxy", "random_recall", "run_one", "run_sweep", "run_user_level", "seed_replicates", "selection_cost",
    "streamrec_profile", "threshold_table", "torch_threads",
]  # fmt: skip

#: The metrics every case-study run reports (StreamRec and MovieLens), columns of
#: :func:`privlab.metrics.metrics_table` at K = 20.
METRICS = ("accuracy", "auc", "f1", "recall@20", "ndcg@20")
ACCOUNTING_METHODS = ("basic", "advanced", "rdp", "pld")


@dataclass(frozen=True)
class StreamRecProfile:
    """Sizes and hyperparameters of the case study at one scale (see the module docstring)."""

    scale: str
    n_interactions: int
    n_users: int
    n_items: int
    n_eval_users: int
    batch_size: int
    small_batch_size: int  # the batch study: small vs batch_size at epsilon 3
    epochs: int
    lr: float = 5e-4
    max_grad_norm: float | None = None  # None: from the public proxy's norm profile (clip_quantile)
    published_clip_norm: float = 1.0  # the published C, a row of the clip study and its ablation
    clip_quantile: float = 0.5  # C = this quantile of the proxy's per-example norms
    clip_norms: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)
    delta: float | None = None  # None: 1/(100 N), N the number of privacy units
    seed_replicates: int = 2  # extra seeds of the epsilon-3 runs (sweep's and studies'), for the seed variation
    study_epsilon: float = 3.0
    study_epochs: int | None = None  # epochs of the batch and clip studies; None: the sweep's epochs
    proxy_interactions: int | None = None  # public proxy rows (users scaled to keep rows per user); None: n_interactions
    profile_epochs: int = 2  # non-private epochs on the proxy whose per-example norms choose C
    user_max_rows: int = 32  # user-level DP: at most this many rows per user (public cap)
    user_batch_size: int = 256  # user-level DP: expected users per step
    user_epochs: int | None = None  # user-level run's epochs; None: study_epochs (or the sweep's)

    def delta_for(self, n: int) -> float:
        r"""The profile's delta, or :math:`1/(100N)`: well below :math:`1/N` (chapter 2)."""
        return self.delta if self.delta is not None else 1.0 / (100 * n)


#: Seeds of the public proxy samples: ``PUBLIC_SEED_OFFSET + seed`` is never a training seed of the study.
PUBLIC_SEED_OFFSET = 1_000_003


def streamrec_profile(scale: str | Scale | None = None, **overrides) -> StreamRecProfile:
    """The profile of a scale (``$PRIVLAB_SCALE`` by default), with optional overrides.

    >>> p = streamrec_profile("paper")
    >>> (p.n_interactions, p.batch_size, p.epochs, p.lr, p.delta)
    (50000000, 4096, 15, 0.0005, None)
    >>> b = streamrec_profile("book")
    >>> (b.batch_size, b.epochs, b.lr, b.max_grad_norm, b.study_epochs, b.delta_for(100_000))
    (4096, 15, 0.0005, None, 5, 1e-07)
    >>> streamrec_profile("smoke").batch_size
    1024
    """
    s = get_scale(scale)
    base = StreamRecProfile(
        scale=s.name,
        n_interactions=s.pick(smoke=20_000, book=200_000, paper=50_000_000),
        n_users=s.pick(smoke=1_000, book=10_000, paper=1_000_000),
        n_items=s.pick(smoke=300, book=2_000, paper=50_000),
        n_eval_users=s.pick(smoke=300, book=2_000, paper=50_000),
        batch_size=s.pick(smoke=1024, book=4096, paper=4096),
        small_batch_size=s.pick(smoke=256, book=512, paper=512),
        epochs=s.pick(smoke=2, book=15, paper=15),
        lr=s.pick(smoke=2e-3, book=5e-4, paper=5e-4),
        study_epochs=s.pick(smoke=None, book=5, paper=None),
        seed_replicates=s.pick(smoke=2, book=2, paper=0),
        clip_norms=s.pick(smoke=(0.1, 1.0), book=(0.1, 0.5, 1.0, 2.0, 5.0), paper=(0.1, 0.5, 1.0, 2.0, 5.0)),
        proxy_interactions=s.pick(smoke=None, book=50_000, paper=1_000_000),
        profile_epochs=s.pick(smoke=1, book=2, paper=1),
        user_batch_size=s.pick(smoke=128, book=256, paper=4096),
    )
    return replace(base, **overrides)


def convergence_epoch(losses: Sequence[float], *, rel_tol: float = 0.01) -> int:
    r"""First epoch (1-based) from which the loss stays within ``rel_tol`` of the final loss.

    .. math:: k^\star = \min\{k : |L_j - L_E| \le \mathrm{rel\_tol}\cdot|L_E| \ \forall j \ge k\}

    >>> convergence_epoch([1.0, 0.6, 0.502, 0.5])
    3
    >>> convergence_epoch([0.5, 0.7, 0.5])
    3

    Raises:
        ValueError: empty or non-finite losses, ``rel_tol`` not positive.
    """
    arr = np.asarray(losses, dtype=float)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"losses must be a non-empty sequence of finite numbers, got {list(losses)!r}")
    check_positive("rel_tol", rel_tol)
    outside = np.abs(arr - arr[-1]) > rel_tol * abs(arr[-1])
    idx = np.flatnonzero(outside)
    return int(idx[-1] + 2) if idx.size else 1


def threshold_table(recall: pd.DataFrame, *, baseline: str = "inf", fraction: float = 0.9,
                    tolerance: float | pd.Series | None = None) -> pd.DataFrame:  # fmt: skip
    r"""Which models meet the business threshold: Recall@20 :math:`\ge` ``fraction`` :math:`\times` baseline.

    The margin of model :math:`\varepsilon` in a group is
    :math:`m = r_\varepsilon - f\, r_\infty`. With a ``tolerance`` :math:`\tau`
    (scalar or one per group, e.g. :math:`t_{0.975,\nu}\, s \sqrt{1 + f^2}`
    with :math:`s` the seed standard deviation of Recall@20, :math:`s\sqrt{1 + f^2}`
    the standard deviation of :math:`m` for two independent runs, and
    :math:`t_{0.975,\nu}` the 97.5% quantile of the :math:`t` distribution with the
    :math:`\nu` degrees of freedom of :math:`s`), the verdict is ``passes`` when
    :math:`m > \tau`, ``fails`` when :math:`m < -\tau`, else ``unresolved``.

    Args:
        recall: groups as rows, models (columns, e.g. ``"1"``, ``"3"``, ``"inf"``) as Recall@20 values.
        baseline: the column of the non-private model.
        fraction: the threshold as a fraction of the baseline (0.9: no more than 10% below).
        tolerance: :math:`\tau`, or ``None`` for point estimates only.

    Returns:
        Columns ``threshold`` and, per model, ``<model>`` (the recall), ``<model>_ratio``,
        ``<model>_pass`` (point estimate) and, with a tolerance, ``<model>_margin`` and ``<model>_verdict``.

    >>> df = pd.DataFrame({"1": [0.15, 0.2], "inf": [0.2, 0.2]}, index=["overall", "new"])
    >>> threshold_table(df)[["threshold", "1_pass"]].values.tolist()
    [[0.18000000000000002, False], [0.18000000000000002, True]]
    >>> threshold_table(df, tolerance=0.01)["1_verdict"].tolist()
    ['fails', 'passes']
    """
    check_probability("fraction", fraction)
    if baseline not in recall.columns:
        raise ValueError(f"baseline column {baseline!r} not in {list(recall.columns)}")
    out = pd.DataFrame({"threshold": fraction * recall[baseline]}, index=recall.index)
    for col in recall.columns:
        if col == baseline:
            continue
        out[col] = recall[col]
        out[f"{col}_ratio"] = recall[col] / recall[baseline]
        out[f"{col}_pass"] = recall[col] >= out["threshold"] - 1e-12  # exactly at the threshold passes
        if tolerance is not None:
            margin = recall[col] - out["threshold"]
            out[f"{col}_margin"] = margin
            out[f"{col}_verdict"] = np.where(margin > tolerance, "passes",
                                             np.where(margin < -tolerance, "fails", "unresolved"))  # fmt: skip
    return out


def prior_log_odds(y) -> float:
    r"""The log-odds :math:`\log(p / (1 - p))` of the positive rate :math:`p` of labels ``y``.

    >>> round(prior_log_odds([1, 0, 0, 0]), 4)
    -1.0986
    """
    p = float(np.mean(np.asarray(y, dtype=float)))
    if not 0 < p < 1:
        raise ValueError(f"labels must hold both classes, got a positive rate of {p}")
    return math.log(p / (1 - p))


def random_recall(user, label, *, k: int = 20) -> float:
    r"""Expected Recall@K of uniformly random scores: the mean over users of :math:`\min(K, n_u)/n_u`.

    A random ranking puts each of user :math:`u`'s :math:`n_u` candidates in the
    top :math:`K` with probability :math:`\min(K, n_u)/n_u`, so the expected
    share of its relevant items there is the same; users without a relevant
    candidate are skipped, as :func:`privlab.metrics.recall_at_k` does.

    >>> random_recall([0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 1, 0], k=2)
    0.75
    """
    user, label = np.asarray(user), np.asarray(label, dtype=float)
    k = check_int("k", k)
    users, inv = np.unique(user, return_inverse=True)
    n_u = np.bincount(inv)
    rel = np.bincount(inv, weights=label) > 0
    if not rel.any():
        raise ValueError("no user has a relevant candidate")
    return float(np.mean(np.minimum(k, n_u[rel]) / n_u[rel]))


def calibrate_sigma(epsilon: float, *, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """PLD-calibrated noise multiplier for a target epsilon, with the PLD and RDP epsilon it spends.

    ``epsilon = inf`` gives sigma 0 (the non-private baseline).
    """
    epsilon = check_epsilon(epsilon, allow_inf=True)
    if math.isinf(epsilon):
        return {"sigma": 0.0, "epsilon_pld": math.inf, "epsilon_rdp": math.inf}
    sigma = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps,
                            accountant="pld")  # fmt: skip
    run = {"noise_multiplier": sigma, "sample_rate": sample_rate, "steps": steps, "delta": delta}
    return {"sigma": float(sigma), "epsilon_pld": float(dpsgd_epsilon(**run, accountant="pld")),
            "epsilon_rdp": float(dpsgd_epsilon(**run, accountant="rdp"))}  # fmt: skip


def accounting_study(*, sigma: float, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """Epsilon of one and the same training under basic, advanced, RDP and PLD accounting."""
    return {m: float(dpsgd_epsilon(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, delta=delta,
                                   accountant=m)) for m in ACCOUNTING_METHODS}  # fmt: skip


def public_proxy(profile: StreamRecProfile, *, seed: int, progress: bool = False):
    """A public proxy sample: the same generator with seed ``PUBLIC_SEED_OFFSET + seed``, never the training data.

    It stands for data the service may use without privacy cost (an opt-in
    panel, last year's logs released for research): the norm profile that
    chooses :math:`C` and the prior click rate that initialises the output bias
    come from it, so neither spends privacy. A proxy smaller than the private data
    (``profile.proxy_interactions``) has proportionally fewer users, so its users
    have as many rows as the private ones: the user-level :math:`C_u` is a norm of
    *summed* gradients, whose scale grows with a user's rows.
    """
    n = profile.proxy_interactions or profile.n_interactions
    frac = n / profile.n_interactions
    cfg = StreamRecConfig.for_scale(profile.scale, n_interactions=n, n_users=max(1, round(profile.n_users * frac)),
                                    n_items=profile.n_items,
                                    n_eval_users=max(1, round(profile.n_eval_users * frac)))  # fmt: skip
    return generate_streamrec(profile.scale, rng=make_rng(PUBLIC_SEED_OFFSET + seed), config=cfg, progress=progress)


def choose_clip_norm(proxy, *, profile: StreamRecProfile, seed: int, device=None, user_level: bool = True) -> dict:
    r"""Clipping norms and the prior from the public proxy: no privacy spent.

    Trains the model non-privately on the proxy for ``profile.profile_epochs``
    epochs (at the output-bias initialisation the private runs use) and takes
    :math:`C` as the ``clip_quantile`` of the per-example gradient norms seen
    along the way (Andrew et al. 2021, arXiv:1905.03871, adapt :math:`C` to the
    median; here fixed from public data instead of adapted on private data). The
    same on the proxy packed per user gives the user-level :math:`C` (skipped, NaN,
    with ``user_level=False``).

    Returns:
        ``{"max_grad_norm", "user_max_grad_norm", "prior_log_odds", "median", "p95",
        "user_median", "quantile", "proxy_rows", "proxy_seed", "proxy_users",
        "user_rows_mean", "user_rows_sd"}`` (the last two: rows per proxy user after the cap).
    """
    prior = prior_log_odds(proxy.y_train)
    X, y = proxy.tensors("train")
    cfg = DPSGDConfig(noise_multiplier=0.0, max_grad_norm=None, epochs=profile.profile_epochs,
                      batch_size=profile.batch_size, lr=profile.lr, optimizer="adam", accountant=None,
                      progress=False, device=None if device is None else str(device))  # fmt: skip
    prof = profile_grad_norms(_model(seed, prior), X, y, loss_fn=torch.nn.BCEWithLogitsLoss(reduction="none"),
                              config=cfg, generator=make_torch_generator(seed),
                              percentiles=(50.0, 95.0, 100 * profile.clip_quantile))  # fmt: skip
    uprof = summarize_grad_norms([], percentiles=(50.0, 100 * profile.clip_quantile))
    rows_mean = rows_sd = math.nan
    n_proxy_users = int(np.unique(proxy.train_user).size)
    if user_level:
        packed = pack_by_user(proxy.train_user, [X], y, max_rows=profile.user_max_rows, rng=make_rng(seed))
        ucfg = replace(cfg, batch_size=min(profile.user_batch_size, packed.n_users), record_grad_norms=True)
        ures = train_user_level(_model(seed, prior), packed, row_loss=torch.nn.BCEWithLogitsLoss(reduction="none"),
                                config=ucfg, generator=make_torch_generator(seed))  # fmt: skip
        uprof = summarize_grad_norms(ures.grad_norms, percentiles=(50.0, 100 * profile.clip_quantile))
        rows_mean, rows_sd = float(packed.rows_per_user.mean()), float(packed.rows_per_user.std(ddof=1))
    return {"max_grad_norm": prof.percentiles[100 * profile.clip_quantile], "median": prof.median,
            "p95": prof.percentiles[95.0], "quantile": profile.clip_quantile, "prior_log_odds": prior,
            "user_max_grad_norm": uprof.percentiles[100 * profile.clip_quantile], "user_median": uprof.median,
            "proxy_rows": proxy.n_train, "proxy_seed": PUBLIC_SEED_OFFSET + seed, "proxy_users": n_proxy_users,
            "user_rows_mean": rows_mean, "user_rows_sd": rows_sd}  # fmt: skip


def _evaluate(model, data, dev) -> tuple[pd.DataFrame, np.ndarray]:
    model.eval()
    with torch.no_grad():
        s_test = torch.cat([model(xb) for xb, _ in data.iter_chunks("test", device=dev)]).cpu().numpy()
        s_cand = torch.cat([model(xb) for xb, _ in data.iter_chunks("cand", device=dev)]).cpu().numpy()
    table = metrics_table(data.y_test, s_test, data.cand_user, data.cand_label, s_cand, k=20, threshold=0.0,
                     groups=data.groups())  # fmt: skip
    return table, s_test


def _record(table, s_test, result, wall, *, prior: float) -> dict:
    """The metrics and sanity checks every run reports (see :func:`run_one`)."""
    losses = [float(v) for v in result.losses]
    return {
        "metrics": {m: float(table.loc["overall", m]) for m in METRICS},
        "segments": {g: {m: float(table.loc[g, m]) for m in METRICS} for g in table.index if g != "overall"},
        "losses": losses, "train_loss": losses, "final_loss": losses[-1], "loss_falls": losses[-1] < losses[0],
        "convergence_epoch": convergence_epoch(losses), "wall_seconds": wall, "hours": wall / 3600,
        "mean_logit": float(np.mean(s_test)), "logit_std": float(np.std(s_test)), "prior_log_odds": prior,
        "fraction_predicted_positive": float(np.mean(s_test > 0)),
        "both_classes_predicted": bool(0 < np.mean(s_test > 0) < 1),
        "grad_norms": None, "fraction_clipped": None,
    }  # fmt: skip


def run_one(data, *, epsilon: float, profile: StreamRecProfile, seed: int, max_grad_norm: float | None = None,
            batch_size: int | None = None, noise: bool = True, bias_init: float = 0.0, progress: bool = True,
            device=None) -> dict:  # fmt: skip
    r"""Train and evaluate one model (example-level DP: the privacy unit is one interaction).

    Args:
        data: a :class:`privlab.datasets.StreamRecData`.
        epsilon: target epsilon (``inf``: non-private, no clipping, no noise).
        profile: a :class:`StreamRecProfile`.
        seed: the run's seed (initialisation, sampling, noise, dropout).
        max_grad_norm: :math:`C` (default: the profile's; one of them must be set for a private run).
        batch_size: override of the profile's (the batch study).
        noise: ``False`` trains with clipping at :math:`C` and :math:`\sigma = 0`: the clipping-only ablation.
        bias_init: the output bias at initialisation (the prior log-odds from public data).
        progress: a tqdm bar for the run.
        device: torch device (``None``: CUDA if available, else CPU).

    Returns:
        The record: configuration, ``metrics`` and ``segments``, ``train_loss`` per epoch
        (alias ``losses``), ``loss_falls`` (last epoch below the first), ``mean_logit`` and
        ``logit_std`` on the test rows, ``prior_log_odds``, ``fraction_predicted_positive``,
        ``both_classes_predicted``, ``fraction_clipped`` and the norm profile ``grad_norms``.
    """
    epsilon = check_epsilon(epsilon, allow_inf=True)
    b = check_int("batch_size", batch_size if batch_size is not None else profile.batch_size)
    private = not math.isinf(epsilon)
    c = max_grad_norm if max_grad_norm is not None else profile.max_grad_norm
    if private and c is None:
        raise ValueError("a private run needs max_grad_norm (or profile.max_grad_norm), got None")
    c = check_positive("max_grad_norm", c) if private else None
    dev = get_device(device)
    n = data.n_train
    q = b / n
    steps = profile.epochs * steps_per_epoch(q)
    delta = profile.delta_for(n)
    cal = calibrate_sigma(epsilon, sample_rate=q, steps=steps, delta=delta)
    if not noise:
        cal = {"sigma": 0.0, "epsilon_pld": math.inf, "epsilon_rdp": math.inf}
    cfg = DPSGDConfig(noise_multiplier=cal["sigma"], max_grad_norm=c, epochs=profile.epochs,
                      batch_size=b, lr=profile.lr, optimizer="adam", delta=delta, accountant=None,
                      progress=progress, device=str(dev), record_grad_norms=private)  # fmt: skip
    model = _model(seed, bias_init)
    X, y = data.tensors("train", device=dev)
    start = time.perf_counter()
    result = train(model, X, y, loss_fn=torch.nn.BCEWithLogitsLoss(reduction="none"), config=cfg,
                   generator=make_torch_generator(seed))  # fmt: skip
    wall = time.perf_counter() - start
    del X, y
    table, s_test = _evaluate(model, data, dev)
    record = {
        "privacy_unit": "interaction", "epsilon_target": epsilon, "sigma": cal["sigma"],
        "epsilon_pld": cal["epsilon_pld"], "epsilon_rdp": cal["epsilon_rdp"], "delta": delta, "sample_rate": q,
        "steps": result.steps, "batch_size": b, "max_grad_norm": c, "clipping_only": private and not noise,
        "epochs": profile.epochs, "lr": profile.lr, "seed": seed, "n_train": n, "n_units": n,
        **_record(table, s_test, result, wall, prior=bias_init),
    }  # fmt: skip
    if private and result.grad_norms is not None and result.grad_norms.size:
        prof = summarize_grad_norms(result.grad_norms, clip_norms=sorted({c, *profile.clip_norms}),
                                    percentiles=(50.0, 95.0))  # fmt: skip
        record["fraction_clipped"] = prof.fraction_clipped[c]
        record["grad_norms"] = {"median": prof.median, "p95": prof.percentiles[95.0],
                                "fraction_clipped": prof.fraction_clipped[c], "count": prof.count,
                                "fraction_clipped_at": {str(k): v for k, v in prof.fraction_clipped.items()}}  # fmt: skip
    return record


def run_user_level(data, *, epsilon: float, profile: StreamRecProfile, seed: int, max_grad_norm: float,
                   bias_init: float = 0.0, progress: bool = True, device=None) -> dict:  # fmt: skip
    r"""Train and evaluate one user-level DP model (the privacy unit is one user with all their rows).

    Users are Poisson-sampled with :math:`q = b_u / U` (``profile.user_batch_size``
    users expected per step), each contributes at most ``profile.user_max_rows``
    rows, and each user's summed gradient is clipped to ``max_grad_norm``
    (:mod:`privlab.experiments.user_level`); :math:`\delta = 1/(100U)` (the profile's
    ``delta_for``). The record is :func:`run_one`'s; ``train_loss`` is per row (the
    per-user loss divided by the mean rows per user), ``fraction_clipped`` counts
    users, ``n_train`` is the rows kept after the cap and ``rows_per_user_mean`` /
    ``rows_per_user_sd`` their mean and standard deviation per user.
    """
    epsilon = check_epsilon(epsilon)
    c = check_positive("max_grad_norm", max_grad_norm)
    dev = get_device(device)
    X, y = data.tensors("train")
    packed = pack_by_user(data.train_user, [X], y, max_rows=profile.user_max_rows, rng=make_rng(seed))
    del X, y
    u = packed.n_users
    b = min(profile.user_batch_size, u)
    q = b / u
    steps = profile.epochs * steps_per_epoch(q)
    delta = profile.delta_for(u)
    cal = calibrate_sigma(epsilon, sample_rate=q, steps=steps, delta=delta)
    cfg = DPSGDConfig(noise_multiplier=cal["sigma"], max_grad_norm=c, epochs=profile.epochs, batch_size=b,
                      lr=profile.lr, optimizer="adam", delta=delta, accountant=None, progress=progress,
                      device=str(dev), record_grad_norms=True)  # fmt: skip
    model = _model(seed, bias_init)
    start = time.perf_counter()
    result = train_user_level(model, packed, row_loss=torch.nn.BCEWithLogitsLoss(reduction="none"), config=cfg,
                              generator=make_torch_generator(seed))  # fmt: skip
    wall = time.perf_counter() - start
    rows_per_user = packed.rows_kept / u
    result = replace(result, losses=tuple(v / rows_per_user for v in result.losses))
    table, s_test = _evaluate(model, data, dev)
    prof = summarize_grad_norms(result.grad_norms, clip_norms=[c], percentiles=(50.0, 95.0))
    return {
        "privacy_unit": "user", "epsilon_target": epsilon, "sigma": cal["sigma"],
        "epsilon_pld": cal["epsilon_pld"], "epsilon_rdp": cal["epsilon_rdp"], "delta": delta, "sample_rate": q,
        "steps": result.steps, "batch_size": b, "max_grad_norm": c, "clipping_only": False,
        "epochs": profile.epochs, "lr": profile.lr, "seed": seed, "n_train": packed.rows_kept, "n_units": u,
        "max_rows_per_user": profile.user_max_rows, "rows_total": packed.rows_total,
        "rows_per_user_mean": float(packed.rows_per_user.mean()),
        "rows_per_user_sd": float(packed.rows_per_user.std(ddof=1)),
        **_record(table, s_test, result, wall, prior=bias_init),
        "fraction_clipped": prof.fraction_clipped[c],
        "grad_norms": {"median": prof.median, "p95": prof.percentiles[95.0],
                       "fraction_clipped": prof.fraction_clipped[c],
                       "count": prof.count, "fraction_clipped_at": {str(c): prof.fraction_clipped[c]}},
    }  # fmt: skip


def _model(seed: int, bias_init: float = 0.0):
    """The click predictor with a seeded initialisation (global RNG untouched) and the output bias at ``bias_init``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StreamRecClickPredictor()
    with torch.no_grad():
        model.head.bias.fill_(float(bias_init))
    return model


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and restore the previous number (``None``: leave it).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if n is None:
        yield
        return
    n = check_int("threads", n, minimum=1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def clip_study(data, *, profile: StreamRecProfile, seed: int, clip_norms: Sequence[float] | None = None,
               reuse: Sequence[dict] = (), bias_init: float = 0.0, noise: bool = True, progress: bool = True,
               device=None) -> list[dict]:  # fmt: skip
    r"""One run per :math:`C` at ``profile.study_epsilon``, for ``profile.study_epochs`` epochs.

    Each record carries the gradient-norm profile of *its own* run, so its
    ``fraction_clipped`` is the fraction of its own per-example norms above its
    own :math:`C`. A record of ``reuse`` stands in for the row of its :math:`C`
    when its configuration (epsilon, epochs, batch size, seed, noise) is the
    study's. ``noise=False``: the clipping-only ablation (:math:`\sigma = 0`).
    """
    epochs = profile.study_epochs if profile.study_epochs is not None else profile.epochs
    prof = replace(profile, epochs=epochs)
    out = []
    for c in clip_norms if clip_norms is not None else profile.clip_norms:
        key = (profile.study_epsilon, epochs, profile.batch_size, seed, c, not noise)
        same = [r for r in reuse if (r["epsilon_target"], r["epochs"], r["batch_size"], r["seed"],
                                     r["max_grad_norm"], r["clipping_only"]) == key]  # fmt: skip
        out.append(same[0] if same else run_one(data, epsilon=profile.study_epsilon, profile=prof, seed=seed,
                                                max_grad_norm=c, noise=noise, bias_init=bias_init,
                                                progress=progress, device=device))  # fmt: skip
    return out


def _run_key(r: dict) -> tuple:
    """What makes two example-level records the same training: configuration and seed."""
    return (r["epsilon_target"], r["epochs"], r["batch_size"], r["max_grad_norm"], r["clipping_only"], r["lr"],
            r["prior_log_odds"], r["seed"])  # fmt: skip


def seed_replicates(data, run: dict, *, profile: StreamRecProfile, n: int, reuse: Sequence[dict] = (),
                    progress: bool = True, device=None) -> list[dict]:  # fmt: skip
    r"""``run`` and ``n`` more seeds of its configuration: the replicates that measure its seed variation.

    The seed standard deviation :math:`s` of a metric over these :math:`n + 1`
    runs is the yardstick for contrasts between runs *of this configuration's
    kind*, above all its epochs: a run at other epochs may vary across seeds
    differently. The extra seeds are :func:`privlab.config.spawn_seeds` of
    ``run["seed"]``; every other setting is the run's own (target epsilon,
    epochs, batch size, :math:`C`, noise or clipping only, output-bias
    initialisation), the learning rate must be the profile's, and delta is the
    profile's. A record of ``reuse`` with the same configuration and seed stands
    in for that seed's run, so replicates of one configuration are trained once.

    Args:
        data: a :class:`privlab.datasets.StreamRecData` (not touched when every run is reused).
        run: an example-level record of :func:`run_one`, the first replicate.
        profile: a :class:`StreamRecProfile` (its epochs are replaced by the run's).
        n: how many more seeds.
        reuse: records that may stand in for a seed's run.
        progress: a tqdm bar per run.
        device: torch device (``None``: CUDA if available, else CPU).

    Returns:
        ``[run, *others]``: ``n + 1`` records of one configuration with distinct seeds, ``run`` first.

    Raises:
        ValueError: ``n`` negative, a user-level ``run``, or a profile whose learning rate is not the run's.

    >>> run = {"privacy_unit": "interaction", "epsilon_target": 3.0, "epochs": 1, "batch_size": 512,
    ...        "max_grad_norm": 1.0, "clipping_only": False, "lr": 2e-3, "prior_log_odds": 0.0, "seed": 0}
    >>> others = [{**run, "seed": s} for s in spawn_seeds(0, 2)]
    >>> reps = seed_replicates(None, run, profile=streamrec_profile("smoke"), n=2, reuse=[run, *others])
    >>> reps[0] is run and all(a is b for a, b in zip(reps[1:], others))
    True

    Used in: chapter 13.
    """
    n = check_int("n", n, minimum=0)
    if run["privacy_unit"] != "interaction":
        raise ValueError(f"seed_replicates replicates example-level runs, got privacy unit {run['privacy_unit']!r}")
    if run["lr"] != profile.lr:
        raise ValueError(f"the profile's lr must be the run's, got {profile.lr} for a run at {run['lr']}")
    prof = replace(profile, epochs=run["epochs"])
    out = [run]
    for s in spawn_seeds(run["seed"], n):
        key = _run_key({**run, "seed": s})
        same = [r for r in reuse if _run_key(r) == key]
        out.append(same[0] if same else run_one(data, epsilon=run["epsilon_target"], profile=prof, seed=s,
                                                max_grad_norm=run["max_grad_norm"], batch_size=run["batch_size"],
                                                noise=not run["clipping_only"], bias_init=run["prior_log_odds"],
                                                progress=progress, device=device))  # fmt: skip
    return out


def run_sweep(scale: str | Scale | None = None, *, epsilons: Sequence[float] = (1, 3, 8, math.inf),
              seed: int = 0, studies: bool = True, progress: bool = True, device=None,
              profile: StreamRecProfile | None = None, threads: int | None = 1) -> dict:  # fmt: skip
    """The epsilon sweep and (optionally) the studies; returns the results dict :func:`write_results` writes.

    ``threads``: torch intra-op threads while it runs (1 by default, see the module docstring;
    ``None`` leaves torch's setting).

    Keys: ``configuration``, ``privacy_unit``, ``public_proxy`` (:func:`choose_clip_norm`),
    ``data``, ``baselines`` (Recall@20 and NDCG@20 of random scores and of the oracle),
    ``runs`` (one record per epsilon), ``studies`` (``batch_size``, ``clip_norm``,
    ``clipping_only``, ``seed_replicates``: the sweep's study-epsilon run and
    ``profile.seed_replicates`` more seeds of it, at the sweep's epochs; ``study_seed_replicates``:
    the same for the studies' run at the study epsilon and the proxy's :math:`C` (the clip study's
    row, the large batch of the batch study), at the studies' epochs, and the very same runs as
    ``seed_replicates`` when those epochs are the sweep's; ``user_level``, ``accounting``,
    ``non_private``: a non-private run at the studies' epochs, the sweep's own when they match;
    ``clipping_only_sweep``, the clipping-only run at the sweep's epochs and :math:`C`;
    ``seconds``, ``seconds_by_study``: wall seconds of what each study trained anew), ``privacy_over_time``
    (:func:`privacy_over_time`), ``selection`` (:func:`selection_cost`), ``threshold``
    (rows of :func:`threshold_table`, if ``inf`` is swept), ``timing``, ``machine``, ``versions``, ``commit``.
    """
    with torch_threads(threads):
        out = _run_sweep(scale, epsilons=epsilons, seed=seed, studies=studies, progress=progress, device=device,
                         profile=profile)  # fmt: skip
    out["configuration"]["torch_threads"] = threads if threads is not None else torch.get_num_threads()
    return out


PRIVACY_UNITS = {
    "interaction": "one interaction (one row); add/remove-one-row neighbouring datasets",
    "user": "one user with all their rows (at most user_max_rows kept); add/remove-one-user neighbouring datasets",
}


def privacy_over_time(run: dict, *, window_days: int = 30, rows: int | None = None) -> dict:
    r"""Epsilon of one unit under daily retraining on a sliding ``window_days`` window, from a run's record.

    Example-level (``run["privacy_unit"] == "interaction"``): a row is in at most
    ``window_days`` trainings, per 30 days and per year alike; a user's ``rows``
    rows in 30 days (and :math:`365/30` times as many in a year) are covered only
    by group privacy (:func:`privlab.experiments.streamrec_privacy.group_privacy`).
    User-level: a user who stays is in 30 trainings per 30 days and 365 per year.
    Each training is the run's DP-SGD; delta is the run's for every figure.
    """
    kw = {"noise_multiplier": run["sigma"], "sample_rate": run["sample_rate"], "steps": run["steps"],
          "delta": run["delta"]}  # fmt: skip
    per_training = run["epsilon_pld"]
    if run["privacy_unit"] == "user":
        return {"unit": "user", "per_training": per_training, "delta": run["delta"],
                "per_30_days": retraining_epsilon(**kw, trainings=window_days),
                "per_year": retraining_epsilon(**kw, trainings=365)}  # fmt: skip
    row = retraining_epsilon(**kw, trainings=window_days)
    out = {"unit": "interaction", "per_training": per_training, "delta": run["delta"], "per_row_window": row}
    if rows is not None:
        year_rows = round(rows * 365 / window_days)
        out |= {"user_rows_30_days": rows, "user_rows_year": year_rows,
                "group_30_days": group_privacy(epsilon=row, delta=run["delta"], k=rows),
                "group_year": group_privacy(epsilon=row, delta=run["delta"], k=year_rows)}  # fmt: skip
    return out


def selection_cost(dp_runs: Sequence[dict], *, delta: float) -> dict:
    """What choosing among the study's DP models spent (Papernot and Steinke 2022, arXiv:2110.03620).

    ``composed``: the PLD composition of every DP run trained on the data (the
    released model is a post-processing of all of them); ``composed_rdp``: the same
    composition with the RDP accountant, the one ``random_stopping`` uses, so the two
    compare like for like; ``basic``: the sum of
    their epsilons; ``random_stopping``: had the candidates been run
    Papernot-Steinke style (a geometric number with mean ``len(dp_runs)``, each
    bounded by the pointwise maximum of the runs' RDP curves), the epsilon of the best one.
    """
    events = [{"noise_multiplier": r["sigma"], "sample_rate": r["sample_rate"], "steps": r["steps"]}
              for r in dp_runs if r["sigma"] > 0]  # fmt: skip
    worst = max((r for r in dp_runs if r["sigma"] > 0), key=lambda r: r["epsilon_pld"])
    return {"candidates": len(events), "delta": delta,
            "composed": study_epsilon(events, delta=delta),
            "composed_rdp": study_epsilon(events, delta=delta, accountant="rdp"),
            "basic": float(sum(r["epsilon_pld"] for r in dp_runs if r["sigma"] > 0)),
            "random_stopping": random_stopping_epsilon(candidates=events, delta=delta,
                                                       mean_candidates=len(events)),
            "largest_single": worst["epsilon_pld"]}  # fmt: skip


def _run_sweep(scale, *, epsilons, seed, studies, progress, device, profile) -> dict:
    prof = profile if profile is not None else streamrec_profile(scale)
    eps_list = [check_epsilon(e, allow_inf=True) for e in epsilons]
    if not eps_list:
        raise ValueError("epsilons must name at least one epsilon, got none")
    t0 = time.perf_counter()
    gen_cfg = StreamRecConfig.for_scale(prof.scale, n_interactions=prof.n_interactions, n_users=prof.n_users,
                                        n_items=prof.n_items, n_eval_users=prof.n_eval_users)  # fmt: skip
    data = generate_streamrec(prof.scale, rng=make_rng(seed), config=gen_cfg, progress=progress)
    gen_seconds = time.perf_counter() - t0
    t_p = time.perf_counter()
    public = choose_clip_norm(public_proxy(prof, seed=seed), profile=prof, seed=seed, device=device,
                              user_level=studies)  # fmt: skip
    c_pub = prof.max_grad_norm if prof.max_grad_norm is not None else public["max_grad_norm"]
    prof = replace(prof, max_grad_norm=c_pub)
    proxy_seconds = time.perf_counter() - t_p
    bias = public["prior_log_odds"]
    kw = {"profile": prof, "seed": seed, "progress": progress, "device": device, "bias_init": bias}
    t1 = time.perf_counter()
    runs = [run_one(data, epsilon=e, **kw) for e in eps_list]
    sweep_seconds = time.perf_counter() - t1
    out: dict = {"runs": runs, "studies": {}}
    q = prof.batch_size / data.n_train
    steps = prof.epochs * steps_per_epoch(q)
    delta = prof.delta_for(data.n_train)
    power = data.user_segment == 0
    rows_30 = np.bincount(np.concatenate([data.train_user, data.test_user]), minlength=prof.n_users)
    power_rows = int(round(float(np.mean(rows_30[power])))) if power.any() else 1
    if studies:
        t2 = time.perf_counter()
        e_s = prof.study_epsilon
        base = next((r for r in runs if r["epsilon_target"] == e_s), None) or run_one(data, epsilon=e_s, **kw)
        clip_cs = sorted({*prof.clip_norms, prof.published_clip_norm, c_pub})
        clip = clip_study(data, clip_norms=clip_cs, reuse=[base], **kw)
        only = clip_study(data, clip_norms=sorted({prof.published_clip_norm, c_pub}), noise=False, **kw)
        large = next(r for r in clip if r["max_grad_norm"] == c_pub)
        # clipping only at the sweep's epochs and C (the study's run when their epochs match): splits
        # the sweep's own drops into a clipping and a noise share
        only_sweep = next((r for r in only if r["max_grad_norm"] == c_pub and r["epochs"] == prof.epochs), None)
        only_sweep_seconds = 0.0
        if only_sweep is None:
            only_sweep = run_one(data, epsilon=e_s, max_grad_norm=c_pub, noise=False, **kw)
            only_sweep_seconds = only_sweep["wall_seconds"]
        s_prof = replace(prof, epochs=prof.study_epochs or prof.epochs)
        small = run_one(data, epsilon=e_s, batch_size=prof.small_batch_size, **{**kw, "profile": s_prof})
        # the studies' own non-private baseline, at the studies' epochs (the sweep's when they match)
        np_sweep = next((r for r in runs if math.isinf(r["epsilon_target"]) and r["epochs"] == s_prof.epochs), None)
        np_study = np_sweep or run_one(data, epsilon=math.inf, **{**kw, "profile": s_prof})
        rep_kw = {"n": prof.seed_replicates, "progress": progress, "device": device}
        reps = seed_replicates(data, base, profile=prof, **rep_kw)[1:]
        # the studies' own replicates: their epsilon-3 run at the proxy's C (`large`, which the ablation,
        # batch, clip and user-level contrasts use) and as many seeds more, at the studies' epochs; where
        # those are the sweep's, `large` is `base` and these are the sweep's replicates, not retrained
        study_reps = seed_replicates(data, large, profile=s_prof, reuse=[base, *reps], **rep_kw)
        study_new = [r for r in study_reps if not any(r is x for x in (base, *reps, *clip))]
        t_u = time.perf_counter()
        u_prof = replace(s_prof, epochs=prof.user_epochs or s_prof.epochs)
        user = run_user_level(data, epsilon=e_s, profile=u_prof, seed=seed, max_grad_norm=public["user_max_grad_norm"],
                              bias_init=bias, progress=progress, device=device)  # fmt: skip
        user_seconds = time.perf_counter() - t_u
        acc = [{"epsilon_target": e, "sigma": r["sigma"], "sample_rate": q, "steps": steps, "delta": delta,
                **accounting_study(sigma=r["sigma"], sample_rate=q, steps=steps, delta=delta)}
               for e, r in zip(eps_list, runs) if not math.isinf(e)]  # fmt: skip
        example_runs = {id(r): r for r in [*runs, base, *clip, small, *reps, *study_reps]}.values()
        out["studies"] = {"batch_size": [small, large], "clip_norm": clip, "clipping_only": only,
                          "clipping_only_sweep": only_sweep,
                          "seed_replicates": [base, *reps], "study_seed_replicates": study_reps,
                          "user_level": user, "accounting": acc,
                          "non_private": np_study,
                          "seconds": time.perf_counter() - t2,
                          "seconds_by_study": {"batch_size": small["wall_seconds"],
                                               "clip_norm": sum(r["wall_seconds"] for r in clip if r is not base),
                                               "clipping_only": sum(r["wall_seconds"] for r in only),
                                               "clipping_only_sweep": only_sweep_seconds,
                                               "seed_replicates": sum(r["wall_seconds"] for r in reps),
                                               "study_seed_replicates": sum((r["wall_seconds"] for r in study_new), 0.0),
                                               "user_level": user_seconds,
                                               "non_private": 0.0 if np_sweep else np_study["wall_seconds"],
                                               }}  # fmt: skip
        out["privacy_over_time"] = {"example_level": privacy_over_time(base, rows=power_rows),
                                    "user_level": privacy_over_time(user)}  # fmt: skip
        out["selection"] = selection_cost([r for r in example_runs if not math.isinf(r["epsilon_pld"])], delta=delta)
    if math.inf in eps_list:
        rec = pd.DataFrame({epsilon_label(r["epsilon_target"]): {"overall": r["metrics"]["recall@20"],
                            **{g: v["recall@20"] for g, v in r["segments"].items()}} for r in runs})  # fmt: skip
        out["threshold"] = threshold_table(rec).reset_index(names="group").to_dict(orient="records")
    oracle = data.ceiling()
    p_test = float(np.mean(data.y_test))  # the test positive (click) rate: the classification floors
    out["baselines"] = {"random": {"recall@20": random_recall(data.cand_user, data.cand_label, k=20)},
                        "test_positive_rate": p_test,
                        "majority": {"accuracy": max(p_test, 1 - p_test),
                                     "f1": 2 * p_test / (1 + p_test) if p_test > 0.5 else 0.0},
                        "all_positive": {"accuracy": p_test, "f1": 2 * p_test / (1 + p_test)},
                        "oracle": {"recall@20": float(oracle.loc["overall", "recall@20"]),
                                   "ndcg@20": float(oracle.loc["overall", "ndcg@20"]),
                                   "auc": float(oracle.loc["overall", "auc"])},
                        "random_by_group": {g: random_recall(data.cand_user[m], data.cand_label[m], k=20)
                                            for g, (_, m) in data.groups().items()},
                        "oracle_by_group": {g: float(oracle.loc[g, "recall@20"]) for g in data.groups()}}  # fmt: skip
    out["privacy_unit"] = {"sweep": PRIVACY_UNITS["interaction"], "user_level": PRIVACY_UNITS["user"]}
    out["public_proxy"] = public
    out["configuration"] = {**asdict(prof), "epsilons": eps_list, "seed": seed, "delta_used": delta,
                            "sample_rate": q, "steps": steps, "accountant": "pld", "optimizer": "adam",
                            "sampler": "poisson", "model": "StreamRecClickPredictor"}  # fmt: skip
    out["data"] = {"n_train": data.n_train, "n_test": data.n_test, "n_candidates": int(data.cand_user.size),
                   "n_users": prof.n_users, "n_items": prof.n_items, "power_user_rows_30_days": power_rows}  # fmt: skip
    out["timing"] = {"generate_seconds": gen_seconds, "proxy_seconds": proxy_seconds, "sweep_seconds": sweep_seconds}
    out |= {"machine": machine_info(), "versions": library_versions(), "commit": git_commit()}
    return out


def epsilon_label(eps: float) -> str:
    """The label of a run's target epsilon in tables and figures: ``"1"``, ``"3"``, ``"inf"``.

    >>> epsilon_label(3.0), epsilon_label(float("inf"))
    ('3', 'inf')
    """
    return "inf" if math.isinf(eps) else f"{eps:g}"
