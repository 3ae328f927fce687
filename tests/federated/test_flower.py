"""Flower: the same experiment in Flower's simulation engine and as real processes equals privlab's FedAvg.

The real-process tests (FedAvg, server-side DP, SecAgg+) share one SuperLink with three
SuperNodes (the module's ``federation``), and their three runs are submitted together (the
module's ``runs``): a SuperLink serves any number of ``flwr run`` submissions side by side,
each with its own run id and fresh ServerApp and ClientApp processes, so only the start-up
and the wall clock are shared, never a run's state. The simulation-engine test starts Ray. Each
run has a generous timeout (a slow shared machine needs 60-90 s), and the launchers'
cleanup is checked: no process they started survives (the shared federation's when
the module ends). The real-process runs are submitted before the simulation-engine test, so
Ray's start-up and the other launcher tests overlap with their polling.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from privlab.federated.flower.localhost import LocalFederation, run_localhost, toml_run_config
from privlab.federated.flower.simulation import RayStartupError, run_flower_simulation
from privlab.federated.flower.task import DEFAULT_RUN_CONFIG, experiment, make_federated_dataset, privlab_twin

TINY = {"dataset": "toy", "num-clients": 3, "num-rounds": 2, "local-lr": 0.2, "batch-size": 16}
#: Flower averages float32 models in another order than privlab: the stated tolerance.
TOLERANCE = 1e-5


@pytest.fixture
def private_tmp():
    """A folder of our own: pytest's shared basetemp can be pruned by other runs during a long test."""
    path = Path(tempfile.mkdtemp(prefix="privlab-flower-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def federation():
    """One SuperLink and three SuperNodes for every real-process run of this module, stopped at its end."""
    path = Path(tempfile.mkdtemp(prefix="privlab-flower-federation-"))
    fed = LocalFederation(3, work_dir=path).start()
    try:
        yield fed
    finally:
        fed.close()
        survivors = _processes_with_env(f"FLWR_HOME={path / 'flwr_home'}")
        shutil.rmtree(path, ignore_errors=True)
    assert survivors == [], "the shared federation left processes behind"


#: Server-side DP, one round, clip norm C above every update norm (test_flower_dp_wrapper_...).
DP_SIGMA, DP_CLIP = 0.01, 100.0
DP_CFG = {**TINY, "num-rounds": 1, "dp-noise-multiplier": DP_SIGMA, "dp-clip-norm": DP_CLIP, "dp-delta": 1e-5}


@pytest.fixture(scope="module")
def runs(federation):
    """The module's three real-process runs (FedAvg, SecAgg+, server-side DP), submitted at once.

    Most of a small run's wall clock is Flower's polling (SuperNodes and the ServerApp poll every
    3 s) and ClientApp start-up, so the three overlap instead of queueing; each test waits for
    its own run's result.
    """
    return {"fedavg": federation.submit(TINY, timeout=480),
            "secagg": federation.submit({**TINY, "num-rounds": 1}, timeout=480, secagg=True),
            "dp": federation.submit(DP_CFG, timeout=480)}


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k].to(a[k].dtype)).abs().max()) for k in a)


