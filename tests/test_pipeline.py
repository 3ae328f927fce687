"""The MediCore pipeline: a configuration that validates itself, and a ledger that answers the regulator."""

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.budget import BudgetExceededError, summarize_ledger
from privlab.pipeline import (
    CommunicationPrivacyOnlyWarning,
    NoFormalGuaranteeWarning,
    PrivacyConfig,
    PrivacyConfigWarning,
    PrivacyPipeline,
)

MEDICORE = dict(total_epsilon=3.0, delta=1e-6, dpsgd_target_epsilon=2.0, federated=True, n_clients=15,
                local_epochs=3, rounds=50, secure_aggregation=True)


def test_medicore_validates_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyConfigWarning)
        cfg = PrivacyConfig(**MEDICORE)
    assert cfg.reserve_epsilon == pytest.approx(1.0)
    assert cfg.techniques() == ["DP-SGD", "federated learning", "secure aggregation"]
    assert any("communication privacy" in n and "not output privacy" in n for n in cfg.notes)


def test_over_budget_dpsgd_target_refused():
    with pytest.raises(ValueError, match=r"exceed total_epsilon = 3: dpsgd_target_epsilon = 3.5 \+"):
        PrivacyConfig(**{**MEDICORE, "dpsgd_target_epsilon": 3.5})
    with pytest.raises(ValueError, match="exceed total_epsilon"):
        PrivacyConfig(**{**MEDICORE, "synthetic_data": True, "synthetic_dp_epsilon": 1.5})
    # synthetic data alone over the budget, no DP-SGD target: a ValueError (it was a TypeError formatting None)
    with pytest.raises(ValueError, match=r"dpsgd_target_epsilon = 0 \+ synthetic_dp_epsilon = 5"):
        PrivacyConfig(**{**MEDICORE, "dpsgd_target_epsilon": None, "synthetic_data": True,
                         "synthetic_dp_epsilon": 5.0})


def test_warnings_fire_where_they_should():
    with pytest.warns(CommunicationPrivacyOnlyWarning):
        cfg = PrivacyConfig(**{**MEDICORE, "dpsgd_target_epsilon": None})
    assert any("communication privacy only" in n for n in cfg.notes)
    with pytest.warns(NoFormalGuaranteeWarning):
        PrivacyConfig(total_epsilon=1.0, delta=1e-6, synthetic_data=True)
    with warnings.catch_warnings():  # client-level DP or a DP generator: no warning
        warnings.simplefilter("error", PrivacyConfigWarning)
        PrivacyConfig(**{**MEDICORE, "dpsgd_target_epsilon": None, "client_level_dp": True})
        PrivacyConfig(total_epsilon=1.0, delta=1e-6, synthetic_data=True, synthetic_dp_epsilon=0.5)


@pytest.mark.parametrize("bad", [
    {"delta": 0.0}, {"delta": 1.0}, {"total_epsilon": 0.0}, {"total_epsilon": -1.0}, {"rounds": None},
    {"n_clients": 0}, {"federated": False}, {"dpsgd_accountant": "basic"},
])
def test_invalid_configs(bad):
    with pytest.raises(ValueError):
        PrivacyConfig(**{**MEDICORE, **bad})


@settings(max_examples=30, deadline=None)
@given(total=st.floats(0.1, 20), frac=st.floats(0.0, 2.0))
def test_target_within_budget_property(total, frac):
    target = total * frac
    if target <= 0:
        return
    if target <= total:
        assert PrivacyConfig(total_epsilon=total, delta=1e-6, dpsgd_target_epsilon=target).reserve_epsilon >= -1e-9
    elif target > total * (1 + 1e-9):
        with pytest.raises(ValueError, match="exceed total_epsilon"):
            PrivacyConfig(total_epsilon=total, delta=1e-6, dpsgd_target_epsilon=target)


def test_ledger_answers_the_regulator(tmp_path):
    path = tmp_path / "medicore.jsonl"
    cfg = PrivacyConfig(**MEDICORE)
    pipe = PrivacyPipeline(cfg, dataset="medicore-ehr", ledger=path)
    pipe.record("cohort counts", epsilon=0.5, techniques=["Laplace"], accounting="laplace",
                quality={"mean_abs_error": 2.1})
    pipe.record("federated DP-SGD model", epsilon=2.0, delta=1e-7,
                techniques=["DP-SGD", "federated learning", "secure aggregation"], accounting="pld",
                quality={"auc": 0.81}, details={"clients": 15, "rounds": 50, "local_epochs": 3})
    with pytest.raises(BudgetExceededError):
        pipe.record("extra query", epsilon=0.6, techniques=["Laplace"], accounting="laplace")
    # a fresh process reads only the ledger file
    summary = summarize_ledger(path)
    d = summary.by_dataset["medicore-ehr"]
    assert d["spent_epsilon"] == pytest.approx(2.5) and d["remaining_epsilon"] == pytest.approx(0.5)
    assert d["total_epsilon"] == 3.0 and d["computations"] == 2
    assert d["epsilon_by_technique"]["DP-SGD, federated learning, secure aggregation"] == pytest.approx(2.0)
    t = summary.table
    assert list(t["step"]) == ["cohort counts", "federated DP-SGD model"]
    assert list(t["accounting_method"]) == ["laplace", "pld"]
    assert t["quality_auc"].iloc[1] == pytest.approx(0.81)
    assert t["remaining_epsilon"].iloc[-1] == pytest.approx(0.5)
    assert all(isinstance(ts, str) and "T" in ts for ts in t["timestamp"])
    assert "spent epsilon 2.5 of 3" in str(summary)
    # the odometer replays the ledger: a reopened pipeline knows what was spent
    again = PrivacyPipeline(cfg, dataset="medicore-ehr", ledger=path)
    assert math.isclose(again.odometer.spent_epsilon, 2.5)


