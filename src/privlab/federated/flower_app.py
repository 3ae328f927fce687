r"""The same FedAvg experiment as a Flower ClientApp and ServerApp (Flower 1.41 Message API).

A round on Flower is the round of :func:`privlab.federated.simulate`: the
ServerApp sends :math:`\theta_t` and a ``base-seed``; SuperNode ``k`` (its
``partition-id``) rebuilds its own partition, draws its batch plan from
:func:`~privlab.federated.local.batch_plan` ``(base-seed, round, k)`` and runs
:func:`~privlab.federated.local.local_update`; Flower's ``FedAvg`` averages the
returned models weighted by ``num-examples``. With full participation the global
model after :math:`R` rounds equals privlab's in-process FedAvg up to float32
summation order (the tests check ``1e-5``).

Everything comes from the run config (``[tool.flwr.app.config]`` in
``flower_project/pyproject.toml``; :data:`DEFAULT_RUN_CONFIG` here), so the
same apps run in Flower's simulation engine (:func:`run_flower_simulation`), on
localhost processes (:mod:`privlab.federated.localhost`) and across machines.

Differential privacy: with ``dp-noise-multiplier > 0`` the strategy is wrapped in
Flower's ``DifferentialPrivacyServerSideFixedClipping`` (clip each update to
``dp-clip-norm``, Gaussian noise :math:`\sigma C / K` on the average); client
weights are then uniform (``unit-weight``) so one client's sensitivity is
:math:`C/K`. The cumulative :math:`\varepsilon` per round comes from
:func:`privlab.federated.dp.epsilon_per_round` with sample rate 1 (every node,
every round). SecAgg+ lives in Flower's legacy API only:
:mod:`privlab.federated.flower_secagg`.

Outputs (when ``out-dir`` is set): ``final.npz`` (the global parameters by name)
and ``history.json`` (rounds, per-round metrics, cumulative epsilon).

Used in: chapter 8.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import make_rng, make_torch_generator
from .fedavg import FedAvg, draw_base_seed
from .local import batch_plan, evaluate, local_update, make_model
from .partitions import FederatedDataset, cps1988_silos, hospital_sites

__all__ = [
    "DEFAULT_RUN_CONFIG", "FlowerRun", "RayStartupError", "client_app", "experiment", "make_client_app",
    "make_federated_dataset", "make_server_app", "privlab_twin", "read_flower_outputs", "run_flower_simulation",
    "server_app",
]

#: The run config every app reads (kebab-case keys, as Flower's TOML config).
DEFAULT_RUN_CONFIG: dict[str, object] = {
    "dataset": "hospitals", "num-clients": 5, "data-seed": 0, "seed": 0,
    "num-rounds": 3, "local-epochs": 1, "batch-size": 32, "local-lr": 0.1, "mu": 0.0, "hidden": 16,
    "fraction-evaluate": 0.0, "dp-noise-multiplier": 0.0, "dp-clip-norm": 1.0, "dp-delta": 1e-5,
    "accountant": "pld", "round-timeout": 600.0, "out-dir": "",
}


def _toy_sites(num_clients: int, rng: np.random.Generator) -> FederatedDataset:
    sites = [(f"site {k}", 30 + 10 * k, 0.3 + 0.2 * k / max(num_clients - 1, 1)) for k in range(num_clients)]
    return hospital_sites(rng=rng, sites=sites, num_features=4)


#: Data sets a run config can name: ``name -> (num_clients, rng) -> FederatedDataset``.
DATASETS = {
    "hospitals": lambda num_clients, rng: hospital_sites(rng=rng),
    "cps1988": lambda num_clients, rng: cps1988_silos(),
    "toy": _toy_sites,
}


def make_federated_dataset(name: str, *, num_clients: int, seed: int) -> FederatedDataset:
    """The data set an experiment names: ``hospitals`` (5 sites), ``cps1988`` (4 regions) or ``toy``.

    ``toy`` is the hospital generator with ``num_clients`` small sites
    (30, 40, ... patients; positive rates 0.3 to 0.5), for quick multi-process runs.

    Raises:
        ValueError: an unknown name, or a client count the data set does not have.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    data = DATASETS[name](num_clients, make_rng(seed))
    if data.num_clients != num_clients:
        raise ValueError(f"dataset {name!r} has {data.num_clients} clients, the run config says {num_clients}")
    return data


@dataclass(frozen=True)
class Experiment:
    """What both sides agree on: the data, the initial model, the algorithm, the base seed."""

    data: FederatedDataset
    model: torch.nn.Module
    algorithm: FedAvg
    base_seed: int


def experiment(run_config: Mapping[str, object]) -> Experiment:
    """Build the experiment a run config describes (identically on every process).

    ``privlab.federated.simulate(e.model, e.data, e.algorithm, rng=make_rng(cfg["seed"]))``
    is the in-process twin of the Flower run.
    """
    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config)}
    data = make_federated_dataset(str(cfg["dataset"]), num_clients=int(cfg["num-clients"]), seed=int(cfg["data-seed"]))
    model = make_model(data.num_features, int(cfg["hidden"]), 1, generator=make_torch_generator(int(cfg["seed"])))
    algo = FedAvg(rounds=int(cfg["num-rounds"]), local_epochs=int(cfg["local-epochs"]),
                  batch_size=int(cfg["batch-size"]), local_lr=float(cfg["local-lr"]), mu=float(cfg["mu"]))  # fmt: skip
    return Experiment(data, model, algo, draw_base_seed(make_rng(int(cfg["seed"]))))


