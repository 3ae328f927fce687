r"""The privacy-cliff reproduction: a 66-run DP-SGD sweep, every run trained at once.

The published experiment (COURSE.md, its chapter 6; chapter 7 here): 500 points in 10 dimensions
from 5 Gaussian clusters (std 1.5), standardised, 80/20 split; an MLP
10-64-5 (1,029 parameters) trained 20 epochs with SGD (lr 0.1, batch 64),
:math:`\delta = 10^{-5}`; :math:`\sigma \in \{0.01, 0.1, 0.5, 1, 2, 5, 10\}`,
:math:`C \in \{0.1, 1, 10\}`, seeds 42, 123, 456: 63 DP runs and 3 non-private
baselines. Two modes:

* ``"published"``: shuffled fixed-size batches (7 per epoch, the last of 16)
  and the *simplified* RDP bound of :func:`simplified_rdp_epsilon`;
* ``"corrected"``: true Poisson sampling (:class:`privlab.dpsgd.PoissonSampler`,
  6 steps per epoch) and the PLD accountant (:func:`privlab.accounting.dpsgd_epsilon`).

**The batched engine.** The :math:`R` runs share nothing but the data, so their
parameters are stacked, :math:`W_1 \in \mathbb{R}^{R\times H\times d}`,
:math:`W_2 \in \mathbb{R}^{R\times K\times H}` (torch's ``(out, in)`` layout),
and one step of all runs is a handful of batched matrix products. For a Linear
layer :math:`a \mapsto Wa + b` the per-example gradient is :math:`g_i a_i^\top`
(and :math:`g_i` for the bias), so with :math:`g^{(2)}_i = \mathrm{softmax}(z_i) - e_{y_i}`
and :math:`g^{(1)}_i = (W_2^\top g^{(2)}_i) \odot \mathbf{1}[W_1 x_i + b_1 > 0]`,

.. math::
    \|\nabla\ell_i\|^2 = (\|x_i\|^2 + 1)\,\|g^{(1)}_i\|^2 + (\|h_i\|^2 + 1)\,\|g^{(2)}_i\|^2, \qquad
    \bar g_{W_1} = \sum_i c_i\, g^{(1)}_i x_i^\top, \quad c_i = \frac{C}{\max(\|\nabla\ell_i\|, C)},

and DP-SGD adds :math:`\mathcal{N}(0, \sigma^2C^2I)`, divides by the expected
batch size and steps. No autograd, no per-example gradient is materialised: the
forward, backward, norms and clipped sums are :mod:`privlab.dpsgd.batched`'s.
Runs with the same seed share their initialisation, their batches and their
standard-normal noise draws (seeded by :func:`privlab.dpsgd.run_seeds` and
:func:`privlab.dpsgd.make_sampler`, as :func:`privlab.dpsgd.train` seeds them), so
each run equals ``privlab.dpsgd.train`` on the same seed (the tests check it to 1e-5).

References: Abadi et al. 2016 (arXiv:1607.00133); Mironov, Talwar, Zhang 2019
(arXiv:1908.10530); Chua et al. 2024 (arXiv:2403.17673).

Used in: chapter 7.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_blobs
from sklearn.model_selection import train_test_split
from torch import Tensor

from .._validate import check_delta, check_int, check_nonnegative, check_positive, check_probability
from ..accounting import dpsgd_epsilon
from ..datasets import cps1988_high_wage, cps1988_public_features, load_cps1988
from ..dpsgd import DPSGDConfig, make_sampler, run_seeds, train
from ..dpsgd import batched
from ..models import MLP

__all__ = ["CliffConfig", "CliffData", "SweepResult", "cliff_data", "cps1988_task", "cliffs",
           "init_params", "reference_run", "run_sweep", "simplified_rdp_epsilon", "summarize", "validate"]

#: Opacus's default RDP orders, used by the simplified bound.
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
MODES = ("published", "corrected")


@dataclass(frozen=True)
class CliffData:
    """A classification task as float tensors: ``X_train (N, d)``, ``y_train (N,)`` int64, and the test split."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int
    name: str = "blobs"


