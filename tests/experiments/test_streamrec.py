"""The StreamRec experiment: CLI end to end at smoke scale, and its helpers (threshold, convergence epoch)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.cli import main
from privlab.provenance import to_jsonable
from privlab.experiments.streamrec import (
    accounting_study,
    calibrate_sigma,
    convergence_epoch,
    streamrec_profile,
    threshold_table,
)  # fmt: skip


def test_cli_smoke_writes_results_and_figures(tmp_path, capsys):
    rc = main(["streamrec", "--scale", "smoke", "--epsilons", "3", "inf", "--out", str(tmp_path),
               "--no-studies", "--no-progress"])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"configuration", "machine", "versions", "commit", "runs", "threshold", "timing", "privacy_unit",
            "baselines", "public_proxy"} <= set(res)
    assert "interaction" in res["privacy_unit"]["sweep"] and "user" in res["privacy_unit"]["user_level"]
    base_r = res["baselines"]
    assert 0 < base_r["random"]["recall@20"] < base_r["oracle"]["recall@20"] <= 1
    # C and the prior come from the public proxy, never a training seed
    assert res["public_proxy"]["proxy_seed"] != res["configuration"]["seed"]
    assert res["configuration"]["max_grad_norm"] == res["public_proxy"]["max_grad_norm"] > 0
    assert res["configuration"]["delta_used"] == 1 / (100 * res["data"]["n_train"])
    assert res["configuration"]["scale"] == "smoke" and res["configuration"]["epsilons"] == [3.0, "inf"]
    assert {"platform", "cpu_count", "cuda_device"} <= set(res["machine"])
    assert res["versions"]["torch"] and res["versions"]["privlab"]
    assert len(res["runs"]) == 2
    dp, base = res["runs"]
    for r in res["runs"]:
        assert set(r["metrics"]) == {"accuracy", "auc", "f1", "recall@20", "ndcg@20"}
        assert {"power_users", "casual", "new_users", "eu_market", "us_market", "jp_market"} == set(r["segments"])
        assert r["wall_seconds"] > 0 and 1 <= r["convergence_epoch"] <= r["epochs"]
        assert len(r["losses"]) == r["epochs"] and r["final_loss"] == r["losses"][-1] == r["train_loss"][-1]
        assert r["privacy_unit"] == "interaction" and r["loss_falls"] and r["both_classes_predicted"]
        assert abs(r["mean_logit"] - r["prior_log_odds"]) < 1.5
        assert 0 <= r["metrics"]["recall@20"] <= 1
    assert dp["epsilon_target"] == 3.0 and dp["sigma"] > 0
    assert dp["epsilon_pld"] <= 3.0 * (1 + 1e-3) and dp["epsilon_rdp"] >= dp["epsilon_pld"]
    gn = dp["grad_norms"]
    assert gn["p95"] >= gn["median"] > 0 and 0 <= gn["fraction_clipped"] == dp["fraction_clipped"] <= 1
    assert base["epsilon_target"] == "inf" and base["sigma"] == 0 and base["grad_norms"] is None
    assert base["fraction_clipped"] is None
    assert len(res["threshold"]) == 7  # overall + 3 segments + 3 markets
    assert {p.name for p in tmp_path.glob("*.png")} == {"utility_vs_epsilon.png", "segment_recall.png",
                                                         "loss_curves.png"}  # fmt: skip


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["streamrec", "--help"])
    assert exc.value.code == 0
    assert "--epsilons" in capsys.readouterr().out


def test_cli_bad_epsilon_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["streamrec", "--scale", "smoke", "--epsilons", "-1", "--out", str(tmp_path), "--no-progress"])
    assert exc.value.code == 2


def test_threshold_table_logic():
    rec = pd.DataFrame({"1": [0.17, 0.10, 0.30], "8": [0.19, 0.09, 0.31], "inf": [0.2, 0.1, 0.3]},
                       index=["overall", "new_users", "casual"])  # fmt: skip
    t = threshold_table(rec)
    np.testing.assert_allclose(t["threshold"], [0.18, 0.09, 0.27])
    assert t["1_pass"].tolist() == [False, True, True]
    assert t["8_pass"].tolist() == [True, True, True]  # exactly at 90% passes
    np.testing.assert_allclose(t["1_ratio"], [0.85, 1.0, 1.0])
    with pytest.raises(ValueError, match="baseline"):
        threshold_table(rec.drop(columns="inf"))


def test_convergence_epoch():
    assert convergence_epoch([0.5]) == 1
    assert convergence_epoch([1.0, 0.7, 0.6, 0.601, 0.6]) == 3
    assert convergence_epoch([0.6, 0.9, 0.6]) == 3  # leaving the band resets it
    assert convergence_epoch([1.0, 0.55, 0.5], rel_tol=0.2) == 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=20))
def test_convergence_epoch_is_in_range_and_band_holds(losses):
    k = convergence_epoch(losses)
    assert 1 <= k <= len(losses)
    assert all(abs(x - losses[-1]) <= 0.01 * losses[-1] for x in losses[k - 1:])


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_convergence_epoch_rejects_bad_losses(bad):
    with pytest.raises(ValueError):
        convergence_epoch(bad)


def test_calibrate_sigma_and_accounting_study():
    q, steps, delta = 4096 / 5e7, 183_105, 1e-7
    cal = calibrate_sigma(1.0, sample_rate=q, steps=steps, delta=delta)
    assert cal["epsilon_pld"] <= 1.0 + 1e-3 and cal["epsilon_rdp"] > cal["epsilon_pld"]
    assert calibrate_sigma(math.inf, sample_rate=q, steps=steps, delta=delta)["sigma"] == 0.0
    acc = accounting_study(sigma=cal["sigma"], sample_rate=q, steps=steps, delta=delta)
    assert acc["pld"] <= acc["rdp"] <= acc["basic"]


def test_profiles_and_json():
    p = streamrec_profile("paper")
    assert (p.batch_size, p.epochs, p.max_grad_norm, p.lr, p.delta) == (4096, 15, None, 5e-4, None)
    assert p.published_clip_norm == 1.0
    assert streamrec_profile("smoke").delta_for(1000) == 1e-5  # 1/(100 N): well below 1/N
    assert to_jsonable({"a": np.float32(1.5), "b": float("inf"), "c": np.arange(2)}) == {"a": 1.5, "b": "inf",
                                                                                       "c": [0, 1]}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_streamrec():
    from privlab.config import make_rng
    from privlab.datasets.streamrec import StreamRecConfig, generate_streamrec

    cfg = StreamRecConfig.for_scale("smoke", n_interactions=4_000, n_users=300, n_items=100, n_eval_users=50)
    return generate_streamrec("smoke", rng=make_rng(0), config=cfg, progress=False)


def test_clip_study_reports_each_runs_own_fraction_clipped(tiny_streamrec):
    from privlab.experiments.streamrec import clip_study, torch_threads
    from privlab.experiments.streamrec_report import clip_table

    prof = streamrec_profile("smoke", clip_norms=(0.01, 1.0, 1e4), batch_size=512, epochs=1)
    with torch_threads(1):
        runs = clip_study(tiny_streamrec, profile=prof, seed=0, progress=False)
    assert [r["max_grad_norm"] for r in runs] == [0.01, 1.0, 1e4]
    table = clip_table(runs, baseline_recall=0.5)
    for (_, row), r in zip(table.iterrows(), runs):
        gn = r["grad_norms"]
        # each row: the fraction of its own run's norms above its own C
        assert row["fraction clipped"] == gn["fraction_clipped"] == gn["fraction_clipped_at"][str(r["max_grad_norm"])]
        assert row["median norm"] == gn["median"]
    frac = table["fraction clipped"].to_numpy()
    assert frac[0] == 1.0 and frac[2] == 0.0  # C far below / far above every norm
    # not one run's profile copied to every row: each run saw its own norms
    assert len(set(table["median norm"])) == 3
    # the runs differ: each row trained with its own C
    assert len({r["metrics"]["auc"] for r in runs}) == 3


def test_clip_study_reuses_the_matching_sweep_run(tiny_streamrec):
    from privlab.experiments.streamrec import clip_study

    prof = streamrec_profile("smoke", clip_norms=(1.0,), epochs=1, study_epochs=None)
    sentinel = {"epsilon_target": prof.study_epsilon, "epochs": 1, "batch_size": prof.batch_size, "seed": 0,
                "max_grad_norm": 1.0, "clipping_only": False}  # fmt: skip
    assert clip_study(tiny_streamrec, profile=prof, seed=0, reuse=[sentinel], progress=False)[0] is sentinel
    # a different epoch count (the book profile's shorter clip study) must not reuse the sweep's run
    prof2 = streamrec_profile("smoke", clip_norms=(1.0,), epochs=2, study_epochs=1, batch_size=512)
    sweep_like = {**sentinel, "epochs": 2, "batch_size": 512}
    (rec,) = clip_study(tiny_streamrec, profile=prof2, seed=0, reuse=[sweep_like], progress=False)
    assert rec is not sweep_like and rec["epochs"] == 1
    # the clipping-only ablation: same C, sigma 0, clipping still applied and reported
    (only,) = clip_study(tiny_streamrec, profile=prof2, seed=0, noise=False, progress=False)
    assert only["sigma"] == 0 and only["clipping_only"] and only["fraction_clipped"] is not None


def test_random_recall_matches_monte_carlo(tiny_streamrec):
    from privlab.experiments.streamrec import random_recall
    from privlab.metrics import recall_at_k

    d = tiny_streamrec
    rng = np.random.default_rng(0)
    draws = [recall_at_k(d.cand_user, d.cand_label, rng.random(d.cand_user.size), k=20) for _ in range(200)]
    exact = random_recall(d.cand_user, d.cand_label, k=20)
    assert abs(np.mean(draws) - exact) < 4 * np.std(draws) / np.sqrt(200)


def test_user_level_run_and_privacy_over_time(tiny_streamrec):
    from privlab.experiments.streamrec import privacy_over_time, run_user_level, torch_threads

    prof = streamrec_profile("smoke", epochs=1, user_batch_size=32, user_max_rows=8)
    with torch_threads(1):
        rec = run_user_level(tiny_streamrec, epsilon=3.0, profile=prof, seed=0, max_grad_norm=5.0, progress=False)
    assert rec["privacy_unit"] == "user" and rec["sigma"] > 0 and rec["epsilon_pld"] <= 3.0 * 1.001
    assert rec["n_units"] == np.unique(tiny_streamrec.train_user).size
    assert rec["delta"] == 1 / (100 * rec["n_units"]) and rec["n_train"] <= 8 * rec["n_units"]
    t = privacy_over_time(rec)
    assert rec["epsilon_pld"] < t["per_30_days"] < t["per_year"]
    ex = privacy_over_time({**rec, "privacy_unit": "interaction"}, rows=130)
    assert ex["group_30_days"][0] == pytest.approx(130 * ex["per_row_window"]) and ex["user_rows_year"] == 1582


def test_torch_threads_restores():
    import torch

    from privlab.experiments.streamrec import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"), torch_threads(0):
        pass


def test_public_proxy_keeps_the_private_rows_per_user():
    from privlab.experiments.streamrec import public_proxy

    p = streamrec_profile("smoke", n_interactions=6000, n_users=300, n_items=60, n_eval_users=60)
    full = public_proxy(p, seed=0)
    small = public_proxy(streamrec_profile("smoke", n_interactions=6000, n_users=300, n_items=60, n_eval_users=60,
                                           proxy_interactions=3000), seed=0)  # fmt: skip
    assert (full.config.n_users, small.config.n_users, small.config.n_eval_users) == (300, 150, 30)
    rows = [np.bincount(d.train_user)[np.unique(d.train_user)] for d in (full, small)]
    se = math.hypot(*(r.std(ddof=1) / math.sqrt(r.size) for r in rows))
    assert abs(rows[0].mean() - rows[1].mean()) < 3 * se  # the same rows per user, within 3 standard errors


# a whole sweep with its studies in a few seconds: one epsilon, one extra seed, tiny data
TINY_SWEEP = dict(n_interactions=4_000, n_users=300, n_items=100, n_eval_users=50, batch_size=512,
                  small_batch_size=256, clip_norms=(1.0,), seed_replicates=1, profile_epochs=1,
                  user_batch_size=32, user_max_rows=8)  # fmt: skip


@pytest.mark.parametrize("epochs, study_epochs", [(1, None), (2, 1)])
def test_study_seed_replicates_are_at_the_studies_epochs(epochs, study_epochs):
    from privlab.experiments.streamrec import run_sweep

    prof = streamrec_profile("smoke", epochs=epochs, study_epochs=study_epochs, **TINY_SWEEP)
    st = run_sweep(profile=prof, epsilons=(3,), progress=False)["studies"]
    sweep, study = st["seed_replicates"], st["study_seed_replicates"]
    assert len(sweep) == len(study) == 2 and len({r["seed"] for r in study}) == 2
    assert [r["seed"] for r in study] == [r["seed"] for r in sweep]
    large = st["batch_size"][1]
    assert study[0] is large is next(r for r in st["clip_norm"] if r["max_grad_norm"] == large["max_grad_norm"])
    assert all(r["epsilon_target"] == 3 and r["epochs"] == epochs for r in sweep)
    if study_epochs is None:
        # smoke-like: the studies train for the sweep's epochs, so their replicates are the sweep's runs
        assert all(a is b for a, b in zip(study, sweep))
        assert st["seconds_by_study"]["study_seed_replicates"] == 0.0
    else:
        # distinct runs of the studies' configuration: their epochs, the proxy's C, the large batch
        assert not any(a is b for a in study for b in sweep)
        for r in study:
            assert r["epochs"] == study_epochs == st["non_private"]["epochs"] and not r["clipping_only"]
            assert (r["max_grad_norm"], r["batch_size"], r["sigma"]) == (
                large["max_grad_norm"], large["batch_size"], large["sigma"])  # fmt: skip
        assert study[1]["metrics"] != study[0]["metrics"]  # another seed, another model
        assert st["seconds_by_study"]["study_seed_replicates"] == pytest.approx(study[1]["wall_seconds"])


def test_seed_replicates_rejects_what_it_cannot_replicate():
    from privlab.experiments.streamrec import seed_replicates

    prof = streamrec_profile("smoke")
    run = {"privacy_unit": "interaction", "epsilon_target": 3.0, "epochs": 1, "batch_size": 512,
           "max_grad_norm": 1.0, "clipping_only": False, "lr": prof.lr, "prior_log_odds": 0.0, "seed": 0}  # fmt: skip
    assert seed_replicates(None, run, profile=prof, n=0) == [run]
    with pytest.raises(ValueError, match="n must be"):
        seed_replicates(None, run, profile=prof, n=-1)
    with pytest.raises(ValueError, match="privacy unit"):
        seed_replicates(None, {**run, "privacy_unit": "user"}, profile=prof, n=1)
    with pytest.raises(ValueError, match="lr"):
        seed_replicates(None, {**run, "lr": 1.0}, profile=prof, n=1)


def test_selection_cost_composes_every_dp_run_trained_on_the_data():
    """With 3 (the studies' epsilon) outside the sweep and the studies' epochs apart from the sweep's, the
    studies train their epsilon-3 run separately: it was left out of the composed selection cost."""
    import math

    from privlab.experiments.streamrec import run_sweep, streamrec_profile

    prof = streamrec_profile("smoke", n_interactions=3000, n_users=150, n_items=80, n_eval_users=40, batch_size=256,
                             small_batch_size=128, epochs=2, study_epochs=1, user_batch_size=32, clip_norms=(1.0,),
                             seed_replicates=1, profile_epochs=1)
    res = run_sweep(profile=prof, epsilons=(1, math.inf), progress=False)
    st = res["studies"]
    trained = [*res["runs"], *st["clip_norm"], st["batch_size"][0], *st["seed_replicates"], *st["study_seed_replicates"]]
    dp = {id(r) for r in trained if r["sigma"] > 0}
    assert not any(r is st["seed_replicates"][0] for r in res["runs"])  # the separately trained run
    assert res["selection"]["candidates"] == len(dp)
    # RDP is looser than PLD on the same composition (the random-stopping bound's accountant)
    assert res["selection"]["composed_rdp"] >= res["selection"]["composed"]
