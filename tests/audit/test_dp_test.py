"""The DP test suite at smoke scale: every honest release passes, every planted-broken twin is caught.

The suite runs once (module fixture, seed 0, alpha 0.05); each entry is then asserted on its own so a
failure names the release, its claim and the lower bound that refuted (or failed to refute) it.
"""

import json
import math

import numpy as np
import pytest

from privlab.audit.dp_test import best_threshold, candidate_statistics, main, run_suite, audit_release
from privlab.audit.registry import REGISTRY, RELATIONS, Release, register

TWINS = [name for name, r in REGISTRY.items() if r.twin_of is not None]
HONEST = [name for name, r in REGISTRY.items() if r.twin_of is None]


@pytest.fixture(scope="module")
def results():
    return {r.name: r for r in run_suite(scale="smoke", seed=0)}


def test_registry_covers_the_package_and_every_twin_has_an_honest_release():
    for needed in ["laplace count", "gaussian classic", "gaussian analytic", "exponential mechanism",
                   "randomized response", "discrete laplace", "discrete gaussian", "snapping", "dp sum", "dp mean",
                   "dp histogram", "dp-sgd step", "dp-fedavg round", "marginal synthesizer", "odometer"]:
        assert needed in REGISTRY
    assert len(TWINS) >= 5
    for name in TWINS:
        assert REGISTRY[REGISTRY[name].twin_of].twin_of is None, name
    assert all(r.relation in RELATIONS for r in REGISTRY.values())


@pytest.mark.parametrize("name", HONEST)
def test_honest_release_passes(results, name):
    r = results[name]
    assert r.passed and r.expected, (name, r.epsilon_lower, r.claimed_epsilon, r.statistic)
    assert 0.0 <= r.epsilon_lower <= r.claimed_epsilon


@pytest.mark.parametrize("name", TWINS)
def test_planted_twin_is_caught(results, name):
    r = results[name]
    assert not r.passed and r.expected, (name, r.epsilon_lower, r.claimed_epsilon, r.statistic)


def test_the_lower_bound_is_the_clopper_pearson_bound_of_the_reported_counts(results):
    from privlab.audit.stats import epsilon_lower_bound

    for r in results.values():
        if r.statistic != "functional":
            assert r.epsilon_lower == pytest.approx(
                epsilon_lower_bound(r.tp, r.fp, r.n_samples, r.n_samples, delta=r.claimed_delta, alpha=r.alpha))


def test_only_reproduces_the_full_run(results):
    again = audit_release(REGISTRY["laplace half noise"], scale="smoke", seed=0)
    assert again.epsilon_lower == results["laplace half noise"].epsilon_lower


def test_list_and_json_entry_points(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY)
    assert main(["--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} == set(REGISTRY)
    assert main(["--only", "randomized response", "--scale", "smoke", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "randomized response" and row["expected"]
    assert main(["--only", "odometer", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)  # strict JSON (no NaN threshold)
    assert row["statistic"] == "functional" and row["threshold"] is None
    with pytest.raises(SystemExit):
        main(["--only", "no such release"])
    with pytest.raises(ValueError, match="not registered"):
        run_suite(only=["no such release"])


def test_best_threshold_separates_and_statistics_cover_vectors():
    t, bound = best_threshold(np.arange(1000.0) + 2000, np.arange(1000.0), delta=0.0, alpha=0.05)
    assert 1000 <= t <= 2000 and bound == pytest.approx(math.log(1000 / 3.689), abs=0.01)
    names = [n for n, _ in candidate_statistics(np.eye(3)[[0, 1] * 20], np.eye(3)[[2, 1] * 20])]
    assert names == ["projection", "-projection", "logistic"]
    pattern = lambda y: np.all(y == [0, 0, 1], axis=1)  # noqa: E731  (an SVT-style known event)
    stats = dict(candidate_statistics(np.eye(3)[[2] * 40], np.eye(3)[[1] * 40], extra=(pattern,)))
    assert stats["extra 0"](np.eye(3)).tolist() == [0.0, 0.0, 1.0]


def test_release_validation():
    draw = lambda d, n, rng: np.zeros(n)  # noqa: E731
    with pytest.raises(ValueError, match="relation"):
        Release(name="x", relation="neighbours", epsilon=1.0, delta=0.0, pairs=((0, 1),), draw=draw)
    with pytest.raises(ValueError, match="epsilon"):
        Release(name="x", relation="add/remove", epsilon=math.inf, delta=0.0, pairs=((0, 1),), draw=draw)
    with pytest.raises(ValueError, match="exactly one"):
        Release(name="x", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((0, 1),))
    with pytest.raises(ValueError, match="already registered"):
        register(REGISTRY["laplace count"])
    with pytest.raises(ValueError, match="twin_of"):
        register(Release(name="x", relation="add/remove", epsilon=1.0, delta=0.0, pairs=((0, 1),), draw=draw,
                         twin_of="nothing"))
