"""The batched privacy-cliff sweep equals privlab.dpsgd.train run by run; run counts; determinism."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.experiments.privacy_cliff import (
    CliffConfig,
    cliff_data,
    cliffs,
    reference_run,
    run_sweep,
    simplified_rdp_epsilon,
    summarize,
    validate,
)

DATA = cliff_data()


def _run_params(result, i):
    return [p[i] for p in result.params]


@pytest.mark.parametrize("mode", ["published", "corrected"])
def test_batched_runs_equal_privlab_train(mode, dtype=torch.float64, tol=1e-10):
    cfg = CliffConfig(mode=mode, dtype=dtype, epochs=2, sigmas=(0.0, 1.0, 10.0), clip_norms=(0.1, 10.0),
                      seeds=(42, 123))
    result = run_sweep(DATA, cfg, keep_params=True)
    picks = [0, 9, len(result.records) - 1]  # clip-only (C=0.1), noisy (C=10, sigma=10), a baseline
    for i in picks:
        rec = result.records[i]
        acc, model = reference_run(DATA, cfg, seed=rec["seed"], sigma=rec["sigma"], max_grad_norm=rec["C"])
        for ours, ref in zip(_run_params(result, i), model.parameters(), strict=True):
            np.testing.assert_allclose(ours.numpy(), ref.detach().numpy(), rtol=tol, atol=tol)
        assert acc == pytest.approx(rec["accuracy"])


def test_full_length_run_equal_in_float32():
    cfg = CliffConfig(sigmas=(1.0,), clip_norms=(1.0,), seeds=(456,), baselines=False)
    result = run_sweep(DATA, cfg, keep_params=True)
    acc, model = reference_run(DATA, cfg, seed=456, sigma=1.0, max_grad_norm=1.0)
    for ours, ref in zip(_run_params(result, 0), model.parameters(), strict=True):
        np.testing.assert_allclose(ours.numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_published_sweep_counts_checks_and_determinism(tmp_path):
    cfg = CliffConfig(epochs=2)
    a, b = run_sweep(DATA, cfg), run_sweep(DATA, cfg)
    assert len(a.records) == 66 and sum(r["private"] for r in a.records) == 63
    assert [r["accuracy"] for r in a.records] == [r["accuracy"] for r in b.records]
    checks = validate(a)
    for name in ("dp_run_count", "baseline_run_count", "accuracies_in_unit_interval", "epsilon_decreasing_in_sigma"):
        assert checks[name], name
    assert a.records[0]["steps"] == 2 * 7  # 400 examples, shuffled batches of 64: 7 per epoch
    assert len(summarize(a)) == 21
    assert isinstance(cliffs(a.records), list)
    data = json.loads(a.write_json(tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 66 and data["runs"][-1]["epsilon"] is None


def test_corrected_mode_uses_poisson_steps_and_tight_accounting():
    cfg = CliffConfig(mode="corrected", epochs=1, sigmas=(1.0, 0.1), clip_norms=(1.0,), seeds=(42,), baselines=False)
    recs = run_sweep(DATA, cfg).records
    assert recs[0]["steps"] == 6 and recs[0]["accountant"] == "pld" and recs[1]["accountant"] == "rdp"
    from privlab.accounting import dpsgd_epsilon

    assert recs[0]["epsilon"] == pytest.approx(
        dpsgd_epsilon(noise_multiplier=1.0, sample_rate=0.16, steps=6, delta=1e-5, accountant="pld"))


def test_simplified_bound_formula_and_looseness():
    # closed form at one order
    val = simplified_rdp_epsilon(noise_multiplier=2.0, sample_rate=0.1, steps=10, delta=1e-5, orders=(5.0,))
    assert val == pytest.approx(10 * 0.01 * 5 / 8 + math.log(1e5) / 4)
    from privlab.accounting import dpsgd_epsilon

    # at small sigma the simplified bound is far below the real RDP bound
    assert simplified_rdp_epsilon(noise_multiplier=0.5, sample_rate=0.16, steps=120, delta=1e-5) < dpsgd_epsilon(
        noise_multiplier=0.5, sample_rate=0.16, steps=120, delta=1e-5, accountant="rdp")


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["lr", "batch_size", "epochs", "delta", "mode"]),
       st.sampled_from([0, -1.0, float("nan"), "x"]))
def test_invalid_config_raises(field, value):
    if field == "delta" and value == 0:
        value = -1.0
    if field == "mode":
        value = "poisson"
    with pytest.raises(ValueError) as err:
        dataclasses.replace(CliffConfig(), **{field: value})
    # the message names the field and the value as given
    assert str(err.value).startswith(field) and str(err.value).endswith(f"got {value!r}"), err.value


def test_records_report_fraction_clipped_and_training_loss(dtype=torch.float64):
    """Published mode, one epoch: every training point is seen once, so with a learning
    rate of 1e-12 the last-epoch loss is the initial model's mean cross-entropy."""
    from privlab.experiments.privacy_cliff import init_params

    cfg = CliffConfig(
        epochs=2, lr=1e-12, sigmas=(0.0,), clip_norms=(1e-6, 1e6), seeds=(42,),
        dtype=dtype,
    )
    recs = run_sweep(DATA, cfg).records
    by_c = {r["C"]: r for r in recs if r["private"]}
    assert by_c[1e-6]["fraction_clipped"] == 1.0
    assert by_c[1e6]["fraction_clipped"] == 0.0
    base = next(r for r in recs if not r["private"])
    assert math.isnan(base["fraction_clipped"])
    d = DATA.X_train.shape[1]
    (W1, b1, W2, b2), _ = init_params(42, d, cfg.hidden, 5, dtype=dtype)
    z = (DATA.X_train.to(dtype) @ W1.T + b1).clamp_min(0) @ W2.T + b2
    expected = float(torch.nn.functional.cross_entropy(z, DATA.y_train))
    for r in recs:
        assert r["train_loss"] == pytest.approx(expected, rel=1e-9)
        assert len(r["loss_curve"]) == 2 and r["loss_curve"][-1] == r["train_loss"]
        assert r["loss_curve"][0] == pytest.approx(expected, rel=1e-9)
    result = run_sweep(DATA, cfg)
    assert result.step_losses.shape == (len(recs), 2 * 7)  # runs x steps (7 batches an epoch)
    # the epoch means weight each step by its batch size (the last batch holds 16 of 400)
    w = np.array([64] * 6 + [16])
    for r, steps in zip(result.records, result.step_losses):
        assert np.dot(steps[7:], w) / 400 == pytest.approx(r["train_loss"], rel=1e-9)


