r"""Auditing DP-SGD in one training run (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846).

:math:`m` canaries, each included independently with probability 1/2, in
*one* training run; guess "in" for the :math:`k_+` highest scores and "out"
for the :math:`k_-` lowest; :math:`v` correct of :math:`r = k_+ + k_-`
guesses. Their main result for :math:`(\varepsilon, \delta)`-DP bounds the
tail of :math:`v`; the p-value is their Appendix D algorithm
(``p_value_DP_audit``, arXiv:2305.08846v1 pp. 45-46), which
:func:`one_run_p_value` reproduces line for line, and
:func:`one_run_epsilon_lower_bound` inverts it as their ``get_eps_audit`` does.
The run is the gradient-space DP-SGD of :mod:`privlab.audit.dpsgd`, one
Dirac canary per coordinate.

Used in: chapter 12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom

from privlab._validate import check_delta, check_int, check_positive, check_probability
from privlab.audit.dpsgd import (
    canary_presence,
    canary_scores,
    check_dpsgd_claim,
    check_sampler,
    gradient_optimizer,
    gradient_updates,
)
from privlab.dpsgd import DPOptimizer

__all__ = ["OneRunAuditResult", "one_run_audit_dpsgd", "one_run_epsilon_lower_bound", "one_run_p_value"]


def one_run_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    r"""Upper bound on :math:`\Pr[\text{at least } v \text{ of } r \text{ guesses correct}]` under :math:`(\varepsilon, \delta)`-DP.

    With :math:`p = e^\varepsilon / (1 + e^\varepsilon)`, the bound of Steinke, Nasr, Jagielski 2023
    (arXiv:2305.08846v1) for :math:`(\varepsilon, \delta)`-DP as their Appendix D computes it
    (``p_value_DP_audit``, pp. 45-46; the approximate-DP tail bound of their Section 5, Corollary 5.4):

    .. math::
        \Pr[W \ge v] \le \Pr[\mathrm{Bin}(r, p) \ge v]
        + 2 m \delta \max_{1 \le i \le v} \tfrac{1}{i} \Pr[v - i \le \mathrm{Bin}(r, p) < v].

    >>> round(one_run_p_value(m=100, r=100, v=50, epsilon=0.0, delta=0.0), 3)
    0.54

    Used in: chapter 12.
    """
    m, r = check_int("m", m), check_int("r", r)
    v = check_int("v", v, minimum=0)
    if not v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    delta = check_delta(delta, allow_zero=True)
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(v - 1, r, p))
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    pmf = binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v - i], i = 1..v
    alpha_ = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + alpha_ * delta * 2 * m, 1.0)


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    r"""The largest :math:`\varepsilon` that :func:`one_run_p_value` rejects at level ``beta`` (bisection).

    Holds with probability :math:`\ge 1 - \beta` (Steinke, Nasr, Jagielski 2023, arXiv:2305.08846v1,
    Appendix D, ``get_eps_audit``; bisection to 40 steps instead of their 30).

    >>> round(one_run_epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0), 2)   # all 100 guesses right
    3.49
    >>> round(one_run_epsilon_lower_bound(m=1000, r=100, v=75, delta=1e-4), 3)   # their Appendix D example
    0.673

    Used in: chapter 12.
    """
    beta = check_probability("beta", beta, open_high=True)
    lo, hi = 0.0, 1.0
    if one_run_p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= beta:
        return 0.0
    while one_run_p_value(m=m, r=r, v=v, epsilon=hi, delta=delta) < beta:
        lo, hi = hi, hi + 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if one_run_p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunAuditResult:
    """The outcome of :func:`one_run_audit_dpsgd`: ``correct`` of ``guesses`` right among ``m`` canaries."""

    epsilon_lower: float
    epsilon_accountant: float
    caught: bool
    m: int
    guesses: int
    correct: int
    sampler: str
    optimizer: str


def one_run_audit_dpsgd(
    dp_optimizer_cls: type[DPOptimizer] = DPOptimizer, *, noise_multiplier: float, max_grad_norm: float = 1.0,
    sample_rate: float, steps: int, delta: float, m: int, k_plus: int, k_minus: int, generator: torch.Generator,
    sampler: str = "poisson", accountant: str = "pld", canary_norm: float | None = None, beta: float = 0.05,
) -> OneRunAuditResult:  # fmt: skip
    r"""Audit DP-SGD in ONE run: :math:`m` Dirac canaries (one coordinate each), each in the data with probability 1/2.

    Guess "in" for the ``k_plus`` highest scores, "out" for the ``k_minus`` lowest,
    count the correct guesses, and convert with :func:`one_run_epsilon_lower_bound`.

    Reference: Steinke, Nasr, Jagielski 2023, "Privacy auditing with one (1) training run", arXiv:2305.08846.

    >>> from privlab.audit.planted import NoNoiseOptimizer
    >>> r = one_run_audit_dpsgd(NoNoiseOptimizer, noise_multiplier=2.0, sample_rate=0.1, steps=50, delta=1e-5,
    ...                         m=1000, k_plus=100, k_minus=0, generator=torch.Generator().manual_seed(0))
    >>> r.correct, r.caught
    (100, True)

    Used in: chapter 12.
    """
    m = check_int("m", m)
    k_plus, k_minus = check_int("k_plus", k_plus, minimum=0), check_int("k_minus", k_minus, minimum=0)
    if not 1 <= k_plus + k_minus <= m:
        raise ValueError(f"need 1 <= k_plus + k_minus <= m = {m}, got {k_plus} + {k_minus}")
    sigma, c, q, steps, delta, eps_claim = check_dpsgd_claim(
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, sample_rate=sample_rate, steps=steps,
        delta=delta, generator=generator, accountant=accountant)
    check_sampler(sampler)
    a = 10 * c if canary_norm is None else check_positive("canary_norm", canary_norm)
    dp = gradient_optimizer(dp_optimizer_cls, noise_multiplier=sigma, max_grad_norm=c,
                            batch_size=max(1, round(q * m)), generator=generator)
    included = torch.rand(m, generator=generator) < 0.5  # S_j = +1 (in) or -1 (out)
    pres = canary_presence((m,), steps=steps, sample_rate=q, sampler=sampler, included=included, generator=generator)
    upd = gradient_updates(dp, pres, a)  # one run: the model has one coordinate per canary
    score = canary_scores(upd, noise_multiplier=sigma, max_grad_norm=c, sample_rate=q, sampler=sampler)
    order = np.argsort(score, kind="stable")
    inc = included.numpy()
    correct = int(inc[order[m - k_plus:]].sum() if k_plus else 0) + int((~inc[order[:k_minus]]).sum())
    lower = one_run_epsilon_lower_bound(m=m, r=k_plus + k_minus, v=correct, delta=delta, beta=beta)
    return OneRunAuditResult(epsilon_lower=lower, epsilon_accountant=eps_claim, caught=lower > eps_claim, m=m,
                             guesses=k_plus + k_minus, correct=correct, sampler=sampler,
                             optimizer=dp_optimizer_cls.__name__)
