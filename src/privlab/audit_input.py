r"""Auditing the whole DP-SGD pipeline: an input-space canary trained through :func:`privlab.dpsgd.train`.

:mod:`privlab.audit` replays a gradient canary through the optimizer's stages;
this module audits the *training entry point itself*. A crafted example, the
canary :math:`(x_c, y_c)` with :math:`x_c = a\,e_{d}` on a feature no other
example uses and label :math:`y_c = 1`, is inserted into the data set (world
"in", :math:`N + 1` rows) or not (world "out", :math:`N` rows); each world is
trained ``n_runs`` times with :func:`privlab.dpsgd.train` (its sampler, its
per-example gradients, its :class:`~privlab.dpsgd.DPOptimizer` or a planted-bug
subclass), always from the same initialisation. The auditor sees only the
final model and scores it by the canary's loss, calibrated by the loss of a
reference input, the canary with its crafted feature removed (:math:`x_0 = 0`):
:math:`s = \ell(f_\theta(x_0), y_c) - \ell(f_\theta(x_c), y_c)` (difficulty
calibration, Watson et al. 2022, arXiv:2111.08440), which cancels the drift of
the shared bias. A threshold chosen on separate pilot runs
turns the scores into true and false positives, and (Jagielski et al. 2020,
arXiv:2006.07709; Nasr et al. 2021, arXiv:2101.04535)

.. math::
    \varepsilon \;\ge\; \ln\frac{\underline{\mathrm{TPR}} - \delta}{\overline{\mathrm{FPR}}}

with Clopper-Pearson bounds (:func:`privlab.audit_mechanisms.epsilon_lower_bound`).
Because the bound covers sampling, clipping, noise and the optimizer as
``train`` runs them, a bug anywhere in the pipeline can show.

How many runs: :func:`runs_for_power` returns the smallest :math:`R` for which
an attack with given true and false positive rates yields, with counts
:math:`z` standard deviations on the unlucky side, a bound above a target
:math:`\varepsilon` plus a margin. With perfect separation the bound is about
:math:`\ln(R / \ln(2/\alpha))`, so no audit of :math:`R` runs per world can
certify more than that.

Used in: chapter 11.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privlab._validate import check_delta, check_int, check_positive, check_probability
from privlab.audit import DPSGDAuditResult, audit_result
from privlab.audit_mechanisms import choose_threshold, epsilon_lower_bound
from privlab.dpsgd import DPOptimizer, DPSGDConfig, PoissonAccountingWarning, train

__all__ = ["InputCanaryTask", "audit_dpsgd_input", "choose_threshold", "gaussian_test_runs", "input_canary_task",
           "runs_for_power"]


@dataclass(frozen=True)
class InputCanaryTask:
    """Background data ``X (N, d)`` (last feature 0), labels ``y (N,)`` and the canary ``(canary_x, canary_y)``."""

    X: torch.Tensor
    y: torch.Tensor
    canary_x: torch.Tensor
    canary_y: torch.Tensor

    def data(self, include: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set of world "in" (canary appended as the last row) or "out"."""
        if not include:
            return self.X, self.y
        return torch.cat([self.X, self.canary_x[None]]), torch.cat([self.y, self.canary_y[None]])


def input_canary_task(*, n: int = 40, d: int = 4, canary_scale: float = 10.0,
                      generator: torch.Generator) -> InputCanaryTask:  # fmt: skip
    r"""A logistic-regression task and a crafted canary on an unused feature.

    Background rows: :math:`x \sim \mathcal{N}(0, I_{d-1})` padded with a 0 feature,
    :math:`y = \mathbb{1}[x_1 > 0]`. The canary: :math:`x_c = a\,e_d`, :math:`y_c = 1`,
    a point the background gives the model no reason to fit.

    >>> t = input_canary_task(n=5, d=3, generator=torch.Generator().manual_seed(0))
    >>> tuple(t.X.shape), t.canary_x.tolist(), float(t.X[:, -1].abs().sum())
    ((5, 3), [0.0, 0.0, 10.0], 0.0)

    Used in: chapter 11.
    """
    n, d = check_int("n", n), check_int("d", d, minimum=2)
    a = check_positive("canary_scale", canary_scale)
    x = torch.randn(n, d - 1, generator=generator)
    X = torch.cat([x, torch.zeros(n, 1)], dim=1)
    canary = torch.zeros(d)
    canary[-1] = a
    return InputCanaryTask(X=X, y=(x[:, 0] > 0).float(), canary_x=canary, canary_y=torch.tensor(1.0))


