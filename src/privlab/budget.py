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
then ``fsync``, under an exclusive ``flock``. An odometer backed by a ledger
replays it on start, and :meth:`PrivacyOdometer.spend` does *check, then append*
as one step under that lock, after re-reading the ledger: several odometers (in
one process or many) sharing a ledger file can never together exceed the budget. Every record
carries the budget and composition it was accepted under, and an odometer with another budget or
composition refuses the ledger (a ``ValueError`` naming the record).
(This needs POSIX advisory locks, ``fcntl.flock``, on a local file system;
where they are missing, e.g. on Windows, a warning says that concurrent
odometers are not protected.)

The ledger fails closed. A line that cannot be read is spent budget whose amount
is unknown, so reading raises :class:`LedgerCorruptError` naming the line,
never skips it. The one exception is a *torn last line*: the file does not end in
a newline and its last piece is not a record. That is an append interrupted by a
crash; :meth:`PrivacyOdometer.spend` returns (and the caller may answer the
query) only after the whole line is written and synced, so a torn line is a
query that was never answered, and skipping it (with a warning) loses nothing.
The next append removes the fragment, under the lock, before writing.

Budget checks are exact: for basic composition of (epsilon, delta) and Laplace
events the sums are taken in rational arithmetic (``fractions.Fraction`` of the
floats; a Laplace event of scale b costs exactly 1/b), and a query is refused
when the exact total would exceed the budget by any amount. Other accountants
return a float epsilon, compared with a strict ``<=``, no tolerance.

Adaptivity: with the budget fixed in advance and each query's cost known when
it is asked, basic composition is valid even when the queries and their
epsilons are chosen adaptively: the odometer is then a *privacy filter* (Rogers,
Roth, Ullman, Vadhan 2016, arXiv:1605.08294). For the other accountants the
odometer compares a fixed-sequence composition theorem with the budget, which
is valid only when the sequence of privacy parameters is fixed in advance (does
not depend on the data or on earlier answers). Filters that allow adaptive
parameters exist at almost no extra cost: for advanced composition, matching its
rate including constants, and for approximate zCDP (Whitehouse, Ramdas, Rogers,
Wu, ICML 2023, arXiv:2203.05481), and for Renyi DP at a given order (Feldman and
Zrnic, NeurIPS 2021, arXiv:2008.11193); but they are not implemented here.

>>> odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
>>> _ = odo.spend("mean age", epsilon=0.4)
>>> _ = odo.spend("count", epsilon=0.5)
>>> odo.spend("histogram", epsilon=0.3)
Traceback (most recent call last):
...
privlab.budget.BudgetExceededError: query 'histogram' refused: under basic composition it would bring epsilon to 1.2, over the budget of 1 by 0.2
>>> round(odo.remaining_epsilon, 10)
0.1
>>> odo.spend("last", epsilon=odo.remaining_epsilon).remaining_epsilon
0.0

:func:`summarize_ledger` reads a ledger file back as a table: what each data set
paid, and where (the audit trail of :class:`privlab.pipeline.PrivacyPipeline`).

Used in: chapters 3, 12, 13.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

try:  # POSIX advisory locks; elsewhere appends are still single O_APPEND writes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

import pandas as pd

from privlab._validate import check_delta, check_epsilon, check_nonnegative
from privlab.accounting import (
    ACCOUNTANTS,
    EpsilonDeltaEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    event_from_dict,
    event_to_dict,
    make_accountant,
)

__all__ = ["BudgetExceededError", "LedgerCorruptError", "LedgerRecord", "Ledger", "LedgerSummary", "PrivacyOdometer",
           "summarize_ledger"]

SCHEMA_VERSION = 1


class BudgetExceededError(ValueError):
    """A query would take the total privacy loss over the budget."""


