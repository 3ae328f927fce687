r"""A privacy pipeline: a plan that validates itself, and an audit trail in the budget ledger.

**The configuration** (:class:`PrivacyConfig`) is checked when it is made:

* the total budget :math:`\varepsilon_{\mathrm{tot}} > 0` and :math:`\delta \in (0, 1)`;
* the DP-SGD target and any DP synthetic-data release fit in the budget under
  basic composition, :math:`\varepsilon_{\mathrm{DP\text{-}SGD}} + \varepsilon_{\mathrm{synth}} \le \varepsilon_{\mathrm{tot}}`
  (a ``ValueError`` names the excess);
* federated settings are complete (clients, rounds, local epochs :math:`\ge 1`),
  secure aggregation only with federated learning;
* synthetic data without DP warns :class:`NoFormalGuaranteeWarning` (a generator
  memorises; no formal guarantee, chapter 10); federated learning without DP warns
  :class:`CommunicationPrivacyOnlyWarning` (raw data stay local, but the model
  and the updates are not private, chapter 9); secure aggregation is noted as
  communication privacy (the server sees only the sum, Bonawitz et al. 2017),
  never as output privacy.

**The audit trail** (:class:`PrivacyPipeline`): every computation on the data
is spent through a :class:`privlab.budget.PrivacyOdometer` backed by a
:class:`privlab.budget.Ledger`, with the timestamp, techniques, epsilon spent
and remaining, the accounting method and the model quality in the record, so
:func:`privlab.budget.summarize_ledger` answers "what did this data pay, and where"
from the ledger file alone.

Reference: Dwork and Roth 2014, *The Algorithmic Foundations of Differential
Privacy*, Theorem 3.16 (basic composition); Bonawitz et al. 2017 (CCS), secure aggregation.

Used in: chapter 12.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from privlab._validate import check_bool, check_delta, check_epsilon, check_int
from privlab.accounting import DPSGD_ACCOUNTANTS
from privlab.budget import Ledger, LedgerRecord, PrivacyOdometer

__all__ = [
    "NEIGHBOURING", "CommunicationPrivacyOnlyWarning", "NoFormalGuaranteeWarning", "OverPlanWarning", "PrivacyConfig",
    "PrivacyConfigWarning", "PrivacyPipeline",
]


class PrivacyConfigWarning(UserWarning):
    """A configuration that runs but does not give the protection its name suggests."""


class NoFormalGuaranteeWarning(PrivacyConfigWarning):
    """Synthetic data from a generator trained without DP: no formal privacy guarantee."""


class OverPlanWarning(PrivacyConfigWarning):
    """A recorded step spends more than the plan gave its technique (the total budget still holds)."""


class CommunicationPrivacyOnlyWarning(PrivacyConfigWarning):
    """Federated learning without DP: communication privacy only, the model can still leak."""


#: The neighbouring relations a :class:`PrivacyConfig` can name.
NEIGHBOURING = ("add/remove", "replace-one")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    r"""A pipeline's privacy plan, validated on creation.

    Args:
        total_epsilon: :math:`\varepsilon_{\mathrm{tot}} > 0`, the data set's whole budget.
        delta: :math:`\delta \in (0, 1)`.
        dpsgd_target_epsilon: target :math:`\varepsilon` of DP-SGD training, or ``None`` (no DP training).
        dpsgd_accountant: the accountant of the DP-SGD target (``"pld"`` or ``"rdp"``).
        federated: training is federated.
        n_clients, local_epochs, rounds: the federated schedule (required, :math:`\ge 1`, when federated).
        client_level_dp: DP-FedAvg with client-level clipping and noise (counts as DP).
        secure_aggregation: the server sees only the sum of the updates.
        synthetic_data: the pipeline releases synthetic data.
        synthetic_dp_epsilon: the generator's DP :math:`\varepsilon`, or ``None`` (trained without DP).
        privacy_unit: whom each epsilon protects (``"record"`` by default; ``"user"``, ``"client"``, ...):
            every record of the pipeline carries it, and epsilons of different units do not add up.
        neighbouring: ``"add/remove"`` (default) or ``"replace-one"``: the neighbouring relation.

    The flags must be bools (``"False"`` is truthy: a red-team read found it reported as client-level
    DP, with no warning of communication privacy only).

    Raises:
        ValueError: naming the bad value, e.g. a DP-SGD target over the total budget.

    >>> import warnings
    >>> cfg = PrivacyConfig(total_epsilon=3, delta=1e-6, dpsgd_target_epsilon=2, federated=True,
    ...                     n_clients=15, local_epochs=3, rounds=50, secure_aggregation=True)
    >>> cfg.reserve_epsilon
    1.0
    >>> PrivacyConfig(total_epsilon=3, delta=1e-6, dpsgd_target_epsilon=4)
    Traceback (most recent call last):
    ...
    ValueError: the planned epsilons exceed total_epsilon = 3: dpsgd_target_epsilon = 4 + synthetic_dp_epsilon = 0 (basic composition) = 4, over by 1

    Used in: chapter 12.
    """

    total_epsilon: float
    delta: float
    dpsgd_target_epsilon: float | None = None
    dpsgd_accountant: str = "pld"
    federated: bool = False
    n_clients: int | None = None
    local_epochs: int | None = None
    rounds: int | None = None
    client_level_dp: bool = False
    secure_aggregation: bool = False
    synthetic_data: bool = False
    synthetic_dp_epsilon: float | None = None
    privacy_unit: str = "record"
    neighbouring: str = "add/remove"
    notes: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        for name in ("federated", "client_level_dp", "secure_aggregation", "synthetic_data"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))  # np.bool_ -> bool
        if not isinstance(self.privacy_unit, str) or not self.privacy_unit:
            raise ValueError(f"privacy_unit must be a non-empty string, got {self.privacy_unit!r}")
        if self.neighbouring not in NEIGHBOURING:
            raise ValueError(f"neighbouring must be one of {NEIGHBOURING}, got {self.neighbouring!r}")
        check_epsilon(self.total_epsilon, name="total_epsilon")
        check_delta(self.delta)
        if self.dpsgd_target_epsilon is not None:
            check_epsilon(self.dpsgd_target_epsilon, name="dpsgd_target_epsilon")
        if self.dpsgd_accountant not in DPSGD_ACCOUNTANTS:
            raise ValueError(f"dpsgd_accountant must be 'pld' or 'rdp', got {self.dpsgd_accountant!r}")
        if self.synthetic_dp_epsilon is not None:
            check_epsilon(self.synthetic_dp_epsilon, name="synthetic_dp_epsilon")
            if not self.synthetic_data:
                raise ValueError("synthetic_dp_epsilon is set but synthetic_data=False")
        planned = (self.dpsgd_target_epsilon or 0.0) + (self.synthetic_dp_epsilon or 0.0)
        if planned > self.total_epsilon * (1 + 1e-12):
            raise ValueError(
                f"the planned epsilons exceed total_epsilon = {self.total_epsilon:g}: dpsgd_target_epsilon = "
                f"{self.dpsgd_target_epsilon or 0:g} + synthetic_dp_epsilon = {self.synthetic_dp_epsilon or 0:g} "
                f"(basic composition) = {planned:g}, over by {planned - self.total_epsilon:g}")
        notes = []
        if self.federated:
            for name in ("n_clients", "local_epochs", "rounds"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required for federated learning, got None")
                object.__setattr__(self, name, check_int(name, getattr(self, name)))
            if not self.dp_training:
                warnings.warn("federated learning without DP gives communication privacy only: raw data stay on "
                              "the clients, but the updates and the final model can leak training records",
                              CommunicationPrivacyOnlyWarning, stacklevel=3)
                notes.append("federated without DP: communication privacy only, no formal guarantee")
        else:
            for name in ("n_clients", "local_epochs", "rounds"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} = {getattr(self, name)!r} given but federated=False")
            if self.client_level_dp:
                raise ValueError("client_level_dp=True needs federated=True")
        if self.client_level_dp and self.dpsgd_target_epsilon is None:
            notes.append("client-level DP: its epsilon (per client, from the federated accountant) is not "
                         "planned here and not counted in reserve_epsilon; add it to the budget yourself")
        if self.secure_aggregation:
            if not self.federated:
                raise ValueError("secure_aggregation=True needs federated=True")
            notes.append("secure aggregation: communication privacy (the server sees only the sum of the "
                         "updates), not output privacy; it spends no epsilon")
        if self.synthetic_data and self.synthetic_dp_epsilon is None:
            warnings.warn("synthetic data from a generator trained without DP gives no formal privacy guarantee",
                          NoFormalGuaranteeWarning, stacklevel=3)
            notes.append("synthetic data without DP: no formal guarantee")
        object.__setattr__(self, "notes", tuple(notes))

    @property
    def dp_training(self) -> bool:
        """Training is DP: a DP-SGD target, or client-level DP in federated learning."""
        return self.dpsgd_target_epsilon is not None or self.client_level_dp

    @property
    def reserve_epsilon(self) -> float:
        """The budget left after the planned DP-SGD and synthetic-data spending (basic composition)."""
        return self.total_epsilon - (self.dpsgd_target_epsilon or 0.0) - (self.synthetic_dp_epsilon or 0.0)

    def techniques(self) -> list[str]:
        """The privacy techniques the plan uses, in words."""
        out = []
        if self.dpsgd_target_epsilon is not None:
            out.append("DP-SGD")
        if self.federated:
            out.append("federated learning" + (" (client-level DP)" if self.client_level_dp else ""))
        if self.secure_aggregation:
            out.append("secure aggregation")
        if self.synthetic_data:
            out.append("DP synthetic data" if self.synthetic_dp_epsilon is not None else "synthetic data (no DP)")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


class PrivacyPipeline:
    r"""Run a plan's computations through an odometer and write each one to the ledger.

    Args:
        config: a :class:`PrivacyConfig`.
        dataset: the data set's name (every record carries it).
        ledger: a :class:`privlab.budget.Ledger` or a path; existing records are replayed.

    Used in: chapter 12.
    """

    def __init__(self, config: PrivacyConfig, *, dataset: str, ledger: Ledger | str | os.PathLike) -> None:
        if not isinstance(config, PrivacyConfig):
            raise ValueError(f"config must be a PrivacyConfig, got {type(config).__name__}")
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"dataset must be a non-empty string, got {dataset!r}")
        self.config, self.dataset = config, dataset
        path = ledger.path if isinstance(ledger, Ledger) else ledger

        # the ledger is the unit of budget: one data set, one privacy unit and relation per file (a
        # red-team read: two data sets on one ledger shared one budget while the summary showed two).
        # Checked on every read of the ledger, also the one under the lock before each spend (a
        # review: checked at opening only, two pipelines opened before either spent both passed).
        # Records from before the unit was recorded were record-level and add/remove.
        def accept(number: int, r: LedgerRecord) -> None:
            m = r.metadata
            if "dataset" not in m:  # appended by hand, not by a pipeline: spent budget all the same
                return
            theirs = (m["dataset"], m.get("privacy_unit", "record"), m.get("neighbouring", "add/remove"))
            if theirs != (dataset, config.privacy_unit, config.neighbouring):
                raise ValueError(
                    f"{path}: record {number} ({r.query!r}) is for data set {theirs[0]!r}, privacy unit "
                    f"{theirs[1]!r}, {theirs[2]} neighbours; this pipeline is for {dataset!r}, "
                    f"{config.privacy_unit!r}, {config.neighbouring}: a ledger holds one budget, so use one "
                    "ledger per data set and unit")

        self.odometer = PrivacyOdometer(total_epsilon=config.total_epsilon, total_delta=config.delta,
                                        composition="basic", ledger=ledger, accept=accept)

    def record(self, step: str, *, epsilon: float, delta: float = 0.0, techniques: Sequence[str],
               accounting: str, quality: dict | None = None, details: dict | None = None) -> LedgerRecord:
        """Spend ``epsilon`` (refused if over budget) and append the step's audit record.

        Args:
            step: what was computed.
            epsilon, delta: what the step spent (as computed by ``accounting``).
            techniques: e.g. ``["DP-SGD", "federated learning", "secure aggregation"]``.
            accounting: how the step's epsilon was computed (``"pld"``, ``"rdp"``, ``"laplace"``, ...).
            quality: model or release quality (e.g. ``{"auc": 0.81}``), computed on public or proxy
                data: a metric of the private data is itself a release the budget does not cover.
            details: anything else worth keeping (sigma, steps, ...), JSON-serialisable.

        Raises:
            privlab.budget.BudgetExceededError: over the total budget (nothing is recorded).
        """
        if isinstance(techniques, str):  # stored letter by letter otherwise
            raise ValueError(f"techniques must be a list of names, got the string {techniques!r}")
        if not isinstance(accounting, str) or not accounting:
            raise ValueError(f"accounting must be a non-empty string, got {accounting!r}")
        planned = {"DP-SGD": self.config.dpsgd_target_epsilon, "DP synthetic data": self.config.synthetic_dp_epsilon}
        for name, target in planned.items():
            if name not in techniques or target is None or not isinstance(epsilon, (int, float)):
                continue
            # the technique's spending so far (basic composition, as the plan) plus this step's
            used = epsilon + sum(r.epsilon or 0.0 for r in self.odometer.refresh().records
                                 if name in r.metadata.get("techniques", ()))
            if used > target:
                # allowed (the total budget is the guarantee and the odometer enforces it), but the plan's
                # other steps now have less than they were planned with: say so, with the numbers
                warnings.warn(f"{step!r} brings the epsilon spent on {name} to {used:g}, over the plan's "
                              f"{target:g}; {self.odometer.remaining_epsilon - epsilon:g} of the total "
                              f"{self.config.total_epsilon:g} would remain for the rest of the plan",
                              OverPlanWarning, stacklevel=2)
        meta = {"dataset": self.dataset, "privacy_unit": self.config.privacy_unit,
                "neighbouring": self.config.neighbouring, "techniques": list(techniques), "accounting_method": accounting,
                "model_quality": dict(quality or {}), "total_epsilon": self.config.total_epsilon,
                "total_delta": self.config.delta, "notes": list(self.config.notes), "details": dict(details or {})}
        return self.odometer.spend(step, epsilon=epsilon, delta=delta, mechanism=", ".join(techniques),
                                   metadata=meta)

