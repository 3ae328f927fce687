r"""Empirical privacy auditing: lower confidence bounds on epsilon that can refute a privacy claim.

A claim of :math:`(\varepsilon, \delta)`-DP means every test between neighbouring
inputs has :math:`\mathrm{TPR} \le e^\varepsilon\,\mathrm{FPR} + \delta`; an audit
runs a test, bounds its rates with Clopper-Pearson intervals and reports
:math:`\ln((\underline{\mathrm{TPR}} - \delta)/\overline{\mathrm{FPR}})`, a
lower bound on the true :math:`\varepsilon` with probability :math:`\ge 1 - \alpha`.

Modules:

- :mod:`privlab.audit.stats`: Clopper-Pearson, the bound, the threshold chosen on a pilot sample,
  the result of a canary audit, the "pilot then main runs" helper, sizing the runs.
- :mod:`privlab.audit.mechanisms`: auditing a scalar-output mechanism from its samples.
- :mod:`privlab.audit.dpsgd`: DP-SGD with a gradient canary (many runs, gradient space) or an input
  canary (many runs of :func:`privlab.dpsgd.train`).
- :mod:`privlab.audit.one_run`: the one-run audit of Steinke, Nasr and Jagielski (2023).
- :mod:`privlab.audit.planted`: planted bugs the audits must catch.
- :mod:`privlab.audit.fpattack`: the floating-point attack on textbook Laplace noise (Mironov 2012).
- :mod:`privlab.audit.registry` and :mod:`privlab.audit.dp_test`: the DP test suite, every release of the
  package with its claim and worst-case neighbours, audited empirically, with planted-broken twins
  (``python -m privlab.audit.dp_test --list``; not imported here: it loads every subsystem).

References: Ding et al. (2018), "Detecting violations of differential privacy";
Jagielski, Ullman, Oprea (2020), arXiv:2006.07709; Nasr et al. (2021), arXiv:2101.04535;
Steinke, Nasr, Jagielski (2023), arXiv:2305.08846.

Used in: chapters 5, 12.
"""

from privlab.audit.dpsgd import InputCanaryTask, audit_dpsgd, audit_dpsgd_input, canary_scores, input_canary_task
from privlab.audit.fpattack import (
    AttackResult,
    distinguishing_attack,
    dp_success_bound,
    grid_reachable,
    textbook_laplace_mechanism,
    textbook_laplace_noise,
    textbook_laplace_reachable,
)
from privlab.audit.mechanisms import AuditResult, audit_mechanism
from privlab.audit.one_run import OneRunAuditResult, one_run_audit_dpsgd, one_run_epsilon_lower_bound, one_run_p_value
from privlab.audit.planted import PLANTED_BUGS, NoClipOptimizer, NoNoiseOptimizer, WrongNoiseScaleOptimizer
from privlab.audit.stats import (
    DPSGDAuditResult,
    audit_result,
    choose_threshold,
    clopper_pearson,
    epsilon_lower_bound,
    gaussian_test_runs,
    pilot_then_main,
    runs_for_power,
)

__all__ = [
    "PLANTED_BUGS", "AttackResult", "AuditResult", "DPSGDAuditResult", "InputCanaryTask", "NoClipOptimizer",
    "NoNoiseOptimizer", "OneRunAuditResult", "WrongNoiseScaleOptimizer", "audit_dpsgd", "audit_dpsgd_input",
    "audit_mechanism", "audit_result", "canary_scores", "choose_threshold", "clopper_pearson",
    "distinguishing_attack", "dp_success_bound", "epsilon_lower_bound", "gaussian_test_runs", "grid_reachable",
    "input_canary_task", "one_run_audit_dpsgd", "one_run_epsilon_lower_bound", "one_run_p_value",
    "pilot_then_main", "runs_for_power", "textbook_laplace_mechanism", "textbook_laplace_noise",
    "textbook_laplace_reachable",
]  # fmt: skip