def test_accuracy_on_rescores_the_final_models():
    cfg = CliffConfig(epochs=1, sigmas=(1.0,), clip_norms=(1.0,), seeds=(42, 123))
    result = run_sweep(DATA, cfg, keep_params=True)
    assert result.accuracy_on(DATA.X_test, DATA.y_test) == [r["accuracy"] for r in result.records]
    with pytest.raises(ValueError, match="keep_params"):
        run_sweep(DATA, cfg).accuracy_on(DATA.X_test, DATA.y_test)


def test_cliff_data_scaling_reads_no_point():
    """Standardised by the mixture's population moments (public centres), not the sample's."""
    from sklearn.datasets import make_blobs

    X, y, centres = make_blobs(n_samples=500, n_features=10, centers=5, cluster_std=1.5, random_state=42,
                               return_centers=True)
    Z = (X - centres.mean(0)) / np.sqrt(1.5**2 + centres.var(0))
    both = torch.cat([DATA.X_train, DATA.X_test]).double().numpy()
    np.testing.assert_allclose(np.sort(both, axis=0), np.sort(Z, axis=0), rtol=1e-6, atol=1e-6)
    assert np.abs(both.mean(0)).max() > 1e-3  # not the sample's own centring


def test_cps1988_task_uses_public_constants():
    from privlab.datasets import CPS1988_WAGE_THRESHOLD, cps1988_public_features, load_cps1988
    from privlab.experiments.privacy_cliff import cps1988_task

    t = cps1988_task(seed=0, train_rows=200)
    full = cps1988_task(seed=0)
    # the first 200 training rows are the same rows with the same features and labels
    assert torch.equal(t.X_train, full.X_train[:200]) and torch.equal(t.y_train, full.y_train[:200])
    df = load_cps1988()
    public = cps1988_public_features(df)[["education", "experience"]].to_numpy(np.float32)
    perm = np.random.default_rng(0).permutation(len(df))  # the task's split, rebuilt
    tr = perm[int(round(0.2 * len(df))):][:200]
    np.testing.assert_array_equal(t.X_train[:, :2].numpy(), public[tr])
    np.testing.assert_array_equal(t.y_train.numpy(), (df["wage"].to_numpy()[tr] > CPS1988_WAGE_THRESHOLD))
    assert int(full.y_train.sum() + full.y_test.sum()) == int((df["wage"] > CPS1988_WAGE_THRESHOLD).sum())


@pytest.mark.parametrize("changes, match", [({"seeds": (1.2, 1.7)}, "seed must be an integer"),
                                            ({"sigmas": (1.0, 1.0)}, r"sigmas must be distinct, got \(1.0, 1.0\)"),
                                            ({"clip_norms": (2.0, 2.0)}, "clip_norms must be distinct")])
def test_repeated_runs_cannot_pass_for_replicates(changes, match):
    # seeds 1.2 and 1.7 both became int 1; --sigmas 1 1 trained the same runs twice, counted as replicates
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CliffConfig(), **changes)
