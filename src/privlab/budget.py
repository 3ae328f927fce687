r"""A privacy budget odometer, and an append-only ledger of what was spent.

:class:`PrivacyOdometer` holds a total budget :math:`(\varepsilon, \delta)`, and
for every query checks, *before* it runs, that the composition of everything
spent so far plus the query stays within the budget under the chosen accountant
(``"basic"`` by default, or ``"advanced"``, ``"rdp"``, ``"zcdp"``, ``"pld"``). A
query that would exceed the budget is refused with :class:`BudgetExceededError`,
whose message says by how much. :meth:`PrivacyOdometer.report` shows spent and
remaining budget under every accountant that can analyse the queries.

:class:`Ledger` is the audit trail: one JSON object per line, appended with a
single ``os.write`` of the complete line to a file opened with ``O_APPEND``,
then ``fsync``. Appends from several processes therefore never interleave, and a
crash can at worst leave one torn last line, which loading skips with a warning
while keeping every complete record. An odometer backed by a ledger replays it
on start, so reloading reproduces the same totals.

Adaptivity: with the budget fixed in advance and each query's cost known when
it is asked, basic composition is valid for adaptively chosen queries (Rogers,
Roth, Ullman, Vadhan 2016, arXiv:1605.08294, "privacy filters"); for the other
accountants the odometer is exact when the sequence of mechanisms does not
depend on the data, and the filter versions cost slightly more.

>>> odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
>>> _ = odo.spend("mean age", epsilon=0.4)
>>> _ = odo.spend("count", epsilon=0.5)
>>> odo.spend("histogram", epsilon=0.3)
Traceback (most recent call last):
...
privlab.budget.BudgetExceededError: query 'histogram' refused: under basic composition it would bring epsilon to 1.2, over the budget of 1 by 0.2
>>> round(odo.remaining_epsilon, 10)
0.1

Used in: chapters 3, 11, 12.
"""

from __future__ import annotations

import json
import math
import os

import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

try:  # POSIX advisory locks; elsewhere appends are still single O_APPEND writes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from privlab._validate import check_delta, check_epsilon, check_nonnegative
from privlab.accounting import (
    ACCOUNTANTS,
    EpsilonDeltaEvent,
    PrivacyEvent,
    event_from_dict,
    event_to_dict,
    make_accountant,
)

__all__ = ["BudgetExceededError", "LedgerRecord", "Ledger", "PrivacyOdometer"]

SCHEMA_VERSION = 1


