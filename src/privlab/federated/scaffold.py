r"""SCAFFOLD: FedAvg with control variates that cancel client drift.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh (2020), "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML, arXiv:1910.06378,
Algorithm 1 with option II. The server keeps :math:`c`, client :math:`k` keeps
:math:`c_k` (all zero at the start). In round :math:`t` each sampled client
starts from :math:`y = \theta_t` and takes :math:`S_k` local steps

.. math::
    y \leftarrow y - \eta\,\bigl(g_k(y) - c_k + c\bigr),

then sets :math:`c_k^+ = c_k - c + (\theta_t - y)/(S_k \eta)` and uploads
:math:`\Delta y_k = y - \theta_t` and :math:`\Delta c_k = c_k^+ - c_k` (twice
FedAvg's upload). The server steps

.. math::
    \theta_{t+1} = \theta_t + \eta_s \sum_{k \in S_t} \frac{n_k}{n_{S_t}} \Delta y_k,
    \qquad c \leftarrow c + \sum_{k \in S_t} \frac{n_k}{n} \Delta c_k,

so that :math:`c = \sum_k \frac{n_k}{n} c_k` at all times, the sample-weighted
objective FedAvg optimises (the paper weighs clients equally; with equal sizes
the two agree). :math:`g_k - c_k + c` estimates the gradient of the *global*
loss, which is what stops a client's steps from drifting toward its own optimum.

Local training is :func:`privlab.federated.local.local_update` with its
``correction`` argument, on the batch plans FedAvg uses
(:func:`~privlab.federated.local.batch_plan`), and the run draws from ``rng``
exactly as :func:`~privlab.federated.fedavg.simulate` does, so a SCAFFOLD run
and a FedAvg run with the same seed see the same clients and the same batches.
In its first round :math:`c = c_k = 0`, so it equals FedAvg's.

Used in: chapter 9.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._validate import check_rng
from .fedavg import (
    ClientTensors,
    FedAvg,
    FedResult,
    check_updates,
    draw_base_seed,
    sample_clients,
)
from .local import (
    ParamSpec,
    batch_plans,
    local_update,
    local_updates_bmm,
    loss_and_accuracy,
    supports_bmm,
)
from .partitions import FederatedDataset

__all__ = ["Scaffold", "simulate_scaffold"]


@dataclass(frozen=True, kw_only=True)
class Scaffold(FedAvg):
    r"""SCAFFOLD's configuration: FedAvg's fields (``mu`` stays 0).

    Reference: Karimireddy et al. 2020, arXiv:1910.06378, Algorithm 1 (option II).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mu:
            raise ValueError(
                f"Scaffold has no proximal term: mu must be 0, got {self.mu}"
            )


def simulate_scaffold(
    model: nn.Module,
    data: FederatedDataset,
    algorithm: Scaffold,
    *,
    rng: np.random.Generator,
    eval_data=None,
    method: str = "auto",
) -> FedResult:
    r"""Run SCAFFOLD in one process (no privacy: no unit is protected).

    Args:
        model: the architecture and :math:`\theta_0` (not modified).
        data: the clients' data. algorithm: a :class:`Scaffold`.
        rng: the one generator (base seed of the shuffles first, then client sampling).
        eval_data: ``(x, y)`` to evaluate the global model after each round.
        method: ``"bmm"`` (all clients at once, MLPs), ``"loop"`` (client by client with
            autograd, the reference) or ``"auto"`` (``bmm`` where the model allows it).

    Returns:
        A :class:`~privlab.federated.fedavg.FedResult` whose history has FedAvg's
        columns plus ``drift``, the mean norm of the clients' :math:`c - c_k`.

    Raises:
        ValueError: a bad ``algorithm`` or ``rng``, or (naming the client) a NaN update.

    Used in: chapter 9.
    """
    if not isinstance(algorithm, Scaffold):
        raise ValueError(
            f"algorithm must be a Scaffold, got {type(algorithm).__name__}"
        )
    check_rng(rng)
    if method not in ("auto", "bmm", "loop"):
        raise ValueError(f"method must be 'auto', 'bmm' or 'loop', got {method!r}")
    if method == "auto":
        method = "bmm" if supports_bmm(model) else "loop"
    spec = ParamSpec(model)
    params = spec.flat_from_model(model)
    clients = ClientTensors(data)
    sizes = clients.sizes.astype(float)
    c_server = torch.zeros_like(params)
    c_client = torch.zeros((data.num_clients, spec.size), dtype=params.dtype)
    evals = None
    if eval_data is not None:
        evals = tuple(torch.as_tensor(np.asarray(v, np.float32)) for v in eval_data)
    base_seed = draw_base_seed(rng)
    rows = []
    for t in range(1, algorithm.rounds + 1):
        start = time.perf_counter()
        sel = sample_clients(data.num_clients, algorithm.clients_per_round, rng=rng)
        plans = batch_plans(
            clients.sizes[sel],
            sel,
            batch_size=algorithm.batch_size,
            epochs=algorithm.local_epochs,
            base_seed=base_seed,
            round_index=t,
        )
        corrections = c_server - c_client[sel]  # (m, P)
        if method == "bmm":
            idx = torch.as_tensor(sel)
            new = spec.flatten(
                local_updates_bmm(
                    model,
                    spec.unflatten(params),
                    clients.x[idx],
                    clients.y[idx],
                    plans,
                    lr=algorithm.local_lr,
                    loss=algorithm.loss,
                    correction=spec.unflatten(corrections),
                )
            )
        else:
            new = torch.stack(
                [
                    spec.flatten(
                        local_update(
                            model,
                            spec.unflatten(params),
                            *clients.client(k),
                            plan=plan[(plan >= 0).any(axis=1)],
                            lr=algorithm.local_lr,
                            loss=algorithm.loss,
                            correction=spec.unflatten(corr),
                        )
                    )
                    for k, plan, corr in zip(map(int, sel), plans, corrections)
                ]
            )
        steps = torch.as_tensor(
            (plans >= 0).any(axis=2).sum(1), dtype=params.dtype
        )  # S_k
        c_new = (
            c_client[sel]
            - c_server
            + (params - new) / (steps[:, None] * algorithm.local_lr)
        )
        dc = c_new - c_client[sel]
        c_client[sel] = c_new
        deltas = new - params
        check_updates(deltas, [data.names[k] for k in sel])
        w_round = torch.as_tensor(sizes[sel] / sizes[sel].sum(), dtype=params.dtype)
        w_all = torch.as_tensor(sizes[sel] / sizes.sum(), dtype=params.dtype)
        params = params + algorithm.server_lr * (w_round[:, None] * deltas).sum(0)
        c_server = c_server + (w_all[:, None] * dc).sum(0)
        drift = float((c_server - c_client[sel]).norm(dim=1).mean())
        row = {"round": t, "clients": len(sel), "epsilon": float("inf"),
               "seconds": time.perf_counter() - start, "drift": drift}  # fmt: skip
        if evals is not None:
            row["test_loss"], row["test_accuracy"] = loss_and_accuracy(
                model, spec.unflatten(params), *evals, loss=algorithm.loss
            )
        rows.append(row)
    return FedResult(params, spec, pd.DataFrame(rows))
