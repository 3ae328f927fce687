r"""FedAvg, FedProx and FedAdam: the server's side of a round, and an in-process simulator.

One round :math:`t` (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1):

1. sample clients :math:`S_t` (:func:`sample_clients`, an explicit generator);
2. each :math:`k \in S_t` trains locally from :math:`\theta_t` to :math:`\theta_t^k`
   (:mod:`privlab.federated.local`; FedProx adds :math:`\tfrac{\mu}{2}\|\theta-\theta_t\|^2`);
3. the server averages the updates :math:`\Delta_k = \theta_t^k - \theta_t`
   weighted by sample counts,

   .. math::  \Delta_t = \sum_{k \in S_t} \frac{n_k}{n_{S_t}}\, \Delta_k, \qquad n_{S_t} = \sum_{k \in S_t} n_k,

4. and applies a server optimizer: FedAvg :math:`\theta_{t+1} = \theta_t + \eta_s \Delta_t`
   (:math:`\eta_s = 1` is plain averaging of the models); FedAdam (Reddi et al.
   2021, *Adaptive Federated Optimization*, arXiv:2003.00295, Algorithm 2)

   .. math::
       m_t = \beta_1 m_{t-1} + (1-\beta_1)\Delta_t, \quad
       v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t^2, \quad
       \theta_{t+1} = \theta_t + \eta_s \frac{m_t}{\sqrt{v_t} + \tau}.

An algorithm is a frozen dataclass (:class:`FedAvg`, :class:`FedProx`,
:class:`FedAdam`) whose ``server_step`` is the only thing that differs; privacy
(:mod:`privlab.federated.dp`) and secure aggregation (:mod:`privlab.federated.secagg`)
plug into :func:`simulate` without touching it.

Used in: chapter 9.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validate import (
    check_int,
    check_nonnegative,
    check_positive,
    check_probability,
    check_rng,
)
from .local import (
    LOSSES,
    ParamSpec,
    batch_plan,
    batch_plans,
    local_update,
    local_updates_bmm,
    local_updates_vmap,
    loss_and_accuracy,
    supports_bmm,
)
from .partitions import FederatedDataset
from .secagg import secure_sum

__all__ = [
    "ClientTensors", "FedAdam", "FedAvg", "FedProx", "FedResult", "NoPrivacy", "check_updates",
    "draw_base_seed", "fedavg_aggregate", "sample_clients", "simulate",
]


@dataclass(frozen=True, kw_only=True)
class FedAvg:
    r"""Federated averaging: configuration of local training and the server step.

    Args:
        rounds: :math:`T`. clients_per_round: :math:`|S_t|` (``None``: all clients).
        local_epochs: :math:`E`. batch_size: :math:`B`. local_lr: :math:`\eta`.
        mu: FedProx :math:`\mu` (0 for FedAvg). server_lr: :math:`\eta_s`.
        loss: ``"bce"`` (one logit) or ``"ce"`` (class logits).

    Reference: McMahan et al. 2017, arXiv:1602.05629.
    """

    rounds: int = 10
    clients_per_round: int | None = None
    local_epochs: int = 1
    batch_size: int = 32
    local_lr: float = 0.1
    mu: float = 0.0
    server_lr: float = 1.0
    loss: str = "bce"

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds)
        if self.clients_per_round is not None:
            check_int("clients_per_round", self.clients_per_round)
        check_int("local_epochs", self.local_epochs)
        check_int("batch_size", self.batch_size)
        check_positive("local_lr", self.local_lr)
        check_nonnegative("mu", self.mu)
        check_positive("server_lr", self.server_lr)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")

    def init_state(self, params: Tensor) -> dict[str, Tensor]:
        """The server optimizer's state (none for FedAvg)."""
        return {}

    def server_step(self, params: Tensor, update: Tensor, state: dict[str, Tensor]) -> Tensor:
        r""":math:`\theta_{t+1} = \theta_t + \eta_s \Delta_t`."""
        return params + self.server_lr * update