class BudgetExceededError(ValueError):
    """A query would take the total privacy loss over the budget."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class LedgerRecord:
    """One privacy expenditure.

    Attributes:
        query: what was computed (a name).
        epsilon: the query's own epsilon when it was given as (epsilon, delta);
            for a query given as a mechanism event, how much it raised the total.
        delta: the delta this query spent.
        mechanism: which mechanism answered it (free text, e.g. ``"laplace"``).
        accounting: the accountant that judged it (``"basic"``, ``"rdp"``, ...).
        timestamp: ISO 8601 time in UTC.
        event: the privacy event, serialised (so other accountants can replay it).
        spent_epsilon, remaining_epsilon: the odometer's totals after this query.
        metadata: free JSON-serialisable data (techniques, model quality, ...).
    """

    query: str
    epsilon: float
    delta: float = 0.0
    mechanism: str = ""
    accounting: str = "basic"
    timestamp: str = field(default_factory=_now)
    event: dict | None = None
    spent_epsilon: float | None = None
    remaining_epsilon: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query:
            raise ValueError(f"query must be a non-empty string, got {self.query!r}")
        object.__setattr__(self, "epsilon", check_nonnegative("epsilon", self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta, allow_zero=True))
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {self.metadata!r}")
        object.__setattr__(self, "metadata", dict(self.metadata))

    def to_json(self) -> str:
        """One line of JSON (no newline); raises ValueError if metadata is not JSON-serialisable."""
        data = {"v": SCHEMA_VERSION, **asdict(self)}
        try:
            return json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"record for query {self.query!r} is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_json(cls, line: str) -> "LedgerRecord":
        data = json.loads(line)
        if not isinstance(data, dict) or data.pop("v", None) != SCHEMA_VERSION:
            raise ValueError(f"not a ledger record of schema version {SCHEMA_VERSION}: {line[:80]!r}")
        return cls(**data)

    def privacy_event(self) -> PrivacyEvent:
        """The event to replay: the stored one, else (epsilon, delta)."""
        return event_from_dict(self.event) if self.event else EpsilonDeltaEvent(self.epsilon, self.delta)


class Ledger:
    """An append-only JSON-lines file of :class:`LedgerRecord`.

    Args:
        path: the file (created on the first append).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ledger.jsonl")
    >>> ledger = Ledger(path)
    >>> ledger.append(LedgerRecord("count", epsilon=0.1, timestamp="2024-01-01T00:00:00+00:00"))
    >>> [r.query for r in Ledger(path).records()]
    ['count']

    Used in: chapters 3, 11, 12.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, record: LedgerRecord) -> None:
        """Write ``record`` as one line with a single ``os.write`` (O_APPEND), then ``fsync``."""
        if not isinstance(record, LedgerRecord):
            raise ValueError(f"record must be a LedgerRecord, got {record!r}")
        line = (record.to_json() + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # an exclusive lock makes "check the last byte, then append" one step for every appender:
            # without it, another process's write in flight can look like a torn line
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a crash left a torn line: do not glue this record onto it
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover - disk full
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def records(self) -> list[LedgerRecord]:
        """All complete records, in order; torn lines (from a crash) are skipped with a warning."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        out = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            torn_tail = number == len(lines)  # the last piece has no newline: an interrupted append
            try:
                out.append(LedgerRecord.from_json(line.decode("utf-8")))
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                where = "torn last line" if torn_tail else f"unreadable line {number}"
                warnings.warn(f"{self.path}: skipping {where} ({exc.__class__.__name__}): {line[:60]!r}",
                              stacklevel=2)
        return out

    def __len__(self) -> int:
        return len(self.records())

    def totals(self) -> tuple[float, float]:
        """Sums of epsilon and delta over all records (basic composition)."""
        recs = self.records()
        return math.fsum(r.epsilon for r in recs), math.fsum(r.delta for r in recs)


class PrivacyOdometer:
    r"""Spend a privacy budget query by query; refuse what would exceed it.

    Args:
        total_epsilon: the budget :math:`\varepsilon > 0`.
        total_delta: the budget :math:`\delta \in (0, 1)`.
        composition: the accountant that judges the queries, one of
            ``"basic"`` (default), ``"advanced"``, ``"rdp"``, ``"zcdp"``, ``"pld"``.
        ledger: a :class:`Ledger` or a path; its records are replayed now and
            every accepted query is appended to it.

    Used in: chapters 3, 11, 12.
    """

    def __init__(self, *, total_epsilon: float, total_delta: float, composition: str = "basic",
                 ledger: Ledger | str | os.PathLike | None = None) -> None:
        self.total_epsilon = check_epsilon(total_epsilon, name="total_epsilon")
        self.total_delta = check_delta(total_delta, name="total_delta")
        if composition not in ACCOUNTANTS:
            raise ValueError(f"composition must be one of {sorted(ACCOUNTANTS)}, got {composition!r}")
        self.composition = composition
        self.ledger = ledger if isinstance(ledger, Ledger) or ledger is None else Ledger(ledger)
        self._records: list[LedgerRecord] = list(self.ledger.records()) if self.ledger else []
        self._events: list[PrivacyEvent] = [r.privacy_event() for r in self._records]

    # ----- totals ---------------------------------------------------------------------
    def _epsilon_of(self, events: list[PrivacyEvent], name: str | None = None) -> float:
        if not events:
            return 0.0
        acc = make_accountant(name or self.composition)
        for e in events:
            acc.compose(e)
        return acc.get_epsilon(self.total_delta)

    @staticmethod
    def _delta_of(events: list[PrivacyEvent]) -> float:
        return math.fsum(getattr(e, "delta", 0.0) for e in events)

    @property
    def spent_epsilon(self) -> float:
        """Epsilon spent so far, at ``total_delta``, under the odometer's accountant."""
        return self._epsilon_of(self._events)

    @property
    def spent_delta(self) -> float:
        """Sum of the deltas of the (epsilon, delta) queries (a query given as a mechanism event, e.g. a
        Gaussian, spends its delta inside the accountant's epsilon at ``total_delta``)."""
        return self._delta_of(self._events)

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.total_epsilon - self.spent_epsilon)

    @property
    def remaining_delta(self) -> float:
        return max(0.0, self.total_delta - self.spent_delta)

    @property
    def records(self) -> tuple:
        return tuple(self._records)

    # ----- spending ---------------------------------------------------------------------
    def check(self, query: str, *, epsilon: float | None = None, delta: float = 0.0,
              event: PrivacyEvent | None = None) -> float:
        """The total epsilon after the query; raises :class:`BudgetExceededError` if over budget."""
        event = self._event(epsilon, delta, event)
        after = self._events + [event]
        eps_after, delta_after = self._epsilon_of(after), self._delta_of(after)
        over_delta = delta_after - self.total_delta
        if over_delta > 1e-12 * self.total_delta:
            raise BudgetExceededError(
                f"query {query!r} refused: it would bring delta to {delta_after:.6g}, over the budget of "
                f"{self.total_delta:.6g} by {over_delta:.6g}")
        over = eps_after - self.total_epsilon
        if over > 1e-12 * self.total_epsilon:
            raise BudgetExceededError(
                f"query {query!r} refused: under {self.composition} composition it would bring epsilon to "
                f"{eps_after:.6g}, over the budget of {self.total_epsilon:.6g} by {over:.6g}")
        return eps_after

    def spend(self, query: str, *, epsilon: float | None = None, delta: float = 0.0,
              event: PrivacyEvent | None = None, mechanism: str = "", metadata: dict | None = None) -> LedgerRecord:
        """Account for one query, given as ``epsilon`` (and ``delta``) or as a privacy ``event``.

        Returns:
            The record written (also appended to the ledger, if any).

        Raises:
            BudgetExceededError: the query would exceed the budget (nothing is recorded).
            ValueError: bad epsilon / delta, or an event the accountant cannot analyse.
        """
        before = self.spent_epsilon
        ev = self._event(epsilon, delta, event)
        after = self.check(query, event=ev)
        record = LedgerRecord(
            query=query, epsilon=max(0.0, after - before) if event is not None else ev.epsilon,
            delta=getattr(ev, "delta", 0.0), mechanism=mechanism, accounting=self.composition,
            event=event_to_dict(ev), spent_epsilon=after,
            remaining_epsilon=max(0.0, self.total_epsilon - after), metadata=dict(metadata or {}))
        record.to_json()  # refuse non-serialisable metadata before anything is recorded
        if self.ledger is not None:
            self.ledger.append(record)
        self._records.append(record)
        self._events.append(ev)
        return record

    def _event(self, epsilon, delta, event) -> PrivacyEvent:
        if event is not None:
            if epsilon is not None:
                raise ValueError("give either epsilon (and delta) or event, not both")
            if not isinstance(event, PrivacyEvent):
                raise ValueError(f"event must be a PrivacyEvent, got {event!r}")
            ev = event
        else:
            if epsilon is None:
                raise ValueError("give the query's epsilon (and delta) or its privacy event")
            ev = EpsilonDeltaEvent(epsilon=check_epsilon(epsilon), delta=delta)
        if not ACCOUNTANTS[self.composition].supports(ev):
            raise ValueError(f"the {self.composition} accountant cannot analyse {ev!r}")
        return ev

    def report(self) -> dict:
        """Spent and remaining epsilon (at ``total_delta``) under every accountant that supports all queries.

        Returns:
            ``{name: {"spent_epsilon": ..., "remaining_epsilon": ...}}``; an
            accountant that cannot analyse some query maps to ``None``.
        """
        out = {}
        for name, cls in ACCOUNTANTS.items():
            if not all(cls.supports(e) for e in self._events):
                out[name] = None
                continue
            spent = self._epsilon_of(self._events, name)
            out[name] = {"spent_epsilon": spent, "remaining_epsilon": max(0.0, self.total_epsilon - spent)}
        return out

    def __repr__(self) -> str:
        return (f"PrivacyOdometer(spent_epsilon={self.spent_epsilon:.6g} of {self.total_epsilon:g}, "
                f"delta={self.spent_delta:.3g} of {self.total_delta:g}, composition={self.composition!r}, "
                f"queries={len(self._records)})")