def _merged(context, overrides: Mapping[str, object] | None) -> dict[str, object]:
    return {**DEFAULT_RUN_CONFIG, **dict(context.run_config), **dict(overrides or {})}


def make_client_app(overrides: Mapping[str, object] | None = None):
    """A ClientApp whose run config is the SuperLink's, updated by ``overrides``."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def _local(msg: Message, context: Context):
        cfg = _merged(context, overrides)
        exp = experiment(cfg)
        pid = int(context.node_config["partition-id"])
        x, y = (torch.from_numpy(a) for a in (exp.data.x[pid], exp.data.y[pid]))
        params = {k: v.to(torch.float32) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        return cfg, exp, pid, x, y, params

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        _, exp, pid, x, y, params = _local(msg, context)
        conf = msg.content["config"]
        algo = exp.algorithm
        plan = batch_plan(len(y), batch_size=algo.batch_size, epochs=algo.local_epochs,
                          base_seed=int(conf["base-seed"]), round_index=int(conf["server-round"]),
                          client_id=pid)  # fmt: skip
        new = local_update(exp.model, params, x, y, plan=plan, lr=algo.local_lr, mu=algo.mu, loss=algo.loss)
        loss, acc = evaluate(exp.model, new, x, y, loss=algo.loss)
        metrics = MetricRecord({"num-examples": len(y), "unit-weight": 1, "train-loss": loss, "train-accuracy": acc})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        _, exp, _, x, y, params = _local(msg, context)
        loss, acc = evaluate(exp.model, params, x, y, loss=exp.algorithm.loss)
        metrics = MetricRecord({"num-examples": len(y), "unit-weight": 1, "eval-loss": loss, "eval-accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _strategy(cfg: dict, num_clients: int):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

    sigma = float(cfg["dp-noise-multiplier"])
    frac_eval = float(cfg["fraction-evaluate"])
    base = FlowerFedAvg(fraction_train=1.0, fraction_evaluate=frac_eval, min_train_nodes=num_clients,
                        min_evaluate_nodes=num_clients if frac_eval else 0, min_available_nodes=num_clients,
                        weighted_by_key="unit-weight" if sigma > 0 else "num-examples")  # fmt: skip
    if sigma <= 0:
        return base
    return DifferentialPrivacyServerSideFixedClipping(
        base, noise_multiplier=sigma, clipping_norm=float(cfg["dp-clip-norm"]), num_sampled_clients=num_clients)


def _write_outputs(out_dir: str, arrays: Mapping[str, np.ndarray], history: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # history first, the model last, each renamed into place: final.npz existing means both are complete
    (out / "history.json.tmp").write_text(json.dumps(history, indent=1, default=float))
    (out / "history.json.tmp").replace(out / "history.json")
    with open(out / "final.tmp.npz", "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    (out / "final.tmp.npz").replace(out / "final.npz")


def make_server_app(overrides: Mapping[str, object] | None = None):
    """A ServerApp whose run config is the SuperLink's, updated by ``overrides``."""
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = _merged(context, overrides)
        exp = experiment(cfg)
        k = exp.data.num_clients
        strategy = _strategy(cfg, k)
        clock: list[float] = []  # wall-clock time when round r (0 = start) ended, for benchmarks

        def tick(server_round: int, arrays) -> None:
            clock.append(time.time())

        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(exp.model.state_dict()), num_rounds=exp.algorithm.rounds,
            timeout=float(cfg["round-timeout"]), train_config=ConfigRecord({"base-seed": exp.base_seed}),
            evaluate_fn=tick,
        )  # fmt: skip
        history: dict = {"config": cfg, "rounds": exp.algorithm.rounds, "round-end-times": clock,
                         "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
                         "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}}  # fmt: skip
        sigma = float(cfg["dp-noise-multiplier"])
        if sigma > 0:
            from .dp import epsilon_per_round

            history["epsilon"] = epsilon_per_round(
                noise_multiplier=sigma, sample_rate=1.0, rounds=exp.algorithm.rounds,
                delta=float(cfg["dp-delta"]), accountant=str(cfg["accountant"])).tolist()  # fmt: skip
        if cfg["out-dir"]:
            _write_outputs(str(cfg["out-dir"]), result.arrays.to_torch_state_dict(), history)

    return app


def privlab_twin(run_config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """privlab's in-process FedAvg on the experiment ``run_config`` describes: final parameters by name.

    The reference a non-private Flower run must match (full participation, same seeds).
    """
    from .fedavg import simulate

    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config)}
    exp = experiment(cfg)
    return simulate(exp.model, exp.data, exp.algorithm, rng=make_rng(int(cfg["seed"]))).state_dict()


