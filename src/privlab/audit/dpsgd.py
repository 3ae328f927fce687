r"""Auditing DP-SGD with many runs: a gradient canary in gradient space, or an input canary through ``train``.

**Many runs** (Jagielski, Ullman, Oprea 2020, arXiv:2006.07709; Nasr et al.
2021, arXiv:2101.04535). Train :math:`R` times with a canary and :math:`R`
times without it, score every run, threshold the score: with :math:`\mathrm{TP}`
runs with the canary and :math:`\mathrm{FP}` runs without it above the
threshold, an :math:`(\varepsilon, \delta)`-DP training satisfies

.. math::
    \varepsilon \;\ge\; \ln\frac{\underline{\mathrm{TPR}} - \delta}{\overline{\mathrm{FPR}}}

with Clopper-Pearson bounds :math:`\underline{\mathrm{TPR}}, \overline{\mathrm{FPR}}`
(:func:`privlab.audit.stats.epsilon_lower_bound`). The threshold is chosen
on separate pilot runs (:func:`privlab.audit.stats.pilot_then_main`), so the
bound holds with probability :math:`\ge 1-\alpha`.

**The gradient canary** (:func:`audit_dpsgd`). A *Dirac gradient canary* (Nasr et al. 2023, arXiv:2302.07956):
an example whose gradient is :math:`a\,e_0`, a fixed direction no other example
touches (the other gradients are orthogonal to it, the worst case for privacy),
with :math:`a` = ``canary_norm`` :math:`> C` so that clipping matters. The run
is DP-SGD in gradient space, vectorised over the :math:`R` runs and the
:math:`T` steps, and it goes through the optimizer's own named stages
(:meth:`~privlab.dpsgd.DPOptimizer.clip_factors`, ``add_noise`` with its
``noise_std``, ``scale``), so a bug planted by subclassing
:class:`privlab.dpsgd.DPOptimizer` (:mod:`privlab.audit.planted`) is audited
exactly as it would train. The auditor sees every update :math:`\tilde g_t`
(white box) and scores a run by the log-likelihood ratio of the *claimed*
algorithm, with :math:`u_t = qN\,\tilde g_t[0]` and :math:`s = \sigma C`,

.. math::
    \text{Poisson: } \sum_t \ln\bigl(1 - q + q\, e^{(C u_t - C^2/2)/s^2}\bigr),
    \qquad \text{shuffle: } \sum_{\text{epochs}} \ln \tfrac{1}{T_e} \sum_{t \in \text{epoch}} e^{(C u_t - C^2/2)/s^2}.

**The input canary** (:func:`audit_dpsgd_input`) audits the *training entry
point itself*. A crafted example, the canary :math:`(x_c, y_c)` with
:math:`x_c = a\,e_{d}` on a feature no other example uses and label
:math:`y_c = 1`, is inserted into the data set (world "in", :math:`N + 1` rows)
or not (world "out", :math:`N` rows); each world is trained ``n_runs`` times
with :func:`privlab.dpsgd.train` (its sampler, its per-example gradients, its
:class:`~privlab.dpsgd.DPOptimizer` or a planted-bug subclass), always from the
same initialisation. The auditor sees only the final model and scores it by
the canary's loss, calibrated by the loss of a reference input, the canary
with its crafted feature removed (:math:`x_0 = 0`):
:math:`s = \ell(f_\theta(x_0), y_c) - \ell(f_\theta(x_c), y_c)` (difficulty
calibration, Watson et al. 2022, arXiv:2111.08440), which cancels the drift of
the shared bias. Because the bound covers sampling, clipping, noise and the
optimizer as ``train`` runs them, a bug anywhere in the pipeline can show.
Size the runs with :func:`privlab.audit.stats.runs_for_power`: with perfect
separation the bound is about :math:`\ln(R / \ln(2/\alpha))`, so no audit of
:math:`R` runs per world can certify more than that.

Used in: chapter 12.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privlab._validate import check_delta, check_int, check_positive, check_probability, check_torch_generator
from privlab.accounting import dpsgd_epsilon
from privlab.audit.stats import DPSGDAuditResult, pilot_then_main
from privlab.dpsgd import SAMPLERS, DPOptimizer, DPSGDConfig, PoissonAccountingWarning, steps_per_epoch, train
from privlab.losses import bce_losses

__all__ = [
    "InputCanaryTask", "audit_dpsgd", "audit_dpsgd_input", "canary_presence", "canary_scores", "check_dpsgd_claim",
    "check_sampler", "gradient_optimizer", "gradient_updates", "input_canary_task",
]  # fmt: skip


def check_sampler(sampler: str) -> str:
    """``sampler`` if it is one of :data:`privlab.dpsgd.SAMPLERS`, else ``ValueError``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return sampler


