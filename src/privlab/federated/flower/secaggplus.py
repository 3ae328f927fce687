r"""The experiment with Flower's SecAgg+ (Bell et al. 2020): only in Flower's legacy API.

In Flower 1.41 the SecAgg+ pieces are ``flwr.client.mod.secaggplus_mod`` (client
side) and ``flwr.server.workflow.SecAggPlusWorkflow`` (server side). The workflow
expects a ``LegacyContext`` with a legacy strategy (``flwr.server.strategy.FedAvg``)
and the mod expects legacy ``FitRes`` replies, so these apps use the compat layer
(a ``NumPyClient`` behind ``ClientApp(client_fn=..., mods=[secaggplus_mod])``):
the Message-API strategies in ``flwr.serverapp.strategy`` have no SecAgg+ hook.

SecAgg+ masks each client's ``[n_k, n_k \theta_k]`` after clipping the parameters
to ``[-clipping_range, clipping_range]`` and quantising them to
``quantization_range`` levels, so the result equals privlab's FedAvg up to the
quantisation step (about :math:`2 \cdot 8 / 2^{22} \approx 4\times 10^{-6}` per
parameter, scaled by the weights), not to float rounding. These apps add no DP noise: a run
config asking for it is refused (Flower's server-side DP strategies are Message-API ones).

Reference: Bell, Bonawitz, Gascon, Lepoint, Raykova, *Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead*, CCS 2020 (eprint 2020/704).

Used in: chapter 9.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import ServerApp

from ..local import batch_plan, local_update
from .task import check_secagg_config, context_run_config, experiment, write_outputs

__all__ = ["client_app", "make_secagg_client_app", "make_secagg_server_app", "server_app"]


def make_secagg_client_app(overrides: Mapping[str, object] | None = None):
    """A (legacy-API) ClientApp behind Flower's ``secaggplus_mod``."""

    class _Client(NumPyClient):
        def __init__(self, cfg: dict, pid: int) -> None:
            self.exp, self.pid = experiment(cfg), pid

        def fit(self, parameters, config):
            exp, pid = self.exp, self.pid
            names = list(exp.model.state_dict())
            params = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in zip(names, parameters)}
            x, y = torch.from_numpy(exp.data.x[pid]), torch.from_numpy(exp.data.y[pid])
            algo = exp.algorithm
            plan = batch_plan(len(y), batch_size=algo.batch_size, epochs=algo.local_epochs,
                              base_seed=int(config["base-seed"]), round_index=int(config["server-round"]),
                              client_id=pid)  # fmt: skip
            new = local_update(exp.model, params, x, y, plan=plan, lr=algo.local_lr, mu=algo.mu, loss=algo.loss)
            return [new[k].numpy() for k in names], len(y), {}

    def client_fn(context):
        return _Client(context_run_config(context, overrides), int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def make_secagg_server_app(overrides: Mapping[str, object] | None = None, *, reconstruction_threshold: float = 0.7,
                           clipping_range: float = 8.0, quantization_range: int = 2**22):  # fmt: skip
    """A ServerApp running FedAvg through ``SecAggPlusWorkflow`` (the legacy ``LegacyContext`` path).

    No DP: a run config with ``dp-noise-multiplier`` other than 0 is refused
    (:func:`~privlab.federated.flower.task.check_secagg_config`), here and before submission.
    """
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        cfg = context_run_config(context, overrides)
        check_secagg_config(cfg)  # the model would be released without the noise asked for
        exp = experiment(cfg)
        k, names = exp.data.num_clients, list(exp.model.state_dict())
        strategy = LegacyFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=k, min_available_clients=k,
            initial_parameters=ndarrays_to_parameters([v.detach().numpy() for v in exp.model.state_dict().values()]),
            on_fit_config_fn=lambda rnd: {"server-round": rnd, "base-seed": exp.base_seed},
        )  # fmt: skip
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=exp.algorithm.rounds), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=k, reconstruction_threshold=reconstruction_threshold, max_weight=float(exp.data.sizes.max()),
            clipping_range=clipping_range, quantization_range=quantization_range))  # fmt: skip
        workflow(grid, legacy)
        arrays = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        if cfg["out-dir"]:
            write_outputs(str(cfg["out-dir"]), dict(zip(names, arrays)),
                           {"config": cfg, "rounds": exp.algorithm.rounds, "secagg": "SecAgg+ (legacy workflow)"})

    return app


#: The apps ``project_secagg/pyproject.toml`` names (``privlab.federated.flower.secaggplus:server_app`` etc.).
client_app = make_secagg_client_app()
server_app = make_secagg_server_app()
