"""The privacy odometer and the append-only ledger."""

from __future__ import annotations

import json
import math
import multiprocessing
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.accounting import GaussianEvent, LaplaceEvent, PoissonSampledEvent, dpsgd_epsilon
from privlab.budget import BudgetExceededError, Ledger, LedgerCorruptError, LedgerRecord, PrivacyOdometer

settings.register_profile("budget", max_examples=30, deadline=None)
settings.load_profile("budget")


# ----- the odometer ---------------------------------------------------------------------------
def test_refusal_says_by_how_much_and_records_nothing():
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
    odo.spend("a", epsilon=0.4)
    odo.spend("b", epsilon=0.5)
    with pytest.raises(BudgetExceededError, match=r"epsilon to 1\.2, over the budget of 1 by 0\.2"):
        odo.spend("c", epsilon=0.3)
    assert issubclass(BudgetExceededError, ValueError)
    assert [r.query for r in odo.records] == ["a", "b"]
    assert odo.spent_epsilon == pytest.approx(0.9) and odo.remaining_epsilon == pytest.approx(0.1)
    # the floats 0.4 + 0.5 + 0.1 sum to 1 + 2.8e-17 exactly: over the budget, so refused
    with pytest.raises(BudgetExceededError, match="by 2.77556e-17"):
        odo.spend("c", epsilon=0.1)
    odo.spend("c", epsilon=odo.remaining_epsilon)  # the remainder, rounded down, is exactly at the budget
    assert odo.remaining_epsilon == 0.0
    with pytest.raises(BudgetExceededError):
        odo.spend("d", epsilon=5e-324)


def test_no_overspend_at_all():
    # issue 13, defect 4(c): a relative tolerance of 1e-12 accepted 0.5 + (0.5 + 5e-13) on a budget of 1
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
    odo.spend("a", epsilon=0.5)
    with pytest.raises(BudgetExceededError, match="over the budget of 1 by 5"):
        odo.spend("b", epsilon=0.5 + 5e-13)
    odo.spend("b", epsilon=0.5)  # exactly at the budget is allowed
    assert odo.remaining_epsilon == 0.0 and odo.spent_epsilon == 1.0
    d = PrivacyOdometer(total_epsilon=10.0, total_delta=1e-6)
    d.spend("a", epsilon=0.1, delta=5e-7)
    with pytest.raises(BudgetExceededError, match="delta"):
        d.spend("b", epsilon=0.1, delta=5e-7 * (1 + 1e-12))
    # a Laplace event of scale b costs exactly 1/b: three of scale 3 fill a budget of 1, a fourth of any size does not
    lap = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
    for i in range(3):
        lap.spend(f"l{i}", event=LaplaceEvent(3.0))
    assert lap.remaining_epsilon == 0.0
    with pytest.raises(BudgetExceededError):
        lap.spend("l3", event=LaplaceEvent(1e300))
    # other accountants: a strict comparison of their epsilon, no tolerance
    rdp = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, composition="rdp")
    spent = dpsgd_epsilon(noise_multiplier=5.0, sample_rate=1.0, steps=1, delta=1e-6, accountant="rdp")
    tight = PrivacyOdometer(total_epsilon=spent, total_delta=1e-6, composition="rdp")
    tight.spend("g", event=GaussianEvent(5.0))  # exactly at the budget
    with pytest.raises(BudgetExceededError):
        PrivacyOdometer(total_epsilon=math.nextafter(spent, 0.0), total_delta=1e-6, composition="rdp").spend(
            "g", event=GaussianEvent(5.0))
    assert rdp.spend("g", event=GaussianEvent(5.0)).spent_epsilon == spent


def test_delta_budget_is_enforced_too():
    odo = PrivacyOdometer(total_epsilon=10.0, total_delta=1e-6)
    odo.spend("a", epsilon=0.1, delta=6e-7)
    with pytest.raises(BudgetExceededError, match="delta to 1.2e-06, over the budget of 1e-06 by 2e-07"):
        odo.spend("b", epsilon=0.1, delta=6e-7)
    assert odo.spent_delta == pytest.approx(6e-7) and odo.remaining_delta == pytest.approx(4e-7)