@dataclass(frozen=True, kw_only=True)
class FedProx(FedAvg):
    r"""FedAvg with the proximal term :math:`\tfrac{\mu}{2}\|\theta - \theta_t\|^2` in every local loss.

    Reference: Li et al. 2020, *Federated Optimization in Heterogeneous Networks*, arXiv:1812.06127.
    """

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mu", self.mu)


@dataclass(frozen=True, kw_only=True)
class FedAdam(FedAvg):
    r"""FedAvg's local training with Adam on the server (no bias correction, :math:`v_{-1} = \tau^2`).

    Reference: Reddi et al. 2021, arXiv:2003.00295, Algorithm 2 (FedAdam).
    """

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_probability("beta1", self.beta1, open_low=False, open_high=True)
        check_probability("beta2", self.beta2, open_low=False, open_high=True)
        check_positive("tau", self.tau)

    def init_state(self, params: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(params), "v": torch.full_like(params, self.tau**2)}

    def server_step(self, params: Tensor, update: Tensor, state: dict[str, Tensor]) -> Tensor:
        state["m"] = self.beta1 * state["m"] + (1 - self.beta1) * update
        state["v"] = self.beta2 * state["v"] + (1 - self.beta2) * update**2
        return params + self.server_lr * state["m"] / (state["v"].sqrt() + self.tau)