def check_dpsgd_claim(*, noise_multiplier: float, max_grad_norm: float, sample_rate: float, steps: int,
                      delta: float, generator: torch.Generator, accountant: str) -> tuple:  # fmt: skip
    r"""Validate a DP-SGD audit's setting and return it with the accountant's claim.

    The claim is :math:`\varepsilon(\sigma, q, T, \delta)` of Poisson-sampled DP-SGD
    (:func:`privlab.accounting.dpsgd_epsilon`), whatever the audited implementation really runs.

    Returns:
        ``(sigma, C, q, T, delta, epsilon_claim)``.

    Raises:
        ValueError: naming the bad argument (a ``generator`` that is not a ``torch.Generator`` included).
    """
    sigma = check_positive("noise_multiplier", noise_multiplier)
    c = check_positive("max_grad_norm", max_grad_norm)
    q = check_probability("sample_rate", sample_rate)
    steps = check_int("steps", steps)
    delta = check_delta(delta)
    check_torch_generator(generator)
    eps_claim = float(dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta,
                                    accountant=accountant))
    return sigma, c, q, steps, delta, eps_claim


def canary_presence(shape_runs: tuple, *, steps: int, sample_rate: float, sampler: str,
                    included: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(T, *runs) 0/1: is the canary in step t's batch (given it is in the data set: ``included``)."""
    if sampler == "poisson":
        hit = torch.rand((steps, *shape_runs), generator=generator, dtype=torch.float64) < sample_rate
    else:
        per_epoch = steps_per_epoch(sample_rate)
        epochs = math.ceil(steps / per_epoch)
        pos = torch.randint(0, per_epoch, (epochs, *shape_runs), generator=generator)
        t = torch.arange(steps)
        hit = (t % per_epoch).view(steps, *[1] * len(shape_runs)) == pos[t // per_epoch]
    return (hit & included).to(torch.float64)


def _background_counts(presence: torch.Tensor, *, present: bool, batch_size: int, sample_rate: float,
                       sampler: str, generator: torch.Generator) -> torch.Tensor:
    """(T, R) number of background examples in each batch; the data set has ``N = b * round(1/q)`` examples with
    the canary, ``N - 1`` without it (add/remove neighbours)."""
    per_epoch = steps_per_epoch(sample_rate)
    n_bg = batch_size * per_epoch - 1  # background examples (both worlds)
    if sampler == "poisson":
        return torch.binomial(torch.full(presence.shape, float(n_bg), dtype=torch.float64),
                              torch.full(presence.shape, sample_rate, dtype=torch.float64), generator=generator)
    if present:  # fixed-size batches; the canary takes one slot of its batch
        return batch_size - presence
    counts = torch.full(presence.shape, float(batch_size), dtype=torch.float64)
    last = torch.arange(presence.shape[0]) % per_epoch == per_epoch - 1
    counts[last] = float(n_bg - (per_epoch - 1) * batch_size)  # the short last batch of N - 1 examples
    return counts


def gradient_updates(dp: DPOptimizer, presence: torch.Tensor, canary_norm: float,
                     background: torch.Tensor | None = None) -> torch.Tensor:
    """Updates, unscaled by the lot size, through the optimizer's clip, noise and scale stages.

    The canary's gradient is ``canary_norm * e_0``; each background example's is ``-C e_1`` (``background``
    holds their counts per batch). Returns ``(T, R)`` (canary coordinate) or ``(T, R, 2)`` with background.
    """
    c = dp.max_grad_norm
    norms = torch.full_like(presence, canary_norm)
    factors = dp.clip_factors(norms.reshape(-1)).reshape(presence.shape).to(torch.float64)
    canary = presence * factors * canary_norm  # the canary's clipped gradient, where it is in the batch
    if background is None:
        summed = canary
    else:
        f_bg = dp.clip_factors(torch.full_like(presence, c).reshape(-1)).reshape(presence.shape).to(torch.float64)
        summed = torch.stack([canary, -background * f_bg * c], dim=-1)
    noisy = dp.add_noise([summed])
    return dp.scale(noisy)[0] * dp.expected_batch_size  # the auditor knows qN


def canary_scores(updates: torch.Tensor, *, noise_multiplier: float, max_grad_norm: float, sample_rate: float,
                  sampler: str, batch_size: int | None = None) -> np.ndarray:
    r"""Log-likelihood-ratio score of each run from its updates ``(T, R)`` or ``(T, R, 2)``; higher: "canary in".

    Uses the *claimed* noise :math:`s = \sigma C` (see the module docstring). For ``"shuffle"`` with the
    background coordinate, each epoch's last batch adds the evidence of its size (``b`` with the canary,
    ``b - 1`` without it).
    """
    s2 = (noise_multiplier * max_grad_norm) ** 2
    c = max_grad_norm
    u0 = updates[..., 0] if updates.ndim == 3 else updates
    log_lr = (c * u0 - c * c / 2) / s2  # per step, canary in the batch vs not
    if check_sampler(sampler) == "poisson":
        q = sample_rate
        score = torch.logaddexp(torch.full_like(log_lr, math.log1p(-q)), log_lr + math.log(q)).sum(0)
    else:
        per_epoch = steps_per_epoch(sample_rate)
        steps = log_lr.shape[0]
        score = torch.zeros(log_lr.shape[1:], dtype=log_lr.dtype)
        for start in range(0, steps, per_epoch):
            block = log_lr[start:start + per_epoch]
            score = score + torch.logsumexp(block, 0) - math.log(block.shape[0])
            if updates.ndim == 3 and block.shape[0] == per_epoch and batch_size is not None:
                u1 = updates[start + per_epoch - 1, ..., 1]  # last batch: b background (in) vs b - 1 (out)
                score = score - (c * u1 + (batch_size - 0.5) * c * c) / s2
    return score.numpy()


def gradient_optimizer(cls, *, noise_multiplier, max_grad_norm, batch_size, generator) -> DPOptimizer:
    """An instance of ``cls`` (a :class:`~privlab.dpsgd.DPOptimizer`) over one dummy parameter, lot size ``batch_size``."""
    param = torch.zeros(1, requires_grad=True)
    return cls(torch.optim.SGD([param], lr=1.0), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
               expected_batch_size=float(batch_size), generator=generator)



def audit_dpsgd(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, steps: int, delta: float, n_runs: int, generator: torch.Generator,
    sampler: str = "poisson", accountant: str = "pld", canary_norm: float | None = None, alpha: float = 0.05,
    n_pilot: int | None = None, batch_size: int = 10,
) -> DPSGDAuditResult:  # fmt: skip
    r"""Audit DP-SGD with a Dirac gradient canary over ``n_runs`` runs with and without it.

    The accountant's claim is :math:`\varepsilon(\sigma, q, T, \delta)` of Poisson-sampled
    DP-SGD (:func:`check_dpsgd_claim`), whatever ``sampler`` really runs.

    Args:
        dp_optimizer_cls: :class:`privlab.dpsgd.DPOptimizer` or a subclass (a planted bug).
        noise_multiplier: :math:`\sigma > 0` (claimed).
        max_grad_norm: :math:`C > 0`.
        sample_rate: :math:`q \in (0, 1]`; an epoch is :math:`\mathrm{round}(1/q)` steps.
        steps: :math:`T`.
        delta: :math:`\delta \in (0, 1)`.
        n_runs: :math:`R` runs per world (plus ``n_pilot`` pilot runs to choose the threshold).
        generator: ``torch.Generator``, the only source of randomness.
        sampler: ``"poisson"`` or ``"shuffle"`` (what the implementation actually does).
        accountant: ``"pld"`` or ``"rdp"``.
        canary_norm: the canary gradient's norm, default :math:`10 C`.
        alpha: the bound holds with probability :math:`\ge 1 - \alpha`.
        n_pilot: pilot runs per world, default ``max(200, n_runs // 4)``.
        batch_size: :math:`b = qN \ge 2`; the data set holds :math:`N = b\,\mathrm{round}(1/q)` examples
            with the canary (:math:`N - 1` background examples of gradient :math:`-C e_1`, known to the
            auditor), :math:`N - 1` without it.

    Returns:
        :class:`DPSGDAuditResult`.

    Raises:
        ValueError: naming the bad argument.

    Reference: Jagielski et al. 2020 (arXiv:2006.07709); Nasr et al. 2021 (arXiv:2101.04535), 2023 (arXiv:2302.07956).

    >>> r = audit_dpsgd(noise_multiplier=1.0, sample_rate=0.1, steps=10, delta=1e-5, n_runs=500,
    ...                 generator=torch.Generator().manual_seed(0))
    >>> r.caught
    False

    Used in: chapter 12.
    """
    n_runs = check_int("n_runs", n_runs)
    sigma, c, q, steps, delta, eps_claim = check_dpsgd_claim(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, sample_rate=sample_rate, steps=steps,
        delta=delta, generator=generator, accountant=accountant)
    check_sampler(sampler)
    a = 10 * c if canary_norm is None else check_positive("canary_norm", canary_norm)
    n_pilot = max(200, n_runs // 4) if n_pilot is None else check_int("n_pilot", n_pilot)
    b = check_int("batch_size", batch_size, minimum=2)
    dp = gradient_optimizer(dp_optimizer_cls, noise_multiplier=sigma, max_grad_norm=c, batch_size=b,
                            generator=generator)

    def scores(stage: str, present: bool, n: int) -> np.ndarray:
        included = torch.full((n,), present, dtype=torch.bool)
        pres = canary_presence((n,), steps=steps, sample_rate=q, sampler=sampler, included=included,
                               generator=generator)
        bg = _background_counts(pres, present=present, batch_size=b, sample_rate=q, sampler=sampler,
                                generator=generator)
        upd = gradient_updates(dp, pres, a, bg)
        return canary_scores(upd, noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, sampler=sampler,
                             batch_size=b)

    return pilot_then_main(scores, n_pilot=n_pilot, n_runs=n_runs, epsilon_accountant=eps_claim, delta=delta,
                           alpha=alpha, midpoints=False, noise_multiplier=sigma, sample_rate=q, steps=steps,
                           sampler=sampler, optimizer=dp_optimizer_cls.__name__)


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

    Used in: chapter 12.
    """
    n, d = check_int("n", n), check_int("d", d, minimum=2)
    a = check_positive("canary_scale", canary_scale)
    x = torch.randn(n, d - 1, generator=generator)
    X = torch.cat([x, torch.zeros(n, 1)], dim=1)
    canary = torch.zeros(d)
    canary[-1] = a
    return InputCanaryTask(X=X, y=(x[:, 0] > 0).float(), canary_x=canary, canary_y=torch.tensor(1.0))


def _score(task: InputCanaryTask, include: bool, cfg: DPSGDConfig, cls: type[DPOptimizer], seed: int) -> float:
    """Train once from the zero initialisation; return the canary's calibrated loss score (module docstring)."""
    model = nn.Linear(task.X.shape[1], 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    X, y = task.data(include)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoissonAccountingWarning)
        train(model, X, y, loss_fn=bce_losses, config=cfg, generator=torch.Generator().manual_seed(seed),
              dp_optimizer_cls=cls)
    with torch.no_grad():
        x = torch.stack([torch.zeros_like(task.canary_x), task.canary_x])  # the reference, then the canary
        loss_ref, loss_canary = bce_losses(model(x), task.canary_y.expand(2)).tolist()
    return loss_ref - loss_canary



def audit_dpsgd_input(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, epochs: int, delta: float, n_runs: int, generator: torch.Generator,
    sampler: str = "poisson", lr: float = 1.0, task: InputCanaryTask | None = None, n_pilot: int | None = None,
    alpha: float = 0.05, accountant: str = "pld",
) -> DPSGDAuditResult:  # fmt: skip
    r"""Audit :func:`privlab.dpsgd.train` with an input-space canary, ``n_runs`` trainings per world.

    The claim is the accountant's :math:`\varepsilon(\sigma, q, T, \delta)` for Poisson
    DP-SGD with :math:`T = \text{epochs} \cdot \mathrm{round}(1/q)`, whatever the pipeline runs.
    ``train`` with a ``sample_rate`` divides by :math:`q` ``len(X)``, so the two worlds
    (:math:`N` and :math:`N + 1` rows) use denominators that differ by a factor
    :math:`(N+1)/N`: the audit measures the pipeline with that size leak, which can
    only help the auditor, so the lower bound stays valid for the pipeline as run.

    Args:
        dp_optimizer_cls: :class:`~privlab.dpsgd.DPOptimizer` or a planted-bug subclass.
        noise_multiplier: :math:`\sigma > 0`.
        max_grad_norm: :math:`C > 0`.
        sample_rate: :math:`q \in (0, 1]` (``DPSGDConfig.sample_rate``).
        epochs: passes over the data.
        delta: :math:`\delta \in (0, 1)`.
        n_runs: trainings per world for the bound (size it with :func:`privlab.audit.stats.runs_for_power`).
        generator: ``torch.Generator``; draws the task (if not given) and every run's seed.
        sampler: ``"poisson"`` or ``"shuffle"`` (passed to ``train``).
        lr: SGD learning rate.
        task: an :class:`InputCanaryTask`, default ``input_canary_task(generator=generator)``.
        n_pilot: pilot trainings per world to choose the threshold, default ``max(10, n_runs // 2)``.
        alpha: the bound holds with probability :math:`\ge 1 - \alpha`.
        accountant: ``"pld"`` or ``"rdp"``.

    Returns:
        :class:`privlab.audit.stats.DPSGDAuditResult`.

    Raises:
        ValueError: naming the bad argument.

    Reference: Jagielski et al. 2020 (arXiv:2006.07709); Nasr et al. 2021 (arXiv:2101.04535).

    Used in: chapter 12.
    """
    epochs, n_runs = check_int("epochs", epochs), check_int("n_runs", n_runs)
    q = check_probability("sample_rate", sample_rate)
    sigma, c, q, steps, delta, eps_claim = check_dpsgd_claim(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, sample_rate=q,
        steps=epochs * steps_per_epoch(q), delta=delta, generator=generator, accountant=accountant)
    n_pilot = max(10, n_runs // 2) if n_pilot is None else check_int("n_pilot", n_pilot)
    task = input_canary_task(generator=generator) if task is None else task
    cfg = DPSGDConfig(noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, epochs=epochs, lr=lr,
                      sampler=sampler, accountant=None, progress=False)  # validates sampler, lr
    seeds = torch.randint(0, 2**62, (2, 2, max(n_pilot, n_runs)), generator=generator).tolist()

    def scores(stage: str, include: bool, n: int) -> np.ndarray:
        run_seeds = seeds[stage == "main"][int(include)][:n]
        return np.array([_score(task, include, cfg, dp_optimizer_cls, s) for s in run_seeds])

    return pilot_then_main(scores, n_pilot=n_pilot, n_runs=n_runs, epsilon_accountant=eps_claim, delta=delta,
                           alpha=alpha, midpoints=True, noise_multiplier=sigma, sample_rate=q, steps=steps,
                           sampler=sampler, optimizer=dp_optimizer_cls.__name__)