@dataclass(frozen=True, kw_only=True)
class CliffConfig:
    r"""The sweep: grid, training hyperparameters, sampling and accounting mode (validated on creation).

    ``sigmas`` may contain 0 (clipping only, :math:`\varepsilon = \infty`), for
    the clipping-versus-noise decomposition. ``dtype`` ``torch.float64`` makes
    the equivalence tests insensitive to summation order.
    """

    sigmas: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
    clip_norms: tuple[float, ...] = (0.1, 1.0, 10.0)
    seeds: tuple[int, ...] = (42, 123, 456)
    epochs: int = 20
    lr: float = 0.1
    batch_size: int = 64
    hidden: int = 64
    delta: float = 1e-5
    mode: str = "published"
    baselines: bool = True
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for s in self.sigmas:
            check_nonnegative("sigma", s)
        for c in self.clip_norms:
            check_positive("max_grad_norm", c)
        for name in ("epochs", "batch_size", "hidden"):
            check_int(name, getattr(self, name), minimum=1)
        check_positive("lr", self.lr)
        check_delta(self.delta)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for s in self.seeds:  # int(1.2) == int(1.7): two "seeds" would be one run counted twice
            check_int("seed", s, minimum=0)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds!r}")
        for name in ("sigmas", "clip_norms"):  # a repeated value is the same runs, counted as replicates
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct, got {values!r}")

    @property
    def sampler(self) -> str:
        return "shuffle" if self.mode == "published" else "poisson"


