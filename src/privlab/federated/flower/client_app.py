"""The experiment's Flower ClientApp (Flower 1.41 Message API): one SuperNode, one partition.

SuperNode ``k`` (its ``partition-id``) rebuilds its partition and the initial model
from the run config (:func:`~privlab.federated.flower.task.experiment`), draws its
batch plan from :func:`~privlab.federated.local.batch_plan` ``(base-seed, round, k)``
and runs :func:`~privlab.federated.local.local_update` on the parameters the
ServerApp sent. Replies carry ``num-examples`` (FedAvg's weight) and
``unit-weight`` (the weight under server-side DP).

Used in: chapter 9.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..local import batch_plan, local_update, loss_and_accuracy
from .task import context_run_config, experiment

__all__ = ["app", "make_client_app"]


def make_client_app(overrides: Mapping[str, object] | None = None) -> ClientApp:
    """A ClientApp whose run config is the SuperLink's, updated by ``overrides``."""
    app = ClientApp()

    def _local(msg: Message, context: Context):
        cfg = context_run_config(context, overrides)
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
        loss, acc = loss_and_accuracy(exp.model, new, x, y, loss=algo.loss)
        metrics = MetricRecord({"num-examples": len(y), "unit-weight": 1, "train-loss": loss, "train-accuracy": acc})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        _, exp, _, x, y, params = _local(msg, context)
        loss, acc = loss_and_accuracy(exp.model, params, x, y, loss=exp.algorithm.loss)
        metrics = MetricRecord({"num-examples": len(y), "unit-weight": 1, "eval-loss": loss, "eval-accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


#: The ClientApp ``project/pyproject.toml`` names (``privlab.federated.flower.client_app:app``).
app = make_client_app()