#: The apps ``flwr run`` / SuperLink load (``privlab.federated.flower_app:client_app`` etc.).
client_app = make_client_app()
server_app = make_server_app()


@dataclass(frozen=True)
class FlowerRun:
    """A finished Flower run read back from its ``out-dir``."""

    state: dict[str, torch.Tensor]
    history: dict


def read_flower_outputs(out_dir: str | os.PathLike) -> FlowerRun:
    """Load ``final.npz`` and ``history.json`` written by the ServerApp."""
    out = Path(out_dir)
    if not (out / "final.npz").exists():
        raise FileNotFoundError(f"no final.npz in {out}: the ServerApp did not finish")
    with np.load(out / "final.npz") as z:
        state = {k: torch.from_numpy(z[k]) for k in z.files}
    return FlowerRun(state, json.loads((out / "history.json").read_text()))


def _simulate_here(cfg: dict, *, num_cpus: int, secagg: bool, verbose: bool) -> None:
    """Run Flower's simulation engine in this process (the child :func:`run_flower_simulation` starts)."""
    from flwr.simulation import run_simulation

    if secagg:
        from .flower_secagg import make_secagg_client_app, make_secagg_server_app

        server, client = make_secagg_server_app(cfg), make_secagg_client_app(cfg)
    else:
        server, client = make_server_app(cfg), make_client_app(cfg)
    run_simulation(
        server_app=server, client_app=client, num_supernodes=int(cfg["num-clients"]),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": int(num_cpus), "logging_level": "error", "log_to_driver": False}},
        verbose_logging=verbose,
    )  # fmt: skip


def run_flower_simulation(run_config: Mapping[str, object] | None = None, *, num_cpus: int = 2,
                          secagg: bool = False, timeout: float = 900.0, retries: int = 2,
                          verbose: bool = False) -> FlowerRun:  # fmt: skip
    """Run the experiment in Flower's simulation engine (Ray), one virtual SuperNode per client.

    The engine runs in a child Python process that is stopped, with every process
    it started (Ray's servers and actors), as soon as the ServerApp has written its
    result, when Ray's start-up crashes (on an overloaded machine Flower's driver
    then hangs instead of exiting), or at ``timeout``. Ray gives its raylet a fixed
    30 s to register; on a busy machine that fails now and then, and the run is
    retried up to ``retries`` times.

    Args:
        run_config: overrides of :data:`DEFAULT_RUN_CONFIG`.
        num_cpus: CPUs given to Ray (each ClientApp gets one).
        secagg: use the SecAgg+ apps (:mod:`privlab.federated.flower_secagg`).
        timeout: seconds per attempt. retries: further attempts after a Ray start-up timeout.
        verbose: echo Flower's log.

    Returns:
        The :class:`FlowerRun` (final parameters by name, history).

    Raises:
        RuntimeError: the simulation crashed (with the log's tail). TimeoutError: it took too long.

    Used in: chapter 8.
    """
    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config or {})}
    for attempt in range(retries + 1):
        try:
            return _simulate_in_child(cfg, num_cpus=num_cpus, secagg=secagg, timeout=timeout, verbose=verbose)
        except RayStartupError:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


class RayStartupError(RuntimeError):
    """Ray's raylet did not register within Ray's fixed 30 s (a busy machine)."""


def _simulate_in_child(cfg: dict, *, num_cpus: int, secagg: bool, timeout: float, verbose: bool) -> FlowerRun:
    import subprocess
    import sys
    import uuid

    from ._procs import stop_processes

    tag = uuid.uuid4().hex
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PRIVLAB_FLOWER_RUN": tag}
    with tempfile.TemporaryDirectory(prefix="privlab-flower-") as tmp:
        cfg = {**cfg, "out-dir": cfg["out-dir"] or str(Path(tmp) / "out")}
        out, log = Path(str(cfg["out-dir"])), Path(tmp) / "simulation.log"
        cmd = [sys.executable, "-m", "privlab.federated.flower_app", json.dumps(cfg), str(int(num_cpus)),
               "secagg" if secagg else "fedavg", "verbose" if verbose else "quiet"]  # fmt: skip
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=None if verbose else fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not (out / "final.npz").exists():
                text = log.read_text(errors="replace") if log.exists() else ""
                if "An exception occurred" in text or "Simulation Runtime crashed" in text or proc.poll() is not None:
                    time.sleep(1.0)
                    if not (out / "final.npz").exists():
                        kind = RayStartupError if "timed out during startup" in text else RuntimeError
                        raise kind(f"Flower's simulation failed:\n{text[-4000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Flower's simulation gave no result in {timeout} s")
                time.sleep(0.5)
            return read_flower_outputs(out)
        finally:
            stop_processes([proc], f"PRIVLAB_FLOWER_RUN={tag}".encode(), grace=5.0)


if __name__ == "__main__":  # the child process of run_flower_simulation
    import sys

    _simulate_here(json.loads(sys.argv[1]), num_cpus=int(sys.argv[2]), secagg=sys.argv[3] == "secagg",
                   verbose=sys.argv[4] == "verbose")
    os._exit(0)  # do not wait for Ray's threads: the parent reads the result from out-dir