class LedgerCorruptError(ValueError):
    """A ledger line (other than a torn last line) cannot be read: the spent budget is unknown."""


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
        total_epsilon, total_delta: the budget of the odometer that accepted it (``None`` for a record
            appended without one). An odometer refuses a ledger holding records of another budget or
            composition: each checks only against its own budget, so two budgets on one file could
            together spend more than either (a red-team finding: totals 1 and 10 on one ledger let
            5.9 be spent against a budget of 1).
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
    total_epsilon: float | None = None
    total_delta: float | None = None

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

    Used in: chapters 3, 12, 13.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    # ----- reading ------------------------------------------------------------------
    def _parse(self, raw: bytes) -> tuple[list[LedgerRecord], int]:
        """The records in ``raw``, and the length of the prefix that holds them (the rest is a torn last line).

        Raises:
            LedgerCorruptError: an unreadable line that is not a torn last line.
        """
        lines = raw.split(b"\n")  # the last piece is b"" when the file ends in a newline
        out, pos = [], 0
        for number, line in enumerate(lines, start=1):
            last = number == len(lines)
            if line.strip():
                try:
                    out.append(LedgerRecord.from_json(line.decode("utf-8")))
                except (ValueError, TypeError, UnicodeDecodeError) as exc:
                    if last:  # no newline after it: an append interrupted by a crash, never acknowledged
                        warnings.warn(f"{self.path}: skipping the torn last line {number} (an interrupted append, "
                                      f"{len(line)} bytes, no newline); the next append removes it", stacklevel=3)
                        return out, pos
                    raise LedgerCorruptError(
                        f"{self.path}: line {number} is not a readable ledger record ({exc.__class__.__name__}: "
                        f"{exc}); its privacy spending is unknown, so the ledger cannot be used until the line "
                        "is repaired or removed by hand") from exc
            pos += len(line) + (0 if last else 1)
        return out, pos

    def records(self) -> list[LedgerRecord]:
        """All records, in order, read under a shared lock; a torn last line is skipped with a warning.

        Raises:
            LedgerCorruptError: any other unreadable line (fail closed: spent budget must not vanish).
        """
        if not self.path.exists():
            return []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)  # no append is half-way through while we read
            return self._parse(_read_all(fd))[0]
        finally:
            os.close(fd)

    # ----- writing ------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self):
        """Hold the ledger's exclusive lock: read the records, decide, append, as one step.

        Yields an object with ``records`` (the list of records, read under the lock)
        and ``append(record)``. Every other :meth:`append`, :meth:`transaction` and
        :meth:`records` call waits until the block ends.

        >>> import tempfile, os
        >>> with Ledger(os.path.join(tempfile.mkdtemp(), "l.jsonl")).transaction() as txn:
        ...     txn.append(LedgerRecord("count", epsilon=0.1))
        ...     [r.query for r in txn.records]
        ['count']
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:  # pragma: no cover - not POSIX
                warnings.warn(f"{self.path}: no file locks on this platform; odometers in several processes "
                              "sharing this ledger could together exceed the budget", stacklevel=3)
            yield _Transaction(self, fd)
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, record: LedgerRecord) -> None:
        """Write ``record`` as one line with a single ``os.write`` (O_APPEND, under the lock), then ``fsync``."""
        with self.transaction() as txn:
            txn.append(record)

    def __len__(self) -> int:
        return len(self.records())

    def totals(self) -> tuple[float, float]:
        """Sums of epsilon and delta over all records (basic composition)."""
        recs = self.records()
        return math.fsum(r.epsilon for r in recs), math.fsum(r.delta for r in recs)


def _read_all(fd: int) -> bytes:
    size, chunks, pos = os.fstat(fd).st_size, [], 0
    while pos < size:
        chunk = os.pread(fd, size - pos, pos)
        if not chunk:  # pragma: no cover - the file shrank under us (cannot happen under the lock)
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


class _Transaction:
    """The records of a locked ledger, and appends to it (see :meth:`Ledger.transaction`)."""

    def __init__(self, ledger: Ledger, fd: int) -> None:
        self._ledger, self._fd = ledger, fd
        raw = _read_all(fd)
        self.records, keep = ledger._parse(raw)
        self._torn_at = keep if raw[keep:].strip() else None  # where a torn last line starts
        self._needs_newline = keep > 0 and not raw[:keep].endswith(b"\n")  # a whole record without its newline

    def append(self, record: LedgerRecord) -> None:
        if not isinstance(record, LedgerRecord):
            raise ValueError(f"record must be a LedgerRecord, got {record!r}")
        line = (record.to_json() + "\n").encode("utf-8")
        if self._torn_at is not None:  # remove the fragment of the interrupted append first
            os.ftruncate(self._fd, self._torn_at)
            self._torn_at = None
        if self._needs_newline:
            line, self._needs_newline = b"\n" + line, False
        written = os.write(self._fd, line)
        if written != len(line):  # pragma: no cover - disk full
            raise OSError(f"short write to {self._ledger.path}: {written} of {len(line)} bytes")
        os.fsync(self._fd)
        self.records.append(record)


class PrivacyOdometer:
    r"""Spend a privacy budget query by query; refuse what would exceed it.

    Args:
        total_epsilon: the budget :math:`\varepsilon > 0`.
        total_delta: the budget :math:`\delta \in (0, 1)`.
        composition: the accountant that judges the queries, one of
            ``"basic"`` (default), ``"advanced"``, ``"rdp"``, ``"zcdp"``, ``"pld"``.
            Only ``"basic"`` is valid for adaptively chosen epsilons (a privacy
            filter); the others assume the sequence is fixed in advance (see the
            module docstring).
        ledger: a :class:`Ledger` or a path; its records are replayed now, and
            again (under the ledger's lock) before every :meth:`spend`, so the
            budget holds for all odometers sharing the file together; every
            accepted query is appended to it.
        accept: optional ``accept(line_number, record)`` called on every record each time the
            ledger is read (also under the lock before a spend); it raises ``ValueError`` to refuse
            a ledger holding a record it does not accept (:class:`privlab.pipeline.PrivacyPipeline`
            refuses another data set's or privacy unit's records this way).

    The totals shown between spends (``spent_epsilon``, ``remaining_epsilon``, ...)
    are those of the last read of the ledger; :meth:`refresh` re-reads it.

    Used in: chapters 3, 12, 13.
    """

    def __init__(self, *, total_epsilon: float, total_delta: float, composition: str = "basic",
                 ledger: Ledger | str | os.PathLike | None = None, accept=None) -> None:
        self.total_epsilon = check_epsilon(total_epsilon, name="total_epsilon")
        self.total_delta = check_delta(total_delta, name="total_delta")
        if composition not in ACCOUNTANTS:
            raise ValueError(f"composition must be one of {sorted(ACCOUNTANTS)}, got {composition!r}")
        self.composition = composition
        self.ledger = ledger if isinstance(ledger, Ledger) or ledger is None else Ledger(ledger)
        self._accept = accept
        self._records: list[LedgerRecord] = []
        self._events: list[PrivacyEvent] = []
        if self.ledger is not None:
            self._load(self.ledger.records())

    def _load(self, records: list[LedgerRecord]) -> None:
        for number, r in enumerate(records, start=1):
            if self._accept is not None:  # the caller's own check, on every read (also under the lock)
                self._accept(number, r)
            if r.total_epsilon is None and r.total_delta is None:
                continue  # appended without an odometer: spent budget all the same
            if (r.total_epsilon, r.total_delta, r.accounting) != (
                    self.total_epsilon, self.total_delta, self.composition):
                raise ValueError(
                    f"{self.ledger.path}: record {number} ({r.query!r}) was accepted against a budget of epsilon "
                    f"{r.total_epsilon!r}, delta {r.total_delta!r} under {r.accounting} composition, but this "
                    f"odometer has epsilon {self.total_epsilon!r}, delta {self.total_delta!r} under "
                    f"{self.composition} composition: odometers sharing a ledger must share its budget and "
                    "composition (each checks only its own budget, so two could together overspend either)")
        self._records = list(records)
        self._events = [r.privacy_event() for r in self._records]

    def refresh(self) -> "PrivacyOdometer":
        """Re-read the ledger (other odometers may have spent from it); returns ``self``."""
        if self.ledger is not None:
            self._load(self.ledger.records())
        return self

    # ----- totals ---------------------------------------------------------------------
    def _exact_epsilon_of(self, events: list[PrivacyEvent], name: str) -> Fraction | None:
        """Basic composition of (epsilon, delta) and Laplace events, exactly (None for anything else)."""
        if name != "basic":
            return None
        total = Fraction(0)
        for event in events:
            for leaf, count in ACCOUNTANTS["basic"]._leaves(event, 1, []):
                if isinstance(leaf, EpsilonDeltaEvent):
                    total += count * Fraction(leaf.epsilon)
                elif isinstance(leaf, LaplaceEvent):
                    total += count / Fraction(leaf.scale)  # exactly 1/b, not the float 1.0 / b
                else:
                    return None
        return total

    def _epsilon_of(self, events: list[PrivacyEvent], name: str | None = None):
        """The epsilon of ``events`` at ``total_delta``: a Fraction where exact, else the accountant's float."""
        if not events:
            return Fraction(0)
        name = name or self.composition
        exact = self._exact_epsilon_of(events, name)
        if exact is not None:
            return exact
        acc = make_accountant(name)
        for e in events:
            acc.compose(e)
        return acc.get_epsilon(self.total_delta)

    @staticmethod
    def _delta_of(events: list[PrivacyEvent]) -> Fraction:
        """The summed delta of the (epsilon, delta) queries, nested ones included: a composed or
        self-composed event counts every leaf's delta (times its count), a Poisson-sampled one its
        inner delta times q (amplification). (A red-team read found nested deltas read as 0: 100
        queries of delta 1e-3 were accepted against a budget of 1e-5.)"""
        total = Fraction(0)
        for event in events:
            try:
                leaves = ACCOUNTANTS["basic"]._leaves(event, 1, [])
            except ValueError:  # a mechanism the basic accountant does not take: its own delta, if any
                leaves = [(event, 1)]
            for leaf, count in leaves:
                if isinstance(leaf, PoissonSampledEvent):
                    delta = Fraction(leaf.sample_rate) * PrivacyOdometer._delta_of([leaf.event])
                else:
                    delta = Fraction(getattr(leaf, "delta", 0.0))
                total += count * delta
        return total

    @property
    def spent_epsilon(self) -> float:
        """Epsilon spent so far, at ``total_delta``, under the odometer's accountant."""
        return float(self._epsilon_of(self._events))

    @property
    def spent_delta(self) -> float:
        """Sum of the deltas of the (epsilon, delta) queries (a query given as a mechanism event, e.g. a
        Gaussian, spends its delta inside the accountant's epsilon at ``total_delta``)."""
        return float(self._delta_of(self._events))

    @property
    def remaining_epsilon(self) -> float:
        """The budget left, rounded down to a float: a query of exactly this epsilon is accepted."""
        return _left(self.total_epsilon, self._epsilon_of(self._events))

    @property
    def remaining_delta(self) -> float:
        """The delta left, rounded down to a float."""
        return _float_below(Fraction(self.total_delta) - self._delta_of(self._events))

    @property
    def records(self) -> tuple:
        return tuple(self._records)

    # ----- spending ---------------------------------------------------------------------
    def check(self, query: str, *, epsilon: float | None = None, delta: float = 0.0,
              event: PrivacyEvent | None = None) -> float:
        """The total epsilon after the query; raises :class:`BudgetExceededError` if over budget.

        Checks against the totals of the last read of the ledger (:meth:`spend`
        re-reads it under the lock first). No tolerance: any excess is refused,
        computed exactly where the composition allows (see the module docstring).
        """
        event = self._event(epsilon, delta, event)
        after = self._events + [event]
        eps_after, delta_after = self._epsilon_of(after), self._delta_of(after)
        if delta_after > Fraction(self.total_delta):
            over = delta_after - Fraction(self.total_delta)
            raise BudgetExceededError(
                f"query {query!r} refused: it would bring delta to {float(delta_after):.6g}, over the budget of "
                f"{self.total_delta:.6g} by {float(over):.6g}")
        if not eps_after <= Fraction(self.total_epsilon):  # also refuses NaN
            over = float(Fraction(eps_after) - Fraction(self.total_epsilon)) if math.isfinite(eps_after) else eps_after
            raise BudgetExceededError(
                f"query {query!r} refused: under {self.composition} composition it would bring epsilon to "
                f"{float(eps_after):.6g}, over the budget of {self.total_epsilon:.6g} by {over:.6g}")
        return float(eps_after)

    def spend(self, query: str, *, epsilon: float | None = None, delta: float = 0.0,
              event: PrivacyEvent | None = None, mechanism: str = "", metadata: dict | None = None) -> LedgerRecord:
        """Account for one query, given as ``epsilon`` (and ``delta``) or as a privacy ``event``.

        Returns:
            The record written (also appended to the ledger, if any).

        Raises:
            BudgetExceededError: the query would exceed the budget (nothing is recorded).
            ValueError: bad epsilon / delta, or an event the accountant cannot analyse.
        """
        ev = self._event(epsilon, delta, event)
        LedgerRecord(query, epsilon=0.0, metadata=dict(metadata or {})).to_json()  # refuse bad input before locking
        if self.ledger is None:
            return self._spend(query, ev, event is not None, mechanism, metadata, None)
        with self.ledger.transaction() as txn:  # re-read, check and append under one exclusive lock
            self._load(txn.records)
            return self._spend(query, ev, event is not None, mechanism, metadata, txn)

    def _spend(self, query, ev, as_event, mechanism, metadata, txn) -> LedgerRecord:
        before = self.spent_epsilon
        after = self.check(query, event=ev)
        record = LedgerRecord(
            query=query, epsilon=max(0.0, after - before) if as_event else ev.epsilon,
            delta=float(self._delta_of([ev])), mechanism=mechanism, accounting=self.composition,
            event=event_to_dict(ev), spent_epsilon=after,
            remaining_epsilon=_left(self.total_epsilon, after),
            metadata=dict(metadata or {}), total_epsilon=self.total_epsilon, total_delta=self.total_delta)
        record.to_json()  # refuse non-serialisable metadata before anything is recorded
        if txn is not None:
            txn.append(record)  # also adds it to txn.records, which self._records is a copy of
        self._records.append(record)
        self._events.append(ev)
        return record

    def _event(self, epsilon, delta, event) -> PrivacyEvent:
        if event is not None:
            if epsilon is not None:
                raise ValueError("give either epsilon (and delta) or event, not both")
            if delta != 0:  # it would be dropped: the event carries its own privacy loss
                raise ValueError(f"give delta only with epsilon, not with an event (got delta={delta!r}): an event "
                                 "carries its own delta")
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
            out[name] = {"spent_epsilon": float(spent),
                         "remaining_epsilon": _left(self.total_epsilon, spent)}
        return out

    def __repr__(self) -> str:
        return (f"PrivacyOdometer(spent_epsilon={self.spent_epsilon:.6g} of {self.total_epsilon:g}, "
                f"delta={self.spent_delta:.3g} of {self.total_delta:g}, composition={self.composition!r}, "
                f"queries={len(self._records)})")


def _left(total: float, spent) -> float:
    """total - spent, exactly, rounded down to a float (0 when spent is infinite or NaN)."""
    if isinstance(spent, float) and not math.isfinite(spent):
        return 0.0
    return _float_below(Fraction(total) - Fraction(spent))


def _float_below(x: Fraction) -> float:
    """The largest float <= max(x, 0) (so spending it never exceeds the exact remainder); inf stays inf."""
    if x <= 0:
        return 0.0
    f = float(x)
    return math.nextafter(f, 0.0) if Fraction(f) > x else f


@dataclass(frozen=True)
class LedgerSummary:
    """What each data set paid, and where: ``table`` has one row per computation."""

    table: pd.DataFrame
    by_dataset: dict

    def __str__(self) -> str:
        lines = []
        for name, d in self.by_dataset.items():
            lines.append(f"{name}: spent epsilon {d['spent_epsilon']:.4g} of {d['total_epsilon']:g} "
                         f"(remaining {d['remaining_epsilon']:.4g}), delta {d['spent_delta']:.3g}, "
                         f"in {d['computations']} computations")
        return "\n".join(lines)


def summarize_ledger(path: str | os.PathLike) -> LedgerSummary:
    """Answer "what did this data pay, and where" from a ledger file alone.

    Returns:
        :class:`LedgerSummary`: per computation (timestamp, data set, step, techniques,
        epsilon, delta, accounting method, spent and remaining epsilon, quality) and per
        data set (total, spent, remaining, number of computations; epsilon summed by basic composition).

    Used in: chapters 12, 13.
    """
    rows = []
    for r in Ledger(path).records():
        m = r.metadata
        rows.append({"timestamp": r.timestamp, "dataset": m.get("dataset", ""), "privacy_unit": m.get("privacy_unit", ""),
                     "neighbouring": m.get("neighbouring", ""), "step": r.query,
                     "techniques": ", ".join(m.get("techniques", [])), "epsilon": r.epsilon, "delta": r.delta,
                     "accounting_method": m.get("accounting_method", r.accounting),
                     "spent_epsilon": r.spent_epsilon, "remaining_epsilon": r.remaining_epsilon,
                     "total_epsilon": m.get("total_epsilon",
                                            math.nan if r.total_epsilon is None else r.total_epsilon),
                     **{f"quality_{k}": v for k, v in m.get("model_quality", {}).items()}})
    table = pd.DataFrame(rows)
    by = {}
    for name, g in (table.groupby("dataset", sort=False) if len(table) else []):
        total = float(g["total_epsilon"].iloc[-1])
        spent = math.fsum(g["epsilon"])
        by[name] = {"total_epsilon": total, "spent_epsilon": spent, "remaining_epsilon": max(0.0, total - spent),
                    "spent_delta": math.fsum(g["delta"]), "computations": len(g),
                    "epsilon_by_technique": g.groupby("techniques", sort=False)["epsilon"].sum().to_dict()}
    return LedgerSummary(table=table, by_dataset=by)