def test_advanced_composition_odometer_admits_more_small_queries():
    basic = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-5)
    advanced = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-5, composition="advanced")

    def admitted(odo):
        n = 0
        try:
            while n < 2000:
                odo.spend(f"q{n}", epsilon=2**-7)
                n += 1
        except BudgetExceededError:
            pass
        return n

    assert admitted(basic) == 128  # 2^-7 is exact in binary (0.01 is not: 100 x 0.01 exceeds 1 by 2e-18)
    assert admitted(advanced) > 500  # eps sqrt(2k ln(1/delta')) + k eps (e^eps - 1) <= 1 up to k ~ 580


def test_report_under_every_accountant():
    odo = PrivacyOdometer(total_epsilon=3.0, total_delta=1e-5)
    for i in range(10):
        odo.spend(f"count {i}", epsilon=0.1, mechanism="laplace")
    report = odo.report()
    assert set(report) == {"basic", "advanced", "rdp", "zcdp", "pld"}
    assert report["basic"]["spent_epsilon"] == pytest.approx(1.0)
    assert report["basic"]["remaining_epsilon"] == pytest.approx(2.0)
    # the tighter accountants certify less spent for the same queries
    assert report["pld"]["spent_epsilon"] < report["basic"]["spent_epsilon"]
    for entry in report.values():
        assert entry["spent_epsilon"] + entry["remaining_epsilon"] == pytest.approx(3.0)


def test_odometer_with_mechanism_events_under_rdp():
    odo = PrivacyOdometer(total_epsilon=8.0, total_delta=1e-5, composition="rdp")
    step = PoissonSampledEvent(0.01, GaussianEvent(1.0))
    for epoch in range(3):
        record = odo.spend(f"epoch {epoch}", event=type(step)(step.sample_rate, step.event), mechanism="dpsgd",
                           metadata={"steps": 1})
    assert record.accounting == "rdp" and record.event["type"] == "PoissonSampledEvent"
    assert odo.report()["zcdp"] is None  # zCDP cannot analyse a subsampled Gaussian
    assert odo.spent_epsilon == pytest.approx(dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=3,
                                                            delta=1e-5, accountant="rdp"))
    with pytest.raises(ValueError, match="cannot analyse"):
        PrivacyOdometer(total_epsilon=1.0, total_delta=1e-5, composition="zcdp").spend("x", event=step)


@given(eps=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)),
       delta=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan)))
def test_bad_budgets_and_queries(eps, delta):
    with pytest.raises(ValueError, match="total_epsilon"):
        PrivacyOdometer(total_epsilon=eps, total_delta=1e-6)
    with pytest.raises(ValueError, match="total_delta"):
        PrivacyOdometer(total_epsilon=1.0, total_delta=delta)
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
    with pytest.raises(ValueError, match="epsilon"):
        odo.spend("q", epsilon=eps)
    assert odo.records == ()


def test_bad_composition_and_arguments():
    with pytest.raises(ValueError, match="composition"):
        PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, composition="moments")
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6)
    with pytest.raises(ValueError, match="either epsilon"):
        odo.spend("q", epsilon=0.1, event=LaplaceEvent(10.0))
    with pytest.raises(ValueError, match="epsilon"):
        odo.spend("q")
    with pytest.raises(ValueError, match="query"):
        odo.spend("", epsilon=0.1)
    # a red-team finding: the delta given with an event was dropped silently (recorded as 0)
    with pytest.raises(ValueError, match=r"delta only with epsilon, not with an event \(got delta=0.5\)"):
        odo.spend("q", event=LaplaceEvent(10.0), delta=0.5)
    with pytest.raises(ValueError, match="got delta=1e-07"):
        odo.check("q", event=LaplaceEvent(10.0), delta=1e-7)


# ----- the ledger -------------------------------------------------------------------------------
def test_reloading_the_ledger_reproduces_the_totals(tmp_path):
    path = tmp_path / "ledger.jsonl"
    odo = PrivacyOdometer(total_epsilon=5.0, total_delta=1e-5, composition="advanced", ledger=path)
    for i in range(5):
        odo.spend(f"q{i}", epsilon=0.1 * (i + 1), delta=1e-7, mechanism="laplace",
                  metadata={"techniques": ["dp-sgd"], "recall@20": 0.18})
    again = PrivacyOdometer(total_epsilon=5.0, total_delta=1e-5, composition="advanced", ledger=path)
    assert again.spent_epsilon == odo.spent_epsilon and again.spent_delta == odo.spent_delta
    assert [r.query for r in again.records] == [f"q{i}" for i in range(5)]
    assert again.records[-1].metadata == {"techniques": ["dp-sgd"], "recall@20": 0.18}
    assert Ledger(path).totals() == pytest.approx((1.5, 5e-7))
    with pytest.raises(BudgetExceededError):  # the reloaded odometer still enforces the budget
        again.spend("big", epsilon=4.0)