def _bce(out, t):
    return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), t, reduction="none")


def _score(task: InputCanaryTask, include: bool, cfg: DPSGDConfig, cls: type[DPOptimizer], seed: int) -> float:
    """Train once from the zero initialisation; return the canary's calibrated loss score (module docstring)."""
    model = nn.Linear(task.X.shape[1], 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    X, y = task.data(include)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoissonAccountingWarning)
        train(model, X, y, loss_fn=_bce, config=cfg, generator=torch.Generator().manual_seed(seed),
              dp_optimizer_cls=cls)
    with torch.no_grad():
        x = torch.stack([torch.zeros_like(task.canary_x), task.canary_x])  # the reference, then the canary
        loss_ref, loss_canary = _bce(model(x), task.canary_y.expand(2)).tolist()
    return loss_ref - loss_canary


def runs_for_power(*, tpr: float, fpr: float, epsilon: float, delta: float, alpha: float = 0.05,
                   margin: float = 0.5, z: float = 3.0, max_runs: int = 10**7) -> int:  # fmt: skip
    r"""The smallest runs per world :math:`R` whose bound exceeds ``epsilon + margin`` with pessimistic counts.

    The counts are :math:`\lfloor R\,\mathrm{TPR} - z\sqrt{R\,\mathrm{TPR}(1-\mathrm{TPR})}\rfloor`
    true and :math:`\lceil R\,\mathrm{FPR} + z\sqrt{R\,\mathrm{FPR}(1-\mathrm{FPR})}\rceil` false positives
    (:math:`z` binomial standard deviations on the unlucky side), turned into a bound by
    :func:`privlab.audit_mechanisms.epsilon_lower_bound`.

    Raises:
        ValueError: if no :math:`R \le` ``max_runs`` suffices (the attack is too weak).

    >>> runs_for_power(tpr=1.0, fpr=0.0, epsilon=1.0, delta=1e-5, margin=0.5)   # ln(2/alpha) e^1.5 is 16.6
    19

    Used in: chapter 11.
    """
    tpr = check_probability("tpr", tpr, open_low=False)
    fpr = check_probability("fpr", fpr, open_low=False)
    epsilon = check_positive("epsilon", epsilon)
    delta = check_delta(delta, allow_zero=True)
    check_positive("z", z)

    def ok(r: int) -> bool:
        tp = max(0, math.floor(r * tpr - z * math.sqrt(r * tpr * (1 - tpr))))
        fp = min(r, math.ceil(r * fpr + z * math.sqrt(r * fpr * (1 - fpr))))
        return float(epsilon_lower_bound(tp, fp, r, r, delta=delta, alpha=alpha)) > epsilon + margin

    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > max_runs:
            raise ValueError(f"no number of runs up to {max_runs} reaches epsilon {epsilon} + {margin} "
                             f"with tpr={tpr}, fpr={fpr}")
    lo = hi // 2
    while hi - lo > 1:  # the bound grows with R at fixed rates (up to rounding)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def gaussian_test_runs(mu: float, *, epsilon: float, delta: float, alpha: float = 0.05, margin: float = 0.5,
                       z: float = 3.0, max_runs: int = 10**7) -> int:  # fmt: skip
    r"""Runs per world for a threshold test between :math:`\mathcal{N}(\mu, 1)` ("in") and :math:`\mathcal{N}(0, 1)` ("out").

    The minimum of :func:`runs_for_power` over thresholds :math:`t \in [0, \mu + 6]` (step 0.05), with
    :math:`\mathrm{TPR} = \Phi(\mu - t)`, :math:`\mathrm{FPR} = \Phi(-t)`.

    >>> gaussian_test_runs(4.0, epsilon=2.0, delta=1e-5) < gaussian_test_runs(3.0, epsilon=2.0, delta=1e-5)
    True

    Used in: chapter 11.
    """
    from scipy.stats import norm

    mu = check_positive("mu", mu)
    best = None
    for t in np.arange(0.0, mu + 6.0, 0.05):
        try:
            r = runs_for_power(tpr=float(norm.sf(t - mu)), fpr=float(norm.sf(t)), epsilon=epsilon, delta=delta,
                               alpha=alpha, margin=margin, z=z, max_runs=max_runs if best is None else best)
        except ValueError:
            continue
        best = r if best is None else min(best, r)
    if best is None:
        raise ValueError(f"no number of runs up to {max_runs} reaches epsilon {epsilon} + {margin} at mu = {mu}")
    return best