def test_client_level_dp_says_its_epsilon_is_not_in_the_plan():
    cfg = PrivacyConfig(total_epsilon=3.0, delta=1e-6, federated=True, n_clients=15, local_epochs=3, rounds=50,
                        client_level_dp=True)
    assert cfg.dp_training and cfg.reserve_epsilon == 3.0
    assert any("not counted in reserve_epsilon" in n for n in cfg.notes)


def test_red_team_pipeline_findings(tmp_path):
    """A red-team read: 'False' (truthy) was reported as client-level DP; a bare string of techniques was
    stored letter by letter; two data sets (or units) on one ledger shared one budget while the summary
    showed two; records did not say whom their epsilon protects."""
    for flag in ("federated", "client_level_dp", "secure_aggregation", "synthetic_data"):
        with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'False'"):
            PrivacyConfig(**{**MEDICORE, flag: "False"})
    with pytest.raises(ValueError, match=r"neighbouring must be one of \('add/remove', 'replace-one'\)"):
        PrivacyConfig(**MEDICORE, neighbouring="substitution")
    with pytest.raises(ValueError, match="privacy_unit must be a non-empty string"):
        PrivacyConfig(**MEDICORE, privacy_unit="")
    assert PrivacyConfig(**{**MEDICORE, "n_clients": 15.0}).n_clients == 15 and isinstance(
        PrivacyConfig(**{**MEDICORE, "n_clients": 15.0}).n_clients, int)
    path = tmp_path / "ledger.jsonl"
    pipe = PrivacyPipeline(PrivacyConfig(**MEDICORE), dataset="ehr", ledger=path)
    with pytest.raises(ValueError, match="techniques must be a list of names, got the string 'DP-SGD'"):
        pipe.record("model", epsilon=0.5, techniques="DP-SGD", accounting="pld")
    rec = pipe.record("model", epsilon=0.5, techniques=["DP-SGD"], accounting="pld")
    assert (rec.metadata["privacy_unit"], rec.metadata["neighbouring"]) == ("record", "add/remove")
    with pytest.raises(ValueError, match=r"record 1 \('model'\) is for data set 'ehr', privacy unit 'record'"):
        PrivacyPipeline(PrivacyConfig(**MEDICORE), dataset="claims", ledger=path)
    with pytest.raises(ValueError, match="this pipeline is for 'ehr', 'user'"):
        PrivacyPipeline(PrivacyConfig(**MEDICORE, privacy_unit="user"), dataset="ehr", ledger=path)
    row = summarize_ledger(path).table.iloc[0]
    assert (row["privacy_unit"], row["neighbouring"]) == ("record", "add/remove")


def test_two_pipelines_opened_before_either_spends_cannot_share_a_ledger(tmp_path):
    """A review of the fix above: checked at opening only, two pipelines for different data sets opened
    on an empty ledger both spent from it. The check now runs on every read, also under the lock."""
    import json

    from privlab.budget import Ledger

    path = tmp_path / "ledger.jsonl"
    a = PrivacyPipeline(PrivacyConfig(**MEDICORE), dataset="ehr", ledger=path)
    b = PrivacyPipeline(PrivacyConfig(**MEDICORE), dataset="claims", ledger=path)
    a.record("model", epsilon=1.0, techniques=["DP-SGD"], accounting="pld")
    with pytest.raises(ValueError, match=r"record 1 \('model'\) is for data set 'ehr'"):
        b.record("model", epsilon=1.0, techniques=["DP-SGD"], accounting="pld")
    assert len(Ledger(path)) == 1  # nothing spent by b
    # a record written before the unit was recorded was record-level and add/remove
    lines = path.read_text().splitlines()
    old = json.loads(lines[0])
    del old["metadata"]["privacy_unit"], old["metadata"]["neighbouring"]
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(ValueError, match="privacy unit 'record', add/remove neighbours"):
        PrivacyPipeline(PrivacyConfig(**MEDICORE, privacy_unit="user"), dataset="ehr", ledger=path)
    assert PrivacyPipeline(PrivacyConfig(**MEDICORE), dataset="ehr", ledger=path).odometer.spent_epsilon == 1.0
    cfg = PrivacyConfig(**{**MEDICORE, "secure_aggregation": __import__("numpy").True_})
    assert cfg.secure_aggregation is True  # stored as a bool (a numpy bool broke to_dict's JSON)


def test_a_step_over_its_planned_epsilon_warns_with_the_numbers(tmp_path):
    from privlab.pipeline import OverPlanWarning

    cfg = PrivacyConfig(total_epsilon=3, delta=1e-6, dpsgd_target_epsilon=2)
    pipe = PrivacyPipeline(cfg, dataset="d", ledger=tmp_path / "l.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.record("train", epsilon=2.0, techniques=["DP-SGD"], accounting="pld")  # at the plan: silent
        pipe.record("counts", epsilon=0.5, techniques=["Laplace"], accounting="laplace")  # another technique
    with pytest.warns(OverPlanWarning, match=r"on DP-SGD to 2.25, over the plan's 2; 0.25 of the total 3"):
        pipe.record("train again", epsilon=0.25, techniques=["DP-SGD"], accounting="pld")