def sample_clients(num_clients: int, clients_per_round: int | None, *, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random subset of ``clients_per_round`` clients (sorted); all clients when ``None``.

    Full participation draws nothing from ``rng``.

    >>> from privlab.config import make_rng
    >>> sample_clients(10, 3, rng=make_rng(0)).tolist()
    [5, 6, 9]
    """
    k = check_int("num_clients", num_clients)
    check_rng(rng)
    if clients_per_round is None or clients_per_round == k:
        return np.arange(k)
    m = check_int("clients_per_round", clients_per_round)
    if m > k:
        raise ValueError(f"clients_per_round must be <= num_clients = {k}, got {m}")
    return np.sort(rng.choice(k, size=m, replace=False))


def draw_base_seed(rng: np.random.Generator) -> int:
    """The run's base seed for the clients' local shuffles: the first draw from ``rng``."""
    return int(check_rng(rng).integers(2**31))


def check_updates(flat: Tensor, names: Sequence[str]) -> None:
    """Refuse NaN or infinite client updates, naming the clients. ``flat``: ``(m, P)``."""
    bad = ~torch.isfinite(flat).all(dim=1)
    if bool(bad.any()):
        culprits = [names[i] for i in torch.nonzero(bad).flatten().tolist()]
        raise ValueError(f"non-finite (NaN or inf) update from client(s) {culprits}")


def fedavg_aggregate(updates: Sequence[Mapping[str, Tensor]], num_samples: Sequence[int], *,
                     names: Sequence[str] | None = None) -> dict[str, Tensor]:  # fmt: skip
    r"""The sample-weighted average :math:`\sum_k \frac{n_k}{n} u_k` of client updates (or models).

    Args:
        updates: one mapping name -> tensor per client.
        num_samples: :math:`n_k \ge 1` per client.
        names: client names for the error messages (default ``client 0, ...``).

    Raises:
        ValueError: naming the client, for a parameter name or shape that differs
            from the first client's, zero or negative samples, or NaN/inf values.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}
    >>> fedavg_aggregate([a, b], [1, 2])["w"].tolist()
    [3.0, 6.0]

    Used in: chapter 9.
    """
    if not updates or len(updates) != len(num_samples):
        raise ValueError(f"need one sample count per update, got {len(updates)} updates, {len(num_samples)} counts")
    names = list(names) if names is not None else [f"client {k}" for k in range(len(updates))]
    ref = {k: tuple(v.shape) for k, v in updates[0].items()}
    for name, u, n in zip(names, updates, num_samples):
        shapes = {k: tuple(v.shape) for k, v in u.items()}
        if shapes != ref:
            diff = sorted(k for k in set(ref) | set(shapes) if ref.get(k) != shapes.get(k))
            raise ValueError(f"client {name!r} sent parameters {diff} with shapes "
                             f"{[shapes.get(k) for k in diff]}, expected {[ref.get(k) for k in diff]}")
        if isinstance(n, bool) or not float(n) > 0 or not math.isfinite(float(n)):
            raise ValueError(f"client {name!r} reported {n} samples; every client needs >= 1")
        if not all(bool(torch.isfinite(v).all()) for v in u.values()):
            raise ValueError(f"non-finite (NaN or inf) update from client {name!r}")
    total = float(sum(float(n) for n in num_samples))
    return {k: sum((float(n) / total) * u[k] for u, n in zip(updates, num_samples)) for k in ref}


class ClientTensors:
    """All clients' data on one device, padded to the largest client: ``x (K, N, d)``, ``y (K, N)``."""

    def __init__(self, data: FederatedDataset, device: torch.device | str = "cpu") -> None:
        sizes = data.sizes
        k, n, d = data.num_clients, int(sizes.max()), data.num_features
        x, y = np.zeros((k, n, d), np.float32), np.zeros((k, n), np.float32)
        for i, (xk, yk) in enumerate(zip(data.x, data.y)):
            x[i, : len(yk)], y[i, : len(yk)] = xk, yk
        self.names, self.sizes = data.names, sizes
        self.x, self.y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def client(self, k: int) -> tuple[Tensor, Tensor]:
        n = int(self.sizes[k])
        return self.x[k, :n], self.y[k, :n]


def _plans(clients: ClientTensors, sel: np.ndarray, algo: FedAvg, base_seed: int, round_index: int) -> np.ndarray:
    return batch_plans(clients.sizes[sel], sel, batch_size=algo.batch_size, epochs=algo.local_epochs,
                       base_seed=base_seed, round_index=round_index)  # fmt: skip


def _train_stacked(kernel, model, spec, params, clients, sel, algo, base_seed, round_index) -> Tensor:
    if len(sel) == 0:
        return params.new_zeros((0, spec.size))
    plans = _plans(clients, sel, algo, base_seed, round_index)
    idx = torch.as_tensor(sel, device=clients.x.device)
    out = kernel(model, spec.unflatten(params), clients.x[idx], clients.y[idx], plans,
                 lr=algo.local_lr, mu=algo.mu, loss=algo.loss)  # fmt: skip
    return spec.flatten(out)


def train_vmap(model, spec, params, clients, sel, algo, base_seed, round_index) -> Tensor:
    """Vectorised local training of the selected clients (``torch.func``): ``(m, P)`` new parameters."""
    return _train_stacked(local_updates_vmap, model, spec, params, clients, sel, algo, base_seed, round_index)


def train_bmm(model, spec, params, clients, sel, algo, base_seed, round_index) -> Tensor:
    """Vectorised local training of an MLP by batched matmuls: ``(m, P)`` new parameters."""
    return _train_stacked(local_updates_bmm, model, spec, params, clients, sel, algo, base_seed, round_index)


def train_auto(model, *args) -> Tensor:
    """``bmm`` where the model allows it (:func:`~privlab.federated.local.supports_bmm`), else ``vmap``."""
    return (train_bmm if supports_bmm(model) else train_vmap)(model, *args)


def train_loop(model, spec, params, clients, sel, algo, base_seed, round_index) -> Tensor:
    """Client-by-client local training (the reference): ``(m, P)`` new parameters."""
    start, out = spec.unflatten(params), []
    for k in map(int, sel):
        plan = batch_plan(int(clients.sizes[k]), batch_size=algo.batch_size, epochs=algo.local_epochs,
                          base_seed=base_seed, round_index=round_index, client_id=k)  # fmt: skip
        new = local_update(model, start, *clients.client(k), plan=plan, lr=algo.local_lr, mu=algo.mu, loss=algo.loss)
        out.append(spec.flatten(new))
    return torch.stack(out) if out else params.new_zeros((0, spec.size))


@dataclass(frozen=True)
class NoPrivacy:
    """The non-private aggregation rule: sampled clients, sample-weighted mean of updates.

    The hooks :func:`simulate` calls, which the DP rules override: ``trainer``
    (local training), ``select`` (client sampling), ``client_vectors`` (what each
    client contributes to the sum), ``finish`` (the server's step from the sum to the
    update), ``epsilon`` (cumulative privacy after a round).
    """

    METHODS: ClassVar[tuple[str, ...]] = ("auto", "bmm", "vmap", "loop")

    def trainer(self, method: str):
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        return {"auto": train_auto, "bmm": train_bmm, "vmap": train_vmap, "loop": train_loop}[method]

    def select(self, num_clients: int, algo: FedAvg, rng: np.random.Generator) -> np.ndarray:
        return sample_clients(num_clients, algo.clients_per_round, rng=rng)

    def client_vectors(self, deltas: Tensor, sizes: np.ndarray) -> Tensor:
        w = torch.as_tensor(sizes / sizes.sum(), dtype=deltas.dtype, device=deltas.device)
        return deltas * w[:, None]

    def finish(self, total: Tensor, num_clients: int, algo: FedAvg, rng: np.random.Generator) -> Tensor:
        return total

    def epsilon(self, rounds: int, num_clients: int, algo: FedAvg) -> float:
        return math.inf


@dataclass(frozen=True)
class FedResult:
    """A run's outcome: final flat parameters, their layout, and one history row per round."""

    params: Tensor
    spec: ParamSpec
    history: pd.DataFrame

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.spec.unflatten(self.params).items()}

    def load_into(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for name, value in self.spec.unflatten(self.params).items():
                model.get_parameter(name).copy_(value)
        return model


def _secure_total(vectors: Tensor, secure, rng: np.random.Generator) -> Tensor:
    result = secure_sum(vectors.double().cpu().numpy(), threshold=secure.threshold(len(vectors)),
                        frac_bits=secure.frac_bits, modulus_bits=secure.modulus_bits, rng=rng)  # fmt: skip
    return torch.as_tensor(result.total, dtype=vectors.dtype, device=vectors.device)


def simulate(model: nn.Module, data: FederatedDataset, algorithm: FedAvg, *, rng: np.random.Generator,
             method: str = "auto", privacy=None, secure_aggregation=None, eval_data=None,
             evaluate_train: bool = False, progress: bool = False, device=None) -> FedResult:  # fmt: skip
    r"""Run federated training in one process: every client simulated, the same maths as a deployment.

    Args:
        model: the architecture and the initial parameters :math:`\theta_0` (not modified).
        data: the clients' data.
        algorithm: :class:`FedAvg`, :class:`FedProx` or :class:`FedAdam`.
        rng: the one generator for everything random: the base seed of the
            clients' shuffles (first draw, :func:`draw_base_seed`), client sampling,
            noise, and (through a spawned child stream) secure-aggregation keys. Client-level DP's
            noise is drawn from it, so epsilon assumes its seed secret; every client receives the
            base seed, from which a small seed (``make_rng(48611)``) is found by trying seeds, and
            with it the noise (a red-team read rebuilt it to 2e-7). For a deployment, seed from the
            operating system (``np.random.default_rng()``) and keep it secret.
        method: how local training runs: ``"vmap"`` (all clients of a round at once,
            ``torch.func``, any model), ``"bmm"`` (all at once by batched matmuls, MLPs only),
            ``"loop"`` (one by one, the reference), ``"auto"`` (``bmm`` where possible, else ``vmap``).
        privacy: ``None``, :class:`~privlab.federated.dp.ClientLevelDP` or
            :class:`~privlab.federated.dp.SampleLevelDP`.
        secure_aggregation: ``None`` or a :class:`~privlab.federated.secagg.SecAggConfig`:
            the server sums the client vectors by the masking protocol.
        eval_data: ``(x, y)`` arrays to evaluate the global model on each round.
        evaluate_train: also evaluate on the pooled training data. Those columns are computed on
            the private data without noise: outside the DP guarantee (a warning says so when
            ``privacy`` is set), for diagnosis, not for release.
        progress: show a tqdm bar. device: where tensors live (default: the model's).

    Returns:
        A :class:`FedResult`; ``history`` has ``round``, ``clients``, ``epsilon``
        (cumulative, ``inf`` without DP), ``seconds`` and the evaluation columns. Under client-level
        DP's add/remove neighbours, ``clients`` (the number sampled, :math:`|S_t|`) is not covered by
        epsilon (it moves with the client added; the noisy sum is the release): for diagnosis.

    Raises:
        ValueError: for an unknown ``method``, or (naming the client) a NaN update.

    Used in: chapter 9.
    """
    check_rng(rng)
    privacy = NoPrivacy() if privacy is None else privacy
    delta = getattr(privacy, "delta", None)
    if delta is not None:  # client level: the K clients are the units; sample level: the N examples
        from .dp import ClientLevelDP  # (dp imports this module)

        units = data.num_clients if isinstance(privacy, ClientLevelDP) else int(sum(len(y) for y in data.y))
        if delta >= 1 / units:
            warnings.warn(f"delta={delta:g} is not below 1/{units} (1 / the number of privacy units): a mechanism "
                          f"that publishes one unit's data outright meets it; take delta well below 1/{units}",
                          RuntimeWarning, stacklevel=2)
    trainer = privacy.trainer(method)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    spec = ParamSpec(model)
    params = spec.flat_from_model(model).to(device)
    clients = ClientTensors(data, device)
    evals = {"test": eval_data} if eval_data is not None else {}
    if evaluate_train:
        if not isinstance(privacy, NoPrivacy):
            warnings.warn("simulate(evaluate_train=True): the train_* columns are computed on the private data "
                          "without noise, outside the DP guarantee; do not release them with the model",
                          RuntimeWarning, stacklevel=2)
        evals["train"] = data.pooled()
    evals = {k: (torch.as_tensor(np.asarray(x, np.float32), device=device),
                 torch.as_tensor(np.asarray(y, np.float32), device=device)) for k, (x, y) in evals.items()}
    state = algorithm.init_state(params)
    base_seed = draw_base_seed(rng)
    # secure aggregation's key material comes from a child stream, so switching it on
    # leaves client sampling and noise exactly as without it
    secagg_rng = rng.spawn(1)[0] if secure_aggregation is not None else None
    rows = []
    for t in tqdm(range(1, algorithm.rounds + 1), disable=not progress, desc="rounds"):
        start = time.perf_counter()
        sel = privacy.select(data.num_clients, algorithm, rng)
        new = trainer(model, spec, params, clients, sel, algorithm, base_seed, t)
        deltas = new - params
        check_updates(deltas, [data.names[k] for k in sel])
        vectors = privacy.client_vectors(deltas, clients.sizes[sel])
        if secure_aggregation is not None and len(sel):
            total = _secure_total(vectors, secure_aggregation, secagg_rng)
        else:
            total = vectors.sum(0)
        params = algorithm.server_step(params, privacy.finish(total, data.num_clients, algorithm, rng), state)
        row = {"round": t, "clients": len(sel), "epsilon": privacy.epsilon(t, data.num_clients, algorithm),
               "seconds": time.perf_counter() - start}  # fmt: skip
        for name, (x, y) in evals.items():
            row[f"{name}_loss"], row[f"{name}_accuracy"] = loss_and_accuracy(
                model, spec.unflatten(params), x, y, loss=algorithm.loss)
        rows.append(row)
    return FedResult(params, spec, pd.DataFrame(rows))