@dataclass(frozen=True)
class SweepResult:
    """Per-run records and the sweep's wall-clock time.

    Each record: ``seed, sigma, C, private, accuracy, epsilon, accountant, steps,
    sample_rate, delta``, ``fraction_clipped`` (share of sampled examples clipped, all
    steps), ``loss_curve`` (mean training cross-entropy of each epoch, each batch's before
    its update) and ``train_loss`` (its last entry).
    """

    records: tuple[dict, ...]
    seconds: float
    config: CliffConfig
    task: str
    params: tuple | None = field(default=None, repr=False)  # final (W1, b1, W2, b2), stacked over runs
    step_losses: np.ndarray | None = field(default=None, repr=False)  # (R, steps): each step's batch loss

    def accuracy_on(self, X: Tensor, y: Tensor) -> list[float]:
        """Each run's accuracy on ``X (n, d)``, ``y (n,)`` (run order = ``records`` order).

        Needs the final parameters (``run_sweep(..., keep_params=True)``); used to score
        runs selected on a validation split on the test split.

        Raises:
            ValueError: if the sweep did not keep its parameters.
        """
        if self.params is None:
            raise ValueError("accuracy_on needs run_sweep(..., keep_params=True)")
        return _stacked_accuracy(self.params, X, y)

    def to_frame(self):
        return pd.DataFrame(list(self.records))

    def write_json(self, path) -> Path:
        """Write ``results.json`` (non-finite epsilons as ``null``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = {k: (str(v) if k == "dtype" else v) for k, v in asdict(self.config).items()}
        runs = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                for r in self.records]
        path.write_text(json.dumps({"task": self.task, "config": cfg, "seconds": self.seconds, "runs": runs},
                                   indent=1))
        return path


def cliff_data(*, n_samples: int = 500, n_features: int = 10, n_clusters: int = 5, cluster_std: float = 1.5,
               test_fraction: float = 0.2, seed: int = 42, n_test: int | None = None) -> CliffData:
    r"""The published data: ``sklearn.datasets.make_blobs``, standardised, 80/20 split (all seeded by ``seed``).

    Standardised with the *population* mean and s.d. of the mixture, not with the
    sample's: with centres :math:`\mu_k` (drawn from ``seed``, before any point) and
    equal cluster weights, feature :math:`j` has mean :math:`\bar\mu_j = \frac1K\sum_k \mu_{kj}`
    and variance :math:`s^2 + \frac1K\sum_k (\mu_{kj} - \bar\mu_j)^2` (``s = cluster_std``).
    These depend on no point, so the map is the same on neighbouring data sets and the
    training points' privacy is not spent on it (the published code standardised with the
    mean and s.d. of all 500 points, a statistic of the private data).

    ``n_test``: if given, the 20% test split is replaced by ``n_test`` fresh points from
    the same mixture (same centres; their own seed, the same for every ``n_samples``), so
    small training sets are scored on one large, common test set; the training split is
    unchanged.

    >>> d = cliff_data()
    >>> tuple(d.X_train.shape), tuple(d.X_test.shape), d.n_classes
    ((400, 10), (100, 10), 5)
    >>> big = cliff_data(n_samples=100, n_test=2_000)
    >>> tuple(big.X_train.shape), tuple(big.X_test.shape)
    ((80, 10), (2000, 10))
    >>> bool((big.X_test == cliff_data(n_samples=500, n_test=2_000).X_test).all())
    True
    """
    X, y, centres = make_blobs(n_samples=check_int("n_samples", n_samples, minimum=2), n_features=n_features,
                               centers=n_clusters, cluster_std=check_positive("cluster_std", cluster_std),
                               random_state=seed, return_centers=True)
    X = (X - centres.mean(0)) / np.sqrt(cluster_std**2 + centres.var(0))  # population, not sample, moments
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=check_probability("test_fraction", test_fraction),
                                          random_state=seed)
    if n_test is not None:  # fresh points around the same centres, independent of n_samples
        Xte, yte = make_blobs(n_samples=check_int("n_test", n_test, minimum=1), centers=centres,
                              cluster_std=cluster_std, random_state=seed + 1_000_003)
        Xte = (Xte - centres.mean(0)) / np.sqrt(cluster_std**2 + centres.var(0))
    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return CliffData(t(Xtr, torch.float32), t(ytr, torch.int64), t(Xte, torch.float32), t(yte, torch.int64),
                     n_clusters, "blobs")


def cps1988_task(*, seed: int = 0, test_fraction: float = 0.2,
                 max_rows: int | None = None, train_rows: int | None = None) -> CliffData:
    """CPS1988: predict a weekly wage above a public threshold from education, experience and the categoricals.

    The label is :func:`privlab.datasets.cps1988_high_wage` (wage above the public
    constant ``CPS1988_WAGE_THRESHOLD``, USD 500) and education and experience are
    scaled by the codebook's ranges (:func:`privlab.datasets.cps1988_public_features`);
    categoricals one-hot (12 features). Neither the label nor the scaling reads a
    statistic of the rows (a training median or mean would be one, outside any DP
    accounting), so every row's features and label are the same on neighbouring data sets.
    ``max_rows`` subsamples the table before the split; ``train_rows`` keeps the
    full test split (so accuracies are measured precisely) and trains on the first
    ``train_rows`` of the training split only. Privacy unit of a model trained on it:
    one worker's record.

    >>> t = cps1988_task(seed=0, train_rows=500)
    >>> tuple(t.X_train.shape), len(t.y_test)
    ((500, 12), 5631)
    """
    df = load_cps1988()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(df))
    if max_rows is not None:
        perm = perm[: check_int("max_rows", max_rows, minimum=10)]
    n_test = int(round(len(perm) * check_probability("test_fraction", test_fraction)))
    test, tr = perm[:n_test], perm[n_test:]
    if train_rows is not None:
        tr = tr[: check_int("train_rows", train_rows, minimum=10)]
    num = cps1988_public_features(df)[["education", "experience"]].to_numpy(float)
    cats = [np.eye(len(df[c].cat.categories))[df[c].cat.codes.to_numpy()]
            for c in ("ethnicity", "smsa", "region", "parttime")]
    X = np.hstack([num, *cats]).astype(np.float32)
    y = cps1988_high_wage(df).to_numpy().astype(np.int64)
    return CliffData(torch.from_numpy(X[tr]), torch.from_numpy(y[tr]), torch.from_numpy(X[test]),
                     torch.from_numpy(y[test]), 2, "cps1988")


def simplified_rdp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                           orders=ORDERS) -> float:
    r"""The simplified RDP bound we infer for the published accounting (not a valid DP bound in general).

    .. math::
        \varepsilon = \min_\alpha \Bigl( T\,\frac{q^2 \alpha}{2\sigma^2} + \frac{\ln(1/\delta)}{\alpha - 1} \Bigr)

    The Gaussian's RDP :math:`\alpha/(2\sigma^2)` scaled by :math:`q^2`: the
    leading small-:math:`q` term of the subsampled Gaussian's RDP, without the
    Mironov-Talwar-Zhang series (arXiv:1908.10530), and the classic conversion
    of Mironov 2017. It is close to the exact RDP only for small :math:`q` and
    large :math:`\sigma`; for small :math:`\sigma` it understates the cost badly.

    >>> round(simplified_rdp_epsilon(noise_multiplier=10, sample_rate=0.16, steps=140, delta=1e-5), 3)
    0.926
    """
    s = check_positive("noise_multiplier", noise_multiplier)
    q = check_probability("sample_rate", sample_rate)
    k = check_int("steps", steps)
    a = np.asarray(orders, dtype=float)
    return float(np.min(k * q * q * a / (2 * s * s) + math.log(1 / check_delta(delta)) / (a - 1)))


def init_params(seed: int, d: int, hidden: int, k: int, *, dtype=torch.float32):
    """torch's default Linear initialisation, :math:`U(\\pm 1/\\sqrt{\\text{fan-in}})`, from ``Generator(seed)``.

    Returns ``([W1 (H, d), b1 (H,), W2 (K, H), b2 (K,)], generator)``; the generator
    (advanced past the initialisation) is the run's training generator.
    """
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for fan_in, shape in ((d, (hidden, d)), (d, (hidden,)), (hidden, (k, hidden)), (hidden, (k,))):
        out.append(((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(fan_in)).to(dtype))
    return out, g


def _streams(g: torch.Generator, n: int, cfg: CliffConfig):
    """The sampler and noise generator ``privlab.dpsgd.train`` derives from ``g`` (same order, same seeds)."""
    seeds = run_seeds(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shuffled sampler warns; the "published" mode is meant to use it
        sampler = make_sampler(cfg.sampler, n, sample_rate=cfg.batch_size / n, seed=seeds.sampler)
    return sampler, torch.Generator().manual_seed(seeds.noise)


def _grid(cfg: CliffConfig) -> list[tuple[int, float, float | None]]:
    runs = [(seed, s, c) for c in cfg.clip_norms for s in cfg.sigmas for seed in cfg.seeds]
    return runs + ([(seed, 0.0, None) for seed in cfg.seeds] if cfg.baselines else [])


#: Below this sigma the PLD grid explodes (epsilon in the hundreds or more); the corrected mode
#: then reports privlab's RDP bound (Mironov-Talwar-Zhang, a valid upper bound) instead.
PLD_MIN_SIGMA = 0.5


def _epsilon(cfg: CliffConfig, sigma: float, q: float, steps: int) -> tuple[float, str]:
    if sigma == 0:
        return math.inf, "none"
    if cfg.mode == "published":
        return simplified_rdp_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=cfg.delta), "simplified"
    name = "pld" if sigma >= PLD_MIN_SIGMA else "rdp"
    eps = dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=cfg.delta, accountant=name)
    return float(eps), name


def run_sweep(data: CliffData, config: CliffConfig | None = None, *, keep_params: bool = False) -> SweepResult:
    r"""Train every run of the grid at once (baselines included) and return per-run test accuracy and epsilon.

    Each run is DP-SGD as in :func:`privlab.dpsgd.train` with
    ``DPSGDConfig(noise_multiplier=sigma, max_grad_norm=C, batch_size=b, epochs, lr, sampler)``
    (baselines: ``max_grad_norm=None``, the batch-mean gradient), from
    :func:`init_params` ``(seed)``.

    Args:
        data: the task.
        config: the grid and hyperparameters (default: the published sweep).
        keep_params: also return the final stacked parameters (run order = ``records`` order).

    Returns:
        :class:`SweepResult` with one record per run.
    """
    cfg = config or CliffConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrices are tiny: one thread is fastest, and safe on a shared machine
    try:
        return _run_sweep(data, cfg, keep_params)
    finally:
        torch.set_num_threads(threads)


def _run_sweep(data: CliffData, cfg: CliffConfig, keep_params: bool) -> SweepResult:
    start = time.perf_counter()
    dt = cfg.dtype
    X, y = data.X_train.to(dt), data.y_train
    n, d = X.shape
    K, H = data.n_classes, cfg.hidden
    runs = _grid(cfg)
    R = len(runs)
    seed_pos = {s: i for i, s in enumerate(cfg.seeds)}
    run_seed = torch.tensor([seed_pos[s] for s, _, _ in runs])
    private = torch.tensor([c is not None for _, _, c in runs])
    C = torch.tensor([1.0 if c is None else c for _, _, c in runs], dtype=dt)
    std = torch.tensor([s * (1.0 if c is None else c) for _, s, c in runs], dtype=dt)
    # per-seed initialisation and streams, shared by every run with that seed
    inits, samplers, noise_gens = [], [], []
    for s in cfg.seeds:
        p, g = init_params(s, d, H, K, dtype=dt)
        sampler, ng = _streams(g, n, cfg)
        inits.append(p)
        samplers.append(sampler)
        noise_gens.append(ng)
    W1, b1, W2, b2 = (torch.stack([inits[i][j] for i in run_seed.tolist()]) for j in range(4))
    sizes = [H * d, H, K * H, K]
    any_noise = [any(std[r] > 0 for r in range(R) if run_seed[r] == i) for i in range(len(cfg.seeds))]
    expected = float(samplers[0].expected_batch_size)
    onehot_all = torch.nn.functional.one_hot(y, K).to(dt)
    steps = 0
    # diagnostics: share of sampled examples clipped (all steps), mean loss of each epoch
    clipped, seen = torch.zeros(2, R, dtype=torch.float64)
    loss_sum, loss_n = torch.zeros(2, cfg.epochs, R, dtype=torch.float64)
    step_loss = []  # per step: (R,) mean cross-entropy of the sampled batch
    for epoch in range(cfg.epochs):
        for batches in zip(*[iter(sm) for sm in samplers]):
            B = max(b.numel() for b in batches)
            idx = torch.zeros(len(batches), B, dtype=torch.int64)
            mask = torch.zeros(len(batches), B, dtype=dt)
            for i, b in enumerate(batches):
                idx[i, : b.numel()] = b
                mask[i, : b.numel()] = 1
            idx, mask = idx[run_seed], mask[run_seed]  # (R, B)
            xb, oh = X[idx], onehot_all[idx]
            layers = [(W1, b1), batched.RELU, (W2, b2)]
            z, inputs = batched.forward(layers, xb)  # z (R, B, K); inputs: x, pre-activation (R, B, H), h
            gs = batched.backward(layers, inputs, batched.output_grads(z, y[idx], "ce"))
            norms = batched.per_example_grad_norms(layers, inputs, gs)  # (R, B) unclipped ||grad l_i||
            c = torch.where(private[:, None], C[:, None] / torch.maximum(norms, C[:, None]), 1.0) * mask
            clipped += ((norms > C[:, None]).to(dt) * mask).sum(1).double()
            seen += mask.sum(1).double()
            li = torch.logsumexp(z, -1) - (z * oh).sum(-1)  # cross-entropy, before the update
            loss_sum[epoch] += (li * mask).sum(1).double()
            loss_n[epoch] += mask.sum(1).double()
            step_loss.append((li * mask).sum(1).double() / mask.sum(1).double().clamp_min(1))
            grads = [t for pair in batched.grad_sums(layers, inputs, gs, c) for t in pair]  # W1, b1, W2, b2
            noise = [torch.randn(sum(sizes), generator=ng, dtype=dt) if any_noise[i] else torch.zeros(sum(sizes), dtype=dt)
                     for i, ng in enumerate(noise_gens)]
            zs = torch.split(torch.stack(noise)[run_seed] * std[:, None], sizes, dim=1)
            den = torch.where(private, torch.tensor(expected, dtype=dt), mask.sum(1).clamp_min(1))[:, None]
            for p, gsum, zz in zip((W1, b1, W2, b2), grads, zs):
                upd = (gsum + zz.view_as(gsum)) / den.view(-1, *([1] * (gsum.ndim - 1)))
                p.add_(upd, alpha=-cfg.lr)
            steps += 1
    acc = _stacked_accuracy((W1, b1, W2, b2), data.X_test, data.y_test)
    q = cfg.batch_size / n
    eps_cache = {s: _epsilon(cfg, s, q, steps) for s in set(cfg.sigmas)}
    mean_loss = torch.where(loss_n > 0, loss_sum / loss_n.clamp_min(1), torch.tensor(math.nan, dtype=torch.float64))
    curves = [tuple(mean_loss[:, r].tolist()) for r in range(R)]  # per run: mean loss of each epoch
    records = tuple(
        {"task": data.name, "mode": cfg.mode, "seed": seed, "sigma": float(s), "C": c, "private": c is not None,
         "accuracy": float(a), "epsilon": eps_cache[s][0] if c is not None else math.inf,
         "accountant": eps_cache[s][1] if c is not None else "none", "steps": steps,
         "sample_rate": q, "delta": cfg.delta,
         "fraction_clipped": (
             float(clipped[r] / seen[r])
             if c is not None and seen[r] > 0 else math.nan),
         "train_loss": curves[r][-1],
         "loss_curve": curves[r]}
        for r, ((seed, s, c), a) in enumerate(zip(runs, acc)))
    params = (W1, b1, W2, b2) if keep_params else None
    losses = torch.stack(step_loss, 1).numpy() if step_loss else np.zeros((R, 0))
    return SweepResult(records, time.perf_counter() - start, cfg, data.name, params, losses)


def _stacked_accuracy(params, X: Tensor, y: Tensor) -> list[float]:
    """Accuracy of every stacked run ``(W1 (R, H, d), b1 (R, H), W2 (R, K, H), b2 (R, K))`` on ``X``, ``y``."""
    W1, b1, W2, b2 = params
    with torch.no_grad():
        Xt = X.to(W1.dtype).expand(W1.shape[0], *X.shape)  # (R, n, d)
        zt = torch.baddbmm(b2.unsqueeze(1), torch.baddbmm(b1.unsqueeze(1), Xt, W1.transpose(1, 2)).clamp_min(0),
                           W2.transpose(1, 2))  # (R, n, K)
        return (zt.argmax(-1) == y).to(torch.float64).mean(1).tolist()


def reference_run(data: CliffData, config: CliffConfig, *, seed: int, sigma: float, max_grad_norm: float | None):
    """One run through :func:`privlab.dpsgd.train` (``method="fast"``): ``(test accuracy, model)``.

    The same initialisation (:func:`init_params`), batches and noise as the batched engine.
    """
    d = data.X_train.shape[1]
    params, g = init_params(seed, d, config.hidden, data.n_classes, dtype=config.dtype)
    model = MLP(d, config.hidden, data.n_classes).to(config.dtype)
    with torch.no_grad():
        for p, v in zip(model.parameters(), params, strict=True):
            p.copy_(v)
    dcfg = DPSGDConfig(noise_multiplier=sigma if max_grad_norm is not None else 0.0, max_grad_norm=max_grad_norm,
                       epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, sampler=config.sampler,
                       accountant=None, progress=False, method="fast")
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, data.X_train.to(config.dtype), data.y_train, loss_fn=ce, config=dcfg, generator=g)
    with torch.no_grad():
        acc = (model(data.X_test.to(config.dtype)).argmax(-1) == data.y_test).double().mean().item()
    return acc, model


def summarize(result_or_records):
    """Mean, std and count of accuracy per ``(C, sigma)``, with epsilon and accuracy relative to the baseline."""
    recs = result_or_records.records if isinstance(result_or_records, SweepResult) else result_or_records
    df = pd.DataFrame(list(recs))
    base = df[~df.private]["accuracy"].mean()
    dp = df[df.private]
    out = dp.groupby(["C", "sigma"]).agg(accuracy=("accuracy", "mean"), std=("accuracy", "std"),
                                         runs=("accuracy", "size"), epsilon=("epsilon", "first")).reset_index()
    out["relative"] = out["accuracy"] / base
    return out


def cliffs(records, *, fraction: float = 0.5) -> list[tuple[float, float]]:
    """The published cliff rule: configurations ``(C, sigma)`` whose mean accuracy is below ``fraction`` x baseline."""
    table = summarize(records)
    return [(r.C, r.sigma) for r in table.itertuples() if r.relative < fraction]


def validate(result: SweepResult) -> dict[str, bool]:
    """The published validation script's checks on a sweep (each ``True`` when it passes)."""
    cfg, recs = result.config, result.records
    dp = [r for r in recs if r["private"]]
    base = [r["accuracy"] for r in recs if not r["private"]]
    noisy = sorted({r["sigma"] for r in dp if r["sigma"] > 0})
    eps = [next(r["epsilon"] for r in dp if r["sigma"] == s) for s in noisy]
    table = summarize(result)
    lo, hi = min(noisy), max(noisy)
    return {
        "dp_run_count": len(dp) == len(cfg.sigmas) * len(cfg.clip_norms) * len(cfg.seeds),
        "baseline_run_count": len(base) == (len(cfg.seeds) if cfg.baselines else 0),
        "accuracies_in_unit_interval": all(0.0 <= r["accuracy"] <= 1.0 for r in recs),
        "epsilon_decreasing_in_sigma": all(a > b for a, b in zip(eps, eps[1:])),
        "baseline_at_least_0.5": bool(base) and float(np.mean(base)) >= 0.5,
        "tradeoff_direction": float(table[table.sigma == lo].accuracy.mean())
        >= float(table[table.sigma == hi].accuracy.mean()),
    }