def audit_dpsgd_input(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, epochs: int, delta: float, n_runs: int, generator: torch.Generator,
    sampler: str = "poisson", lr: float = 1.0, task: InputCanaryTask | None = None, n_pilot: int | None = None,
    alpha: float = 0.05, accountant: str = "pld",
) -> DPSGDAuditResult:  # fmt: skip
    r"""Audit :func:`privlab.dpsgd.train` with an input-space canary, ``n_runs`` trainings per world.

    The claim is the accountant's :math:`\varepsilon(\sigma, q, T, \delta)` for Poisson
    DP-SGD with :math:`T = \text{epochs} \cdot \mathrm{round}(1/q)`, whatever the pipeline runs.

    Args:
        dp_optimizer_cls: :class:`~privlab.dpsgd.DPOptimizer` or a planted-bug subclass.
        noise_multiplier: :math:`\sigma > 0`.
        max_grad_norm: :math:`C > 0`.
        sample_rate: :math:`q \in (0, 1]` (``DPSGDConfig.sample_rate``).
        epochs: passes over the data.
        delta: :math:`\delta \in (0, 1)`.
        n_runs: trainings per world for the bound (size it with :func:`runs_for_power`).
        generator: ``torch.Generator``; draws the task (if not given) and every run's seed.
        sampler: ``"poisson"`` or ``"shuffle"`` (passed to ``train``).
        lr: SGD learning rate.
        task: an :class:`InputCanaryTask`, default ``input_canary_task(generator=generator)``.
        n_pilot: pilot trainings per world to choose the threshold, default ``max(10, n_runs // 2)``.
        alpha: the bound holds with probability :math:`\ge 1 - \alpha`.
        accountant: ``"pld"`` or ``"rdp"``.

    Returns:
        :class:`privlab.audit.DPSGDAuditResult`.

    Raises:
        ValueError: naming the bad argument.

    Reference: Jagielski et al. 2020 (arXiv:2006.07709); Nasr et al. 2021 (arXiv:2101.04535).

    Used in: chapter 11.
    """
    from privlab.accounting import epsilon

    sigma = check_positive("noise_multiplier", noise_multiplier)
    c = check_positive("max_grad_norm", max_grad_norm)
    q = check_probability("sample_rate", sample_rate)
    epochs, n_runs = check_int("epochs", epochs), check_int("n_runs", n_runs)
    delta = check_delta(delta)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    n_pilot = max(10, n_runs // 2) if n_pilot is None else check_int("n_pilot", n_pilot)
    task = input_canary_task(generator=generator) if task is None else task
    steps = epochs * max(1, round(1 / q))
    eps_claim = float(epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant))
    cfg = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, epochs=epochs, lr=lr,
                      sampler=sampler, accountant=None, progress=False)  # validates sampler, lr
    seeds = torch.randint(0, 2**62, (2, 2, max(n_pilot, n_runs)), generator=generator).tolist()

    def scores(stage: int, include: bool, n: int) -> np.ndarray:
        return np.array([_score(task, include, cfg, dp_optimizer_cls, s) for s in seeds[stage][int(include)][:n]])

    threshold = choose_threshold(scores(0, True, n_pilot), scores(0, False, n_pilot), delta=delta, alpha=alpha)
    return audit_result(scores(1, True, n_runs), scores(1, False, n_runs), threshold, epsilon_accountant=eps_claim,
                        alpha=alpha, noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, sampler=sampler,
                        optimizer=dp_optimizer_cls.__name__)
