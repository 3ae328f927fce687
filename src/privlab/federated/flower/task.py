r"""What every Flower process of the experiment agrees on: run config, data, model, outputs (no ``flwr`` import).

A round on Flower is the round of :func:`privlab.federated.simulate`: the
ServerApp (:mod:`.server_app`) sends :math:`\theta_t` and a ``base-seed``;
SuperNode ``k`` (its ``partition-id``) rebuilds its own partition with
:func:`experiment`, draws its batch plan from
:func:`~privlab.federated.local.batch_plan` ``(base-seed, round, k)`` and runs
:func:`~privlab.federated.local.local_update` (:mod:`.client_app`); Flower's
``FedAvg`` averages the returned models weighted by ``num-examples``. With full
participation the global model after :math:`R` rounds equals
:func:`privlab_twin`, privlab's in-process FedAvg, up to float32 summation order
(the tests check ``1e-5``).

Everything comes from the run config (``[tool.flwr.app.config]`` in
``project/pyproject.toml``; :data:`DEFAULT_RUN_CONFIG` here), so the same apps
run in Flower's simulation engine (:mod:`.simulation`), on localhost processes
(:mod:`.localhost`) and across machines.

Outputs (when ``out-dir`` is set): ``final.npz`` (the global parameters by name)
and ``history.json`` (rounds, per-round metrics, cumulative epsilon), written by
:func:`write_outputs` and read back by :func:`read_flower_outputs`.

Used in: chapter 9.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...config import make_rng, make_torch_generator
from ..fedavg import FedAvg, draw_base_seed, simulate
from ..local import make_model
from ..partitions import FederatedDataset, cps1988_silos, hospital_sites

__all__ = [
    "DATASETS", "DEFAULT_RUN_CONFIG", "Experiment", "FlowerRun", "check_secagg_config", "context_run_config",
    "experiment", "make_federated_dataset", "privlab_twin", "read_flower_outputs", "write_outputs",
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


def context_run_config(context, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The run config an app sees: :data:`DEFAULT_RUN_CONFIG`, then the SuperLink's ``context.run_config``,
    then ``overrides`` (what :func:`~privlab.federated.flower.client_app.make_client_app` was given).

    >>> class Context:  # what Flower passes to an app, reduced to the one attribute read here
    ...     run_config = {"num-rounds": 5}
    >>> cfg = context_run_config(Context(), {"dataset": "toy"})
    >>> cfg["num-rounds"], cfg["dataset"], cfg["seed"]
    (5, 'toy', 0)
    """
    return {**DEFAULT_RUN_CONFIG, **dict(context.run_config), **dict(overrides or {})}


def check_secagg_config(run_config: Mapping[str, object]) -> None:
    """Refuse DP settings for the SecAgg+ apps, which add no noise (:mod:`~privlab.federated.flower.secaggplus`).

    Flower's SecAgg+ workflow runs through the legacy API, which these apps do not combine with
    server-side DP; a red-team read found ``dp-noise-multiplier=1`` accepted there and a model
    released without noise (and without an epsilon), so asking for both is an error.

    >>> check_secagg_config({**DEFAULT_RUN_CONFIG, "dp-noise-multiplier": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: the SecAgg+ apps add no DP noise (Flower's SecAgg+ runs only through its legacy API, not combined with DP here): got dp-noise-multiplier = 1.0; run DP without SecAgg+, or SecAgg+ with dp-noise-multiplier = 0
    """
    sigma = float(run_config.get("dp-noise-multiplier", 0.0))
    if sigma != 0.0:
        raise ValueError("the SecAgg+ apps add no DP noise (Flower's SecAgg+ runs only through its legacy API, not "
                         f"combined with DP here): got dp-noise-multiplier = {run_config['dp-noise-multiplier']!r}; "
                         "run DP without SecAgg+, or SecAgg+ with dp-noise-multiplier = 0")


def write_outputs(out_dir: str | os.PathLike, arrays: Mapping[str, np.ndarray], history: dict) -> None:
    """Write ``history.json`` then ``final.npz`` into ``out_dir`` (each renamed into place when complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # history first, the model last, each renamed into place: final.npz existing means both are complete
    (out / "history.json.tmp").write_text(json.dumps(history, indent=1, default=float))
    (out / "history.json.tmp").replace(out / "history.json")
    with open(out / "final.tmp.npz", "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    (out / "final.tmp.npz").replace(out / "final.npz")


def privlab_twin(run_config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """privlab's in-process FedAvg on the experiment ``run_config`` describes: final parameters by name.

    The reference a non-private Flower run must match (full participation, same seeds).
    """
    cfg = {**DEFAULT_RUN_CONFIG, **dict(run_config)}
    exp = experiment(cfg)
    return simulate(exp.model, exp.data, exp.algorithm, rng=make_rng(int(cfg["seed"]))).state_dict()


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