def _processes_with_env(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains ``marker`` (our private FLWR_HOME)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env.read_bytes():
                found.append(int(env.parent.name))
        except OSError:
            continue
    return found


def test_server_side_dp_refuses_a_round_with_a_missing_reply():
    """Flower without its accountant would average the replies it got with noise for all K: the
    strategy stops the run instead (the unit of the accountant is every sampled client, every round)."""
    from privlab.federated.flower.server_app import StrictServerSideDP, make_strategy

    class Reply:
        def __init__(self, error=False):
            self.error = error

        def has_error(self):
            return self.error

    strategy = make_strategy({**DEFAULT_RUN_CONFIG, "dp-noise-multiplier": 1.0, "dp-clip-norm": 1.0}, 3)
    assert isinstance(strategy, StrictServerSideDP)
    for replies in ([Reply(), Reply()], [Reply(), Reply(), Reply(error=True)]):
        with pytest.raises(RuntimeError, match="good replies of .* from 3 sampled clients"):
            strategy.aggregate_train(1, replies)


def test_experiment_is_the_same_on_every_process():
    a, b = experiment(TINY), experiment(dict(TINY))
    assert a.base_seed == b.base_seed and a.data.sizes.tolist() == [30, 40, 50]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    with pytest.raises(ValueError, match="5 clients"):
        make_federated_dataset("hospitals", num_clients=3, seed=0)
    with pytest.raises(ValueError, match="dataset"):
        make_federated_dataset("mnist", num_clients=3, seed=0)
    assert set(TINY) <= set(DEFAULT_RUN_CONFIG)
    assert toml_run_config({"out-dir": "/tmp/x", "dp": True}) == 'out-dir="/tmp/x" dp=true'


def test_flower_project_names_the_apps_and_every_config_key():
    import tomllib

    from privlab.federated.flower.localhost import PROJECT_DIR, SECAGG_PROJECT_DIR

    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "privlab.federated.flower.server_app:app",
                                 "clientapp": "privlab.federated.flower.client_app:app"}
    assert app["config"] == DEFAULT_RUN_CONFIG
    secagg = tomllib.loads((SECAGG_PROJECT_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert secagg["components"] == {"serverapp": "privlab.federated.flower.secaggplus:server_app",
                                    "clientapp": "privlab.federated.flower.secaggplus:client_app"}
    assert secagg["config"] == DEFAULT_RUN_CONFIG and secagg["publisher"] == app["publisher"]


def test_flower_simulation_engine_matches_privlab(runs):
    # `runs`: the three real-process runs are submitted first and run meanwhile (they mostly wait on
    # Flower's polling), as do the next three tests; the tests that read their results come after
    try:
        # one Ray worker: the three virtual SuperNodes' ClientApps take turns in it (the same run;
        # measured 31 against 43 CPU-seconds with two workers, each importing torch and Flower)
        run = run_flower_simulation(TINY, timeout=480, retries=2, num_cpus=1)
    except RayStartupError as err:  # Ray's own 30 s start-up limit, three times: the machine, not the code
        pytest.skip(f"Ray could not start on this overloaded machine: {str(err)[-300:]}")
    assert run.history["rounds"] == 2 and len(run.history["round-end-times"]) == 3
    assert _max_diff(privlab_twin(TINY), run.state) < TOLERANCE


def test_launcher_stops_everything_on_timeout(private_tmp):
    with pytest.raises(TimeoutError):
        run_localhost(TINY, num_supernodes=3, timeout=0.5, work_dir=private_tmp)
    assert _processes_with_env(f"FLWR_HOME={private_tmp / 'flwr_home'}") == []


def test_a_federation_that_is_not_running_refuses_runs(private_tmp):
    with pytest.raises(RuntimeError, match="not running"):
        LocalFederation(1, work_dir=private_tmp).submit(TINY)


def test_secagg_apps_refuse_dp_settings_they_would_ignore(private_tmp):
    """A red-team read: the SecAgg+ apps accepted dp-noise-multiplier = 1 and released a model without
    noise and without an epsilon. Refused before submission, by the ServerApp, and by the CLI."""
    from privlab.federated.flower.localhost import main
    from privlab.federated.flower.secaggplus import make_secagg_server_app  # noqa: F401  (imports the check)

    with pytest.raises(ValueError, match="the SecAgg\\+ apps add no DP noise .* got dp-noise-multiplier = 0.5"):
        LocalFederation(1, work_dir=private_tmp).submit({**TINY, "dp-noise-multiplier": 0.5}, secagg=True)
    with pytest.raises(SystemExit):
        main(["--secagg", "--dp-noise-multiplier", "1"])
    project = Path(__file__).parents[2] / "src/privlab/federated/flower/project_secagg/pyproject.toml"
    assert "dp-noise-multiplier=1" not in project.read_text()


def test_localhost_cli_help():
    # both entry points at once: each process spends its few seconds importing torch and Flower
    procs = [subprocess.Popen([sys.executable, *cmd, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for cmd in (["-m", "privlab.federated.flower.localhost"], ["-m", "privlab.cli", "localhost"])]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "--supernodes" in stdout, stderr


def test_real_processes_superlink_and_three_supernodes_match_privlab(runs):
    run = runs["fedavg"].result()
    assert runs["fedavg"].result() is run  # waited for once
    assert run.history["rounds"] == 2 and set(run.history["train"]) == {"1", "2"}
    assert _max_diff(privlab_twin(run.history["config"]), run.state) < TOLERANCE


#: SecAgg+ quantises n_k * theta_k to 2**22 levels on [-8, 8]: a step of 16 / 2**22 ~ 3.8e-6 per round.
SECAGG_TOLERANCE = 2e-5


def test_secagg_plus_over_real_processes_equals_privlab(runs):
    """Flower's SecAgg+ (masks, Shamir shares, quantisation) on three supernodes: the sum is FedAvg's."""
    run = runs["secagg"].result()
    assert run.history["secagg"].startswith("SecAgg+")
    diff = _max_diff(privlab_twin(run.history["config"]), run.state)
    assert 0 <= diff < SECAGG_TOLERANCE


def test_flower_dp_wrapper_adds_calibrated_noise_and_privlab_accounts_for_it(federation, runs):
    """Flower's DifferentialPrivacyServerSideFixedClipping, one round, clip norm C above every update norm.

    The global model is then the uniform average of the local updates plus N(0, (sigma C / K)^2) per
    parameter, so (Flower - clean) / (sigma C / K) is standard normal over the P parameters; the
    cumulative epsilon in the run's history is privlab's accountant's for q = 1.
    """
    from privlab.accounting import dpsgd_epsilon
    from privlab.config import make_rng
    from privlab.federated import simulate
    from privlab.federated.dp import ClientLevelDP

    sigma, clip, k, cfg = DP_SIGMA, DP_CLIP, 3, DP_CFG
    run = runs["dp"].result()
    assert federation.num_supernodes == k and run.history["config"]["dp-noise-multiplier"] == sigma
    assert run.history["epsilon"] == [dpsgd_epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=1, delta=1e-5)]
    # the clients' averaged metrics carry no noise: the history says epsilon does not cover them
    assert run.history["outside_guarantee"] == ["train", "evaluate"]
    assert "outside_guarantee" not in runs["fedavg"].result().history

    exp = experiment({**cfg})
    clean = simulate(exp.model, exp.data, exp.algorithm, rng=make_rng(0),  # noise 1e-12 * C: negligible
                     privacy=ClientLevelDP(clip_norm=clip, noise_multiplier=1e-12, accountant="rdp")).state_dict()
    z = torch.cat([(torch.as_tensor(run.state[n]).double() - clean[n].double()).flatten() for n in clean])
    z = z / (sigma * clip / k)
    p = z.numel()
    assert abs(float(z.mean())) < 5 / p**0.5  # mean 0 within 5 standard errors
    assert abs(float(z.std()) - 1) < 5 / (2 * p) ** 0.5  # std 1 within 5 standard errors of a std
