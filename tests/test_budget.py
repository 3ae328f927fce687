"""The privacy odometer and the append-only ledger."""

from __future__ import annotations

import json
import math
import multiprocessing
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.accounting import GaussianEvent, LaplaceEvent, PoissonSampledEvent, epsilon
from privlab.budget import BudgetExceededError, Ledger, LedgerRecord, PrivacyOdometer

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
    odo.spend("c", epsilon=0.1)  # exactly at the budget is allowed
    assert odo.remaining_epsilon == pytest.approx(0.0, abs=1e-12)


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
                odo.spend(f"q{n}", epsilon=0.01)
                n += 1
        except BudgetExceededError:
            pass
        return n

    assert admitted(basic) == 100
    assert admitted(advanced) > 300  # eps sqrt(2k ln(1/delta')) + k eps (e^eps - 1) <= 1 up to k ~ 370


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
    assert odo.spent_epsilon == pytest.approx(epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=3,
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
    with pytest.warns(UserWarning, match="torn last line"):
        kept = ledger.records()
    assert [r.query for r in kept] == ["q0", "q1"]
    # appending after the crash starts a fresh line; the torn fragment stays skipped
    ledger.append(LedgerRecord("q3", epsilon=0.2))
    with pytest.warns(UserWarning, match="unreadable line 3"):
        assert [r.query for r in ledger.records()] == ["q0", "q1", "q3"]
    with pytest.warns(UserWarning):
        odo = PrivacyOdometer(total_epsilon=1.0, total_delta=1e-6, ledger=ledger)
    assert odo.spent_epsilon == pytest.approx(0.4)


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
