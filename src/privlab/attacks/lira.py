r"""Membership inference by the likelihood-ratio attack (LiRA) and its target models.

Carlini, Chien, Nasr, Song, Terzis, Tramer (2022), "Membership Inference
Attacks From First Principles", IEEE S&P, arXiv:2112.03570. Train :math:`M`
models, each on a random half of the data (``keep[m, i]``: example :math:`i`
is in model :math:`m`'s training set). For a target model and an example
:math:`(x, y)`, the statistic is the logit-scaled confidence (their eq. 4)

.. math::
    \phi = \log \frac{p_y}{1 - p_y}
         = z_y - \log \sum_{j \ne y} e^{z_j} \qquad (z: \text{the logits}),

and the score is the log-likelihood ratio of two Gaussians fitted to
:math:`\phi` over the *other* models that did and did not train on the
example (online LiRA, their Algorithm 1)

.. math::
    \Lambda = \log \mathcal N(\phi;\, \mu_{\text{in}}, \sigma_{\text{in}}^2)
            - \log \mathcal N(\phi;\, \mu_{\text{out}}, \sigma_{\text{out}}^2).

With few shadow models the variances are pooled over examples ("global
variance", their Section VI-C); offline LiRA uses the "out" Gaussian only,
:math:`\Lambda = -\log P(Z > \phi)` one-sided. Every model in turn is the
target (leave-one-out), which gives :math:`M \times N` guesses.

Any :math:`(\varepsilon, \delta)`-DP training bounds every membership test:
:math:`\mathrm{TPR} \le e^\varepsilon\, \mathrm{FPR} + \delta`
(:func:`dp_tpr_bound`; the unit is one training example, add/remove).
Averages of tests that each meet the bound at a common threshold meet it too.

:func:`train_mlps` trains the :math:`M` one-hidden-layer ReLU networks at once
(batched weights), with Poisson-sampled DP-SGD (per-example clipping by hand:
the gradient of a linear layer is an outer product, so its norm is the product
of two norms) or without privacy.

Used in: chapters 12 and 14.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import log_ndtr

from .._validate import (
    check_delta,
    check_epsilon,
    check_int,
    check_nonnegative,
    check_positive,
    check_probability,
)
from ..dpsgd.sampling import steps_per_epoch

__all__ = [
    "MLPEnsemble",
    "auc_flat",
    "bootstrap_auc",
    "bootstrap_tpr",
    "clipped_grad_sums",
    "dp_tpr_bound",
    "lira_scores",
    "logit_confidence",
    "random_halves",
    "roc_curve",
    "train_mlps",
    "tpr_at_fpr",
    "tpr_at_fpr_flat",
]


def logit_confidence(logits, labels) -> np.ndarray:
    r"""Logit-scaled confidence of the label, :math:`z_y - \log\sum_{j\ne y} e^{z_j}`.

    Computed from the logits without forming :math:`p_y` (stable where
    :math:`p_y` rounds to 1). Carlini et al. 2022 (arXiv:2112.03570), eq. 4.

    Args:
        logits: ``(..., N, K)`` class logits, :math:`K \ge 2`.
        labels: ``(N,)`` integer labels in ``[0, K)``.

    Returns:
        ``(..., N)`` float array.

    >>> float(logit_confidence(np.array([[0.0, 0.0]]), np.array([0]))[0])
    0.0
    >>> round(float(logit_confidence(np.array([[2.0, 0.0, 0.0]]), np.array([0]))[0]), 4)
    1.3069
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim < 2 or z.shape[-1] < 2 or z.shape[-2] != y.shape[0]:
        raise ValueError(
            f"logits must be (..., N, K>=2) with N = len(labels), got {tuple(z.shape)}"
        )
    if y.min() < 0 or y.max() >= z.shape[-1]:
        raise ValueError("labels must be in [0, K)")
    own = z.gather(-1, y.expand(*z.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, y.expand(*z.shape[:-1]).unsqueeze(-1), -math.inf)
    return (own - torch.logsumexp(others, -1)).numpy()


def _normal_logpdf(x, mu, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)


def random_halves(n_models: int, n_examples: int, rng: np.random.Generator) -> np.ndarray:
    r"""Shadow-model training sets: each model on its own uniformly random half of the pool.

    Row :math:`m` of the ``(M, N)`` result marks :math:`\lfloor N/2 \rfloor` examples,
    drawn without replacement, independently of the other rows. So every model trains
    on the same number of examples (a public constant, as the target's recipe fixes),
    each example is in :math:`\mathrm{Binomial}(M, 1/2)` models, and, with each model
    the target in turn, the other models' memberships are independent of the target's:
    no test gains from the design itself. (Designs that put every example in exactly
    :math:`M/2` models, or train models in complementary pairs, make the shadows'
    membership counts depend on the target's, a side channel the DP bound does not
    cover.) An example that the other models all include or all exclude gets a
    ``nan`` online LiRA score (probability :math:`2^{2-M}`), an event that does not
    depend on the target's membership.

    With a fixed size, "example :math:`i` in" and "out" are the training sets
    :math:`S \cup \{i\}` and :math:`S \cup \{j\}` (:math:`S` a uniform
    :math:`(\lfloor N/2 \rfloor - 1)`-subset of the others, :math:`j` uniform among the
    rest): a *replacement* of one example. Training that is :math:`(\varepsilon,
    \delta)`-DP under add/remove is :math:`(2\varepsilon, (1 + e^\varepsilon)\delta)`-DP
    under replacement (group privacy for two), a valid bound for a membership test on this
    design (:func:`dp_tpr_bound` at those parameters), but a loose one for a test that ranks a
    member against non-members scored by the same model: against the add/remove neighbour
    without the member, the member is exchangeable with those non-members, so its rate of
    landing above the threshold is the false-positive rate, and the add/remove
    :math:`(\varepsilon, \delta)` bound applies.

    >>> keep = random_halves(4, 6, np.random.default_rng(0))
    >>> keep.shape, keep.sum(1).tolist()
    ((4, 6), [3, 3, 3, 3])
    """
    m = check_int("n_models", n_models)
    n = check_int("n_examples", n_examples, minimum=2)
    keep = np.zeros((m, n), dtype=bool)
    for row in keep:
        row[rng.choice(n, n // 2, replace=False)] = True
    return keep


def lira_scores(
    phi, keep, *, online: bool = True, global_variance: bool = True, ddof: int = 0
) -> np.ndarray:
    r"""LiRA score of every (model, example) pair, each model the target in turn.

    .. math::
        \Lambda_{m,i} = \log \mathcal N(\phi_{m,i}; \mu^{\text{in}}_{-m,i},
                                        \sigma_{\text{in}}^2)
                      - \log \mathcal N(\phi_{m,i}; \mu^{\text{out}}_{-m,i},
                                        \sigma_{\text{out}}^2)

    with the means over the models other than :math:`m` that did (in) and did
    not (out) train on :math:`i`. Offline: :math:`-\log \Phi((\mu^{\text{out}}
    - \phi)/\sigma_{\text{out}})`, the one-sided test against "out" alone.
    Higher means "member". Carlini et al. 2022 (arXiv:2112.03570), Algorithm 1.

    Args:
        phi: ``(M, N)`` statistics from :func:`logit_confidence`, :math:`M \ge 3`.
        keep: ``(M, N)`` booleans, example :math:`i` in model :math:`m`'s training set.
        online: use both Gaussians (else offline, "out" only).
        global_variance: pool the variances over examples (advised for few models).
        ddof: the variances' degrees-of-freedom correction: 0 (the default, the
            maximum-likelihood variance, biased low by a factor :math:`(n-1)/n` over
            :math:`n` models) or 1 (unbiased; advised with few shadow models).

    Returns:
        ``(M, N)`` scores; ``nan`` where the other models have no "in" (online)
        or no "out" example, and with ``global_variance=False`` where they have fewer
        than two (no variance).

    Raises:
        ValueError: shapes differ, fewer than 3 models, or non-finite ``phi``.

    Used in: chapters 12 and 14.
    """
    phi = np.asarray(phi, dtype=float)
    keep = np.asarray(keep, dtype=bool)
    if phi.ndim != 2 or phi.shape != keep.shape or phi.shape[0] < 3:
        raise ValueError(
            f"phi and keep must both be (M >= 3, N), got {phi.shape} and {keep.shape}"
        )
    if not np.isfinite(phi).all():
        raise ValueError("phi must be finite")
    n_in_all, n_out_all = keep.sum(0), (~keep).sum(0)
    s_in_all, s_out_all = (phi * keep).sum(0), (phi * ~keep).sum(0)
    q_in_all, q_out_all = (phi**2 * keep).sum(0), (phi**2 * ~keep).sum(0)
    # leave the target model out of each sum
    n_in, n_out = n_in_all - keep, n_out_all - ~keep
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in = (s_in_all - phi * keep) / n_in
        mu_out = (s_out_all - phi * ~keep) / n_out
        var_in = ((q_in_all - phi**2 * keep) / n_in - mu_in**2) * n_in / (n_in - ddof)
        var_out = ((q_out_all - phi**2 * ~keep) / n_out - mu_out**2) * n_out / (n_out - ddof)
    # a variance needs two models: with one, ddof=1 divides 0 by 0 when the target is on the other side
    # and a rounding residual by 0 when it is not (members -inf, non-members +inf: AUC 0.38 with no
    # signal), and ddof=0 gives 0, floored to 1e-12 below
    var_in, var_out = np.where(n_in >= 2, var_in, np.nan), np.where(n_out >= 2, var_out, np.nan)
    if global_variance:
        var_in = np.broadcast_to(
            np.nanmean(var_in, 1, keepdims=True), phi.shape
        )
        var_out = np.broadcast_to(np.nanmean(var_out, 1, keepdims=True), phi.shape)
    var_in, var_out = np.maximum(var_in, 1e-12), np.maximum(var_out, 1e-12)
    with np.errstate(invalid="ignore"):
        if online:
            return _normal_logpdf(phi, mu_in, var_in) - _normal_logpdf(
                phi, mu_out, var_out
            )
        return -log_ndtr((mu_out - phi) / np.sqrt(var_out))


def roc_curve(scores, members) -> tuple[np.ndarray, np.ndarray]:
    r"""False- and true-positive rates of "score :math:`\ge t`" at every threshold.

    Args:
        scores: scores, higher means "member" (``nan`` entries are dropped).
        members: booleans of the same shape, the truth.

    Returns:
        ``(fpr, tpr)``, non-decreasing, starting at ``(0, 0)`` and ending at ``(1, 1)``.

    >>> scores, members = np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool)
    >>> fpr, tpr = roc_curve(scores, members)
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s = np.asarray(scores, dtype=float).ravel()
    m = np.asarray(members, dtype=bool).ravel()
    if s.shape != m.shape:
        raise ValueError(
            f"scores and members must have the same size, got {s.size} and {m.size}"
        )
    ok = ~np.isnan(s)
    s, m = s[ok], m[ok]
    if m.all() or not m.any():
        raise ValueError("members must hold both members and non-members")
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    # one point per distinct threshold (s[1:] != s[:-1], not np.diff: inf - inf is nan, and each
    # tied infinite score became a threshold of its own, ordered by input position)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    return np.r_[0.0, fp / (~m).sum()], np.r_[0.0, tp / m.sum()]


def tpr_at_fpr(scores, members, fpr: float) -> float:
    r"""The largest TPR at FPR :math:`\le` ``fpr`` (Carlini et al.'s metric).

    >>> tpr_at_fpr(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool), 0.0)
    0.5
    """
    f = check_nonnegative("fpr", fpr)
    fprs, tprs = roc_curve(scores, members)
    return float(tprs[fprs <= f].max())


def dp_tpr_bound(fpr, *, epsilon: float, delta: float) -> np.ndarray:
    r"""The highest TPR :math:`(\varepsilon, \delta)`-DP allows a test at ``fpr``.

    .. math:: \mathrm{TPR} \le \min\bigl(1,\; e^\varepsilon\,\mathrm{FPR} + \delta,\;
              1 - e^{-\varepsilon}(1 - \delta - \mathrm{FPR})\bigr)

    (the second form applies the definition to the complementary test).
    Kairouz, Oh, Viswanath 2015 (arXiv:1311.0776), Theorem 2.1.

    >>> round(float(dp_tpr_bound(0.01, epsilon=1.0, delta=1e-5)), 5)
    0.02719
    """
    eps = check_epsilon(epsilon)
    d = check_delta(delta, allow_zero=True)
    f = np.asarray(fpr, dtype=float)
    if np.any((f < 0) | (f > 1)):
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    return np.minimum.reduce(
        [np.ones_like(f), math.exp(eps) * f + d, 1 - math.exp(-eps) * (1 - d - f)]
    )


@dataclass(frozen=True, eq=False)
class MLPEnsemble:
    """:func:`train_mlps`'s output: each model's logits on every example; its record."""

    logits: np.ndarray  # (M, N, K) on all N examples
    keep: np.ndarray  # (M, N) training-set membership
    losses: np.ndarray  # (epochs, M) mean training loss of each epoch's batches
    clipped_fraction: (
        float  # share of per-example gradients with norm > C (nan without clipping)
    )
    steps: int
    sample_rate: float


def _per_example_norms(x, a, d1, d2):
    # |a (x) b| = |a| |b| for each outer-product (weight) gradient; the biases add |d|^2
    return torch.sqrt(
        ((x * x).sum(-1) + 1) * (d1 * d1).sum(-1)
        + ((a * a).sum(-1) + 1) * (d2 * d2).sum(-1)
    )


def clipped_grad_sums(params, xb, yb, wts, c):
    """Per-model sums of weighted, clipped per-example gradients of the cross-entropy (M MLPs at once).

    The backward pass of :func:`train_mlps`, written out for the two-layer ReLU MLPs.

    ``params`` = (W1 (M, d, h), b1 (M, 1, h), W2 (M, h, K), b2 (M, 1, K));
    ``xb`` (M, B, d), ``yb`` (M, B), ``wts`` (M, B) 0/1 (padding); ``c`` the
    clipping norm or None. Returns (grads, loss sums (M,), norms (M, B)).
    """
    w1, b1, w2, b2 = params
    z1 = torch.baddbmm(b1, xb, w1)
    a = z1.clamp_min(0)
    logp = torch.baddbmm(b2, a, w2).log_softmax(-1)
    d2 = logp.exp() - torch.nn.functional.one_hot(
        yb, w2.shape[-1]
    )  # dloss/dlogits per example
    d1 = (d2 @ w2.transpose(1, 2)) * (z1 > 0)
    loss_sum = (-(logp.gather(-1, yb.unsqueeze(-1)).squeeze(-1)) * wts).sum(1)
    norms = _per_example_norms(xb, a, d1, d2)
    if c is not None:
        wts = wts * torch.clamp(c / (norms + 1e-12), max=1.0)
    d1w, d2w = d1 * wts.unsqueeze(-1), d2 * wts.unsqueeze(-1)
    grads = [
        xb.transpose(1, 2) @ d1w,
        d1w.sum(1, keepdim=True),
        a.transpose(1, 2) @ d2w,
        d2w.sum(1, keepdim=True),
    ]
    return grads, loss_sum, norms


def train_mlps(X, y, keep, *, hidden: int, epochs: int, sample_rate: float, lr: float,
               noise_multiplier: float = 0.0, max_grad_norm: float | None = None,
               inclusion_rate: float = 0.5, generator: torch.Generator) -> MLPEnsemble:  # fmt: skip
    r"""Train :math:`M` one-hidden-layer ReLU classifiers at once, model m on keep[m].

    Each step draws a Poisson batch :math:`S_m` (rate :math:`q` over model
    :math:`m`'s :math:`N_m` examples) and takes the DP-SGD step
    :math:`\theta \leftarrow \theta - \frac{\eta}{qN_{\rm pub}}\bigl(\sum_{i\in S_m} \bar g_i
    + \mathcal N(0, \sigma^2 C^2 I)\bigr)` with :math:`\bar g_i` the gradient of the
    cross-entropy clipped to norm :math:`C` (Abadi et al. 2016, arXiv:1607.00133).
    Without ``max_grad_norm`` (and :math:`\sigma = 0`) it is plain minibatch SGD.
    An epoch is :math:`\mathrm{round}(1/q)` steps. The privacy unit is one
    training example (add/remove); account with
    :func:`privlab.accounting.dpsgd_epsilon` at :math:`(\sigma, q, T)`.

    The denominator is the public constant :math:`N_{\rm pub} = pN` (``inclusion_rate``
    :math:`p` times the pool size :math:`N`, both fixed before the inclusion coins are
    drawn), never :math:`N_m` or the realised :math:`|S_m|`: under add/remove :math:`N_m`
    differs between neighbours, and an update scaled by it would release it through
    the noise norm, a leak the accountant does not charge (chapter 12).

    Args:
        X: ``(N, d)`` float features. y: ``(N,)`` integer labels.
        keep: ``(M, N)`` booleans. hidden: width :math:`h`. epochs: :math:`E`.
        sample_rate: :math:`q \in (0, 1]`. lr: :math:`\eta`.
        noise_multiplier: :math:`\sigma \ge 0`. max_grad_norm: :math:`C` or ``None``.
        inclusion_rate: the public :math:`p \in (0, 1]` behind ``keep`` (LiRA's coin
            flip: 0.5); only the constant :math:`qpN` uses it.
        generator: the run's only source of randomness (initialisation, batches, noise).

    Returns:
        :class:`MLPEnsemble`.

    Raises:
        ValueError: bad shapes or parameters (noise without clipping).

    Used in: chapter 12.
    """
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    keep_np = np.asarray(keep, dtype=bool)
    if (
        X.ndim != 2
        or keep_np.ndim != 2
        or keep_np.shape[1] != X.shape[0]
        or yt.shape != (X.shape[0],)
    ):
        raise ValueError(
            f"need X (N, d), y (N,), keep (M, N); got {tuple(X.shape)}, "
            f"{tuple(yt.shape)}, "
            f"{keep_np.shape}"
        )
    h, epochs = check_int("hidden", hidden), check_int("epochs", epochs)
    q, lr = check_positive("sample_rate", sample_rate), check_positive("lr", lr)
    if q > 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    sigma = check_nonnegative("noise_multiplier", noise_multiplier)
    c = (
        None
        if max_grad_norm is None
        else check_positive("max_grad_norm", max_grad_norm)
    )
    if sigma > 0 and c is None:
        raise ValueError("noise_multiplier > 0 needs max_grad_norm")
    p_in = check_probability("inclusion_rate", inclusion_rate)
    g = generator
    m_models, (n, d), k = keep_np.shape[0], X.shape, int(yt.max()) + 1
    keep_t = torch.as_tensor(keep_np)
    w1 = torch.randn(m_models, d, h, generator=g) * math.sqrt(2 / d)
    b1 = torch.zeros(m_models, 1, h)
    w2 = torch.randn(m_models, h, k, generator=g) * math.sqrt(1 / h)
    b2 = torch.zeros(m_models, 1, k)
    # q p N: a public constant, never N_m (private under add/remove) nor |S|
    denom = q * p_in * n
    per_epoch = steps_per_epoch(q)
    losses, n_clipped, n_seen = np.zeros((epochs, m_models)), 0, 0
    for e in range(epochs):
        for _ in range(per_epoch):
            sel = keep_t & (torch.rand(m_models, n, generator=g) < q)
            width = max(1, int(sel.sum(1).max()))
            idx = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[
                :, :width
            ]  # (M, B) batch first
            wts = sel.gather(1, idx).float()  # 0 on padding
            xb, yb = X[idx], yt[idx]  # (M, B, d), (M, B)
            grads, loss_sum, norms = clipped_grad_sums((w1, b1, w2, b2), xb, yb, wts, c)
            losses[e] += loss_sum.numpy()
            if c is not None:
                n_clipped += int(((norms > c) & (wts > 0)).sum())
                n_seen += int(wts.sum())
            for p, gr in zip((w1, b1, w2, b2), grads):
                if sigma > 0:
                    gr = gr + sigma * c * torch.randn(gr.shape, generator=g)
                p -= lr * gr / denom
        losses[e] /= np.maximum(1e-12, (q * per_epoch) * keep_np.sum(1))
    with torch.no_grad():
        logits = torch.baddbmm(
            b2, torch.baddbmm(b1, X.expand(m_models, n, d), w1).clamp_min(0), w2
        )
    return MLPEnsemble(
        logits=logits.numpy().astype(np.float64),
        keep=keep_np,
        losses=losses,
        clipped_fraction=n_clipped / n_seen if n_seen else math.nan,
        steps=epochs * per_epoch,
        sample_rate=q,
    )


def bootstrap_tpr(scores_list, members, fpr: float, *, n_boot: int, rng: np.random.Generator,
                  resample_models: bool = True) -> np.ndarray:  # fmt: skip
    r"""TPR at ``fpr`` of several attacks on the same guesses, over a paired two-way bootstrap.

    The :math:`M \times N` guesses are correlated in two ways: the :math:`M` guesses
    about one example share its difficulty, and the :math:`N` guesses against one
    target model share that model's training randomness (how much it overfits, its
    noise draws). Each replicate draws the :math:`M` target models (rows) and the
    :math:`N` examples (columns) with replacement, independently, the same draw for
    every attack, and recomputes :func:`tpr_at_fpr` (its threshold included). The
    standard deviation of a column (or of a difference of columns) is then a standard
    error that counts both correlations, unlike a binomial one, and pairs the attacks.
    This is the "pigeonhole" bootstrap of a crossed design (Owen 2007, "The pigeonhole
    bootstrap", Ann. Appl. Stat. 1(2)): for a mean it is mildly conservative (it
    overstates the variance by about the interaction term's share, of order
    :math:`1/(MN)`), so its standard errors err on the large side.
    ``resample_models=False`` resamples the examples only (every model kept in every
    replicate), which leaves the model-to-model variance out.

    The scores are not refitted in a replicate: the shadow Gaussians of
    :func:`lira_scores` stay those of the full ensemble.

    Returns:
        ``(n_boot, len(scores_list))`` TPRs.

    >>> s = np.array([[3.0, 2.0, 1.0, 0.0]] * 2); m = np.array([[1, 0, 1, 0]] * 2, bool)
    >>> bootstrap_tpr([s, s], m, 0.5, n_boot=3, rng=np.random.default_rng(0)).shape
    (3, 2)

    Used in: chapter 12.
    """
    f = check_nonnegative("fpr", fpr)
    return _two_way_bootstrap(scores_list, members, lambda s, m: tpr_at_fpr_flat(s, m, f), n_boot=n_boot,
                              rng=rng, resample_models=resample_models)  # fmt: skip


def _two_way_bootstrap(scores_list, members, statistic, *, n_boot: int, rng: np.random.Generator,
                       resample_models: bool) -> np.ndarray:  # fmt: skip
    """``statistic(flat scores, flat membership)`` of each attack over the paired two-way bootstrap:
    the ``M`` target models (rows) and the ``N`` examples (columns) drawn with replacement,
    independently, one draw shared by every attack. Returns ``(n_boot, len(scores_list))``."""
    members = np.asarray(members, dtype=bool)
    arrays = [np.asarray(s, dtype=float) for s in scores_list]
    if members.ndim != 2 or any(a.shape != members.shape for a in arrays):
        raise ValueError(f"need (M, N) scores and members of one shape, got {[a.shape for a in arrays]}, "
                         f"{members.shape}")  # fmt: skip
    n_boot = check_int("n_boot", n_boot)
    m_rows, n_cols = members.shape
    if resample_models and m_rows < 2:
        raise ValueError("resampling the models needs M >= 2")
    out = np.empty((n_boot, len(arrays)))
    for b in range(n_boot):
        rows = rng.integers(0, m_rows, m_rows) if resample_models else np.arange(m_rows)
        cols = rng.integers(0, n_cols, n_cols)
        mem = members[np.ix_(rows, cols)].ravel()
        for j, a in enumerate(arrays):
            out[b, j] = statistic(a[np.ix_(rows, cols)].ravel(), mem)
    return out


def tpr_at_fpr_flat(s: np.ndarray, m: np.ndarray, f: float) -> float:
    """:func:`tpr_at_fpr` of flat scores ``s`` and membership ``m`` without a sort (what :func:`bootstrap_tpr` repeats).

    With :math:`k` the most false positives allowed, the best threshold sits just above the
    :math:`(k+1)`-th largest non-member score, found by ``np.partition`` in linear time.
    NaN scores are dropped. Equal to :func:`tpr_at_fpr` (the tests check it, ties and NaN included),
    except on scores of one class only (a bootstrap replicate can draw them): ``nan`` here, as
    :func:`bootstrap_auc` gives such a replicate, where :func:`tpr_at_fpr` raises.

    >>> tpr_at_fpr_flat(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool), 0.0)
    0.5

    Used in: chapter 12 (through :func:`bootstrap_tpr`).
    """
    ok = ~np.isnan(s)
    s, m = s[ok], m[ok]
    neg, pos = s[~m], s[m]
    if neg.size == 0 or pos.size == 0:  # no TPR (no members) or no FPR (no non-members)
        return math.nan
    k = int(math.floor(f * neg.size))
    while (k + 1) / neg.size <= f:
        k += 1
    while k > 0 and k / neg.size > f:
        k -= 1
    if k >= neg.size:
        return 1.0
    t_star = -np.partition(-neg, k)[k]  # the (k+1)-th largest
    return float((pos > t_star).sum() / pos.size)


def auc_flat(s: np.ndarray, m: np.ndarray) -> float:
    """Area under the ROC curve of flat scores ``s`` (higher: member) and membership ``m``.

    The Mann-Whitney form: the probability that a random member outscores a random
    non-member, ties counted one half (average ranks). NaN scores are dropped.

    >>> auc_flat(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 0, 1, 0], bool))
    0.75
    """
    from scipy.stats import rankdata

    s, m = np.asarray(s, dtype=float).ravel(), np.asarray(m, dtype=bool).ravel()
    ok = ~np.isnan(s)
    s, m = s[ok], m[ok]
    n1, n0 = int(m.sum()), int((~m).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("members must hold both members and non-members")
    r = rankdata(s)
    return float((r[m].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(scores_list, members, *, n_boot: int, rng: np.random.Generator,
                  resample_models: bool = True) -> np.ndarray:  # fmt: skip
    r"""AUC of several attacks on the same ``(M, N)`` guesses, over the paired two-way bootstrap.

    The same resampling as :func:`bootstrap_tpr` (the :math:`M` target models and the
    :math:`N` examples drawn with replacement, independently, one draw for every attack),
    with :func:`auc_flat` in place of the TPR. Returns ``(n_boot, len(scores_list))``.

    >>> s = np.array([[3.0, 2.0, 1.0, 0.0]] * 2); m = np.array([[1, 0, 1, 0]] * 2, bool)
    >>> bootstrap_auc([s], m, n_boot=2, rng=np.random.default_rng(0)).shape
    (2, 1)

    Used in: chapter 14.
    """
    def auc_or_nan(s, m):  # a draw with only members (or none) has no AUC
        return auc_flat(s, m) if m.any() and not m.all() else np.nan

    return _two_way_bootstrap(scores_list, members, auc_or_nan, n_boot=n_boot, rng=rng,
                              resample_models=resample_models)  # fmt: skip