def test_records_carry_the_audit_fields(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=ledger)
    odo.spend("mean wage", epsilon=0.25, mechanism="laplace", metadata={"site": "Boston"})
    line = json.loads((tmp_path / "l.jsonl").read_text().strip())
    assert {"timestamp", "query", "epsilon", "delta", "mechanism", "accounting", "metadata", "event",
            "spent_epsilon", "remaining_epsilon"} <= set(line)
    assert line["remaining_epsilon"] == pytest.approx(0.75) and line["metadata"] == {"site": "Boston"}


def test_unserialisable_metadata_is_refused_before_anything_is_written(tmp_path):
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="JSON"):
        odo.spend("q", epsilon=0.1, metadata={"model": object()})
    assert odo.records == () and not (tmp_path / "l.jsonl").exists()


def test_a_crash_mid_write_loses_nothing_already_recorded(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    for i in range(3):
        ledger.append(LedgerRecord(f"q{i}", epsilon=0.1))
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # the last append was interrupted half-way through its line
    with pytest.warns(UserWarning, match="torn last line 3"):
        kept = ledger.records()
    assert [r.query for r in kept] == ["q0", "q1"]
    # the next append removes the fragment (never acknowledged, so never answered) and starts a clean line
    with pytest.warns(UserWarning, match="torn last line"):
        ledger.append(LedgerRecord("q3", epsilon=0.2))
    assert [r.query for r in ledger.records()] == ["q0", "q1", "q3"]
    assert path.read_bytes().count(b"\n") == 3 and path.read_bytes().endswith(b"\n")
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=ledger)
    assert odo.spent_epsilon == pytest.approx(0.4)
    # a whole record whose newline was lost is kept, and the next record goes on a line of its own
    path.write_bytes(path.read_bytes()[:-1])
    ledger.append(LedgerRecord("q4", epsilon=0.05))
    assert [r.query for r in ledger.records()] == ["q0", "q1", "q3", "q4"]


@pytest.mark.parametrize("damage", ["middle", "last_with_newline", "bad_schema"])
def test_an_unreadable_line_fails_closed(tmp_path, damage):
    # issue 13, defect 4(b): unreadable lines were skipped with a warning, so the budget they spent vanished
    path = tmp_path / "ledger.jsonl"
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)
    for i in range(3):
        odo.spend(f"q{i}", epsilon=0.3)
    lines = path.read_bytes().split(b"\n")
    if damage == "middle":
        lines[1] = lines[1][:40]  # line 2 cut short (a disk error, an editor, a bad merge)
        where = "line 2"
    elif damage == "last_with_newline":
        lines[2] = b"not json"  # a complete (newline-terminated) line that is no record
        where = "line 3"
    else:
        lines[0] = json.dumps({"v": 999, "query": "x", "epsilon": 0.3}).encode()
        where = "line 1"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerCorruptError, match=where):
        Ledger(path).records()
    with pytest.raises(LedgerCorruptError, match=where):
        PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)
    with pytest.raises(LedgerCorruptError, match=where):
        odo.spend("q3", epsilon=0.05)  # the odometer re-reads the ledger before spending: refused too
    assert issubclass(LedgerCorruptError, ValueError)


def test_two_odometers_on_one_ledger_share_the_budget(tmp_path):
    # issue 13, defect 4(a): each odometer checked only its own replay, so both accepted 0.6 (ledger total 1.2)
    path = tmp_path / "ledger.jsonl"
    a = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)
    b = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)
    a.spend("a", epsilon=0.6)
    with pytest.raises(BudgetExceededError, match="epsilon to 1.2"):
        b.spend("b", epsilon=0.6)
    assert Ledger(path).totals()[0] == pytest.approx(0.6)
    b.spend("b", epsilon=0.25)  # b now knows a's spending
    assert b.spent_epsilon == pytest.approx(0.85) and a.refresh().spent_epsilon == pytest.approx(0.85)


