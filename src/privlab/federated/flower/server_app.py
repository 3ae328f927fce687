r"""The experiment's Flower ServerApp (Flower 1.41 Message API): Flower's FedAvg, optionally with server-side DP.

The ServerApp sends :math:`\theta_t` and a ``base-seed`` each round; Flower's
``FedAvg`` averages the returned models weighted by ``num-examples``.

Differential privacy: with ``dp-noise-multiplier > 0`` the strategy is wrapped in
Flower's ``DifferentialPrivacyServerSideFixedClipping`` (:class:`StrictServerSideDP`: a round with a
missing reply stops the run; clip each update to
``dp-clip-norm``, Gaussian noise :math:`\sigma C / K` on the average); client
weights are then uniform (``unit-weight``) so one client's sensitivity is
:math:`C/K`. The cumulative :math:`\varepsilon` per round comes from
:func:`privlab.federated.dp.epsilon_per_round` with sample rate 1 (every node,
every round). The guarantee covers the model: the clients' training and evaluation metrics
that Flower averages into the run's history (``train``, ``evaluate``: example counts, losses,
accuracies) carry no noise, and the history lists them under ``outside_guarantee``; they are for
diagnosis, not release. The privacy unit is one client, under the zero-out relation: neighbouring
federations differ in one client's update being replaced by no change, which moves the sum by at most
:math:`C`. Flower divides by the number of replies, pinned here to the public :math:`K` fixed in
advance (a federation with a client removed does not run: a missing reply stops it), and
:math:`q = 1`, where the zero-out epsilon equals the add/remove one. Flower's noise comes from
NumPy's global generator, not a cryptographically secure source.
SecAgg+ lives in Flower's legacy API only:
:mod:`privlab.federated.flower.secaggplus`.

Used in: chapter 9.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from ..dp import epsilon_per_round
from .task import context_run_config, experiment, write_outputs

__all__ = ["StrictServerSideDP", "app", "make_server_app", "make_strategy"]


class StrictServerSideDP(DifferentialPrivacyServerSideFixedClipping):
    r"""Flower's server-side fixed-clipping DP that refuses a round unless every sampled client replied.

    Without Flower's own accountant, Flower 1.41 only logs a warning when fewer than
    ``num_sampled_clients`` replies arrive, and then averages over the replies received while the
    noise stays :math:`\sigma C / K`: the effective noise multiplier on the sum falls to
    :math:`\sigma m / K` and the divisor is no longer the public :math:`K`, so the reported
    :math:`\varepsilon` would not hold. This subclass raises instead (privlab accounts outside Flower).
    """

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        good = sum(not msg.has_error() for msg in replies)
        if good != self.num_sampled_clients or good != len(replies):
            raise RuntimeError(
                f"round {server_round}: {good} good replies of {len(replies)} from {self.num_sampled_clients} "
                "sampled clients; server-side DP needs every sampled client's update (the noise and the "
                "divisor are calibrated to all of them), so the run stops instead of releasing a round "
                "whose epsilon would be understated")
        return super().aggregate_train(server_round, replies)


def make_strategy(cfg: Mapping[str, object], num_clients: int):
    """Flower's ``FedAvg`` over all ``num_clients`` nodes, in server-side DP when ``dp-noise-multiplier > 0``."""
    sigma = float(cfg["dp-noise-multiplier"])
    frac_eval = float(cfg["fraction-evaluate"])
    base = FlowerFedAvg(fraction_train=1.0, fraction_evaluate=frac_eval, min_train_nodes=num_clients,
                        min_evaluate_nodes=num_clients if frac_eval else 0, min_available_nodes=num_clients,
                        weighted_by_key="unit-weight" if sigma > 0 else "num-examples")  # fmt: skip
    if sigma <= 0:
        return base
    return StrictServerSideDP(
        base, noise_multiplier=sigma, clipping_norm=float(cfg["dp-clip-norm"]), num_sampled_clients=num_clients)


def make_server_app(overrides: Mapping[str, object] | None = None) -> ServerApp:
    """A ServerApp whose run config is the SuperLink's, updated by ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = context_run_config(context, overrides)
        exp = experiment(cfg)
        k = exp.data.num_clients
        strategy = make_strategy(cfg, k)
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
            history["epsilon"] = epsilon_per_round(
                noise_multiplier=sigma, sample_rate=1.0, rounds=exp.algorithm.rounds,
                delta=float(cfg["dp-delta"]), accountant=str(cfg["accountant"])).tolist()  # fmt: skip
            # the clients' metrics are averaged by Flower without clipping or noise (its documentation:
            # "training and evaluation metrics are not included"): epsilon covers the model only
            history["outside_guarantee"] = ["train", "evaluate"]
        if cfg["out-dir"]:
            write_outputs(str(cfg["out-dir"]), result.arrays.to_torch_state_dict(), history)

    return app


#: The ServerApp ``project/pyproject.toml`` names (``privlab.federated.flower.server_app:app``).
app = make_server_app()