@pytest.mark.parametrize("other", [dict(total_epsilon=10.0, total_delta=1e-6),
                                   dict(total_epsilon=1.0, total_delta=1e-5),
                                   dict(total_epsilon=1.0, total_delta=1e-6, composition="advanced")])
def test_an_odometer_with_another_budget_or_composition_refuses_the_ledger(tmp_path, other):
    """A red-team finding: each odometer checks only its own budget, so a second one with a total of 10
    on the ledger of a first with a total of 1 spent 5.0, and the first then read 5.9 of 1."""
    path = tmp_path / "ledger.jsonl"
    PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path).spend("a", epsilon=0.9)
    with pytest.raises(ValueError, match=r"record 1 \('a'\) was accepted against a budget of epsilon 1.0, "
                                         r"delta 1e-06 under basic composition, but this odometer has"):
        PrivacyOdometer(ledger=path, **other)
    assert len(Ledger(path)) == 1  # nothing was spent
    Ledger(path).append(LedgerRecord("by hand", epsilon=0.05))  # no budget recorded: replayed as spent
    same = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)
    assert same.spent_epsilon == pytest.approx(0.95)
    assert same.spend("b", epsilon=same.remaining_epsilon).total_epsilon == 1.0


def _spend_from_shared_ledger(path: str, barrier, results, worker: int) -> None:
    odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=path)  # replays the (empty) ledger
    barrier.wait()  # every process has loaded the ledger before anyone spends
    try:
        odo.spend(f"w{worker}", epsilon=0.6)
        results.put((worker, "accepted"))
    except BudgetExceededError:
        results.put((worker, "refused"))


def test_odometers_in_several_processes_never_overspend(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_spend_from_shared_ledger, args=(path, barrier, results, w)) for w in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(o for _, o in outcomes) == ["accepted"] + ["refused"] * (n - 1)
    assert Ledger(path).totals()[0] == pytest.approx(0.6) and len(Ledger(path)) == 1


def _append_many(path: str, worker: int, n: int) -> None:
    ledger = Ledger(path)
    for i in range(n):
        ledger.append(LedgerRecord(f"w{worker}-{i}", epsilon=0.001, metadata={"pad": "x" * 500}))


def test_concurrent_appends_from_several_processes_do_not_interleave(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 161
    queries = {json.loads(line)["query"] for line in lines[:-1]}  # every line is one whole record
    assert queries == {f"w{w}-{i}" for w in range(4) for i in range(40)}


def test_missing_ledger_is_empty(tmp_path):
    assert Ledger(tmp_path / "none.jsonl").records() == []
    assert os.path.exists(tmp_path) and len(Ledger(tmp_path / "none.jsonl")) == 0


def test_nested_deltas_count_against_the_budget():
    """A composed, self-composed or Poisson-sampled (epsilon, delta) query spends its leaves' deltas
    (a red-team read found them read as 0: 100 queries of delta 1e-3 passed a budget of 1e-5)."""
    from privlab.accounting import ComposedEvent, EpsilonDeltaEvent, PoissonSampledEvent, SelfComposedEvent

    for event in (SelfComposedEvent(EpsilonDeltaEvent(0.01, 1e-3), 100),
                  ComposedEvent((EpsilonDeltaEvent(0.01, 0.5),)),
                  PoissonSampledEvent(1.0, EpsilonDeltaEvent(0.01, 1e-4))):
        odo = PrivacyOdometer(total_epsilon=2.0, total_delta=1e-5)
        with pytest.raises(BudgetExceededError, match="delta"):
            odo.spend("q", event=event)
        assert odo.spent_delta == 0.0
    odo = PrivacyOdometer(total_epsilon=2.0, total_delta=1e-5)
    record = odo.spend("q", event=SelfComposedEvent(EpsilonDeltaEvent(0.01, 1e-8), 100))
    assert record.delta == pytest.approx(1e-6) and odo.spent_delta == pytest.approx(1e-6)
    sampled = PoissonSampledEvent(0.1, EpsilonDeltaEvent(0.5, 1e-6))
    assert float(PrivacyOdometer._delta_of([sampled])) == pytest.approx(1e-7)
