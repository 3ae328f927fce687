r"""Local training on the clients: one client at a time, or thousands at once with ``torch.func``.

Client :math:`k` starts a round from the global parameters :math:`\theta_t` and
runs :math:`E` epochs of minibatch SGD on its own data,

.. math::
    \theta \leftarrow \theta - \eta\, \nabla_\theta \Bigl(\frac{1}{|b|}\sum_{i \in b} \ell(f_\theta(x_i), y_i)
    + \frac{\mu}{2}\,\|\theta - \theta_t\|^2\Bigr),

where :math:`b` runs over the batches of a fresh permutation of its
:math:`n_k` records each epoch (the last batch may be short), :math:`\eta` is the
local learning rate and :math:`\mu \ge 0` the FedProx proximal weight
(:math:`\mu = 0` is FedAvg). References: McMahan et al. 2017 (arXiv:1602.05629),
Algorithm 1, ClientUpdate; Li et al. 2020, FedProx (arXiv:1812.06127), eq. (2).

Three implementations that agree to float rounding (the tests check 1e-5):

* :func:`local_update` -- the obviously correct reference, one client, plain
  autograd. The Flower ClientApp calls it.
* :func:`local_updates_vmap` -- all clients of a round together: their parameters
  stacked along a leading client axis, their data padded to the largest client
  and masked, one ``torch.func.vmap(grad(...))`` per step. Clients with fewer
  steps sit idle (their update is multiplied by 0) once their epochs are done.
  Any model ``functional_call`` can run.
* :func:`local_updates_bmm` -- the same for MLPs (``nn.Sequential`` of ``Linear``
  and activations) by batched matrix products and one ordinary backward per step:
  no ``torch.func`` overhead, several times faster for small models.

All follow the same *batch plan* (:func:`batch_plans`, :func:`batch_plan`), whose
shuffles are a counter-based hash of (base seed, round, client, epoch, record), so
a client on another machine computes the same shuffles from the seed the server
sends, and a round's plans for thousands of clients take one vectorised call.

Used in: chapter 9.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .._validate import check_int, check_nonnegative, check_positive
from ..dpsgd import batched
from ..losses import bce_losses, ce_losses
from ..models import MLP

__all__ = [
    "LOSSES",
    "ParamSpec",
    "batch_plan",
    "batch_plans",
    "bce_losses",
    "ce_losses",
    "client_rng",
    "local_update",
    "local_updates_bmm",
    "local_updates_vmap",
    "loss_and_accuracy",
    "make_model",
    "shuffle_keys",
    "supports_bmm",
]


#: Per-example losses by name (the ``loss`` argument everywhere in this package).
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"bce": bce_losses, "ce": ce_losses}


def _loss_fn(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss]


def make_model(in_features: int, hidden: int | Sequence[int] = (32,), out_features: int = 1, *,
               generator: torch.Generator) -> nn.Module:  # fmt: skip
    r"""A small MLP (:class:`privlab.models.MLP`) initialised from an explicit generator.

    Every weight and bias is drawn from :math:`U(-1/\sqrt{d_\text{in}}, 1/\sqrt{d_\text{in}})`,
    the range of PyTorch's default ``nn.Linear`` initialisation, but from
    ``generator`` so the same seed gives the same model in every process.

    >>> from privlab.config import make_torch_generator
    >>> a = make_model(4, 8, generator=make_torch_generator(0))
    >>> b = make_model(4, 8, generator=make_torch_generator(0))
    >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    True

    Used in: chapter 9.
    """
    model = MLP(in_features, hidden, out_features)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                bound = layer.in_features**-0.5
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
    return model


class ParamSpec:
    """Names and shapes of a model's trainable parameters, to flatten and unflatten them.

    >>> spec = ParamSpec(nn.Linear(3, 2))
    >>> spec.size, spec.unflatten(torch.arange(8.0))["bias"].tolist()
    (8, [6.0, 7.0])
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)
        self.shapes = tuple(tuple(p.shape) for _, p in named)
        self.numels = tuple(p.numel() for _, p in named)
        self.size = int(sum(self.numels))

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        """``(P,)`` from one set of parameters, or ``(m, P)`` from stacked ``(m, ...)`` ones."""
        first = params[self.names[0]]
        lead = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat([params[n].reshape(*lead, -1) for n in self.names], dim=-1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """The inverse of :meth:`flatten` (views into ``flat``)."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def flat_from_model(self, model: nn.Module) -> Tensor:
        return self.flatten(dict(model.named_parameters())).detach().clone()


def client_rng(base_seed: int, round_index: int, client_id: int) -> np.random.Generator:
    """A generator for client ``client_id`` in round ``round_index`` (1-based), from a shared seed.

    Derived from ``(base_seed, round, client)`` by NumPy's SeedSequence, so every
    (round, client) pair gets an independent stream that any process can rebuild,
    the server included. Use it only for public randomness; DP noise comes from
    :func:`privlab.federated.dp.private_client_rng`, which the server cannot rebuild.
    """
    return np.random.default_rng([int(base_seed), int(round_index), int(client_id)])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective avalanche mix of uint64 words."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # uint64 arithmetic wraps mod 2^64
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shuffle_keys(base_seed: int, round_index: int, client_ids, *, epochs: int, length: int) -> np.ndarray:
    """Pseudo-random sort keys ``(m, epochs, length)``: a counter-based hash of (seed, round, client, epoch, index).

    Sorting record ``i``'s key gives client ``k``'s permutation in an epoch. Any
    process computes any client's keys without a generator's state, so thousands of
    clients' shuffles come from one vectorised call, and a real client computes
    exactly the same shuffle on its own machine.
    """
    ids = np.asarray(client_ids, dtype=np.uint64).reshape(-1)
    with np.errstate(over="ignore"):
        run = _mix64(_mix64(np.uint64(int(base_seed) % 2**64)) ^ (np.uint64(int(round_index)) * _GOLDEN))
        client = _mix64(run ^ (ids + np.uint64(1)) * _GOLDEN)  # (m,)
        epoch = _mix64(client[:, None] ^ (np.arange(1, epochs + 1, dtype=np.uint64) * _GOLDEN))  # (m, E)
        return _mix64(epoch[..., None] + np.arange(1, length + 1, dtype=np.uint64) * _GOLDEN)  # (m, E, N)


def batch_plans(sizes, client_ids, *, batch_size: int, epochs: int, base_seed: int, round_index: int) -> np.ndarray:
    r"""Every client's local steps at once: ``(m, epochs * S, B)`` record indices, -1 = no record.

    Client ``k`` (``sizes[k]`` records) takes, each epoch, a fresh permutation of
    its records (:func:`shuffle_keys` sorted) cut into :math:`\lceil n_k / B \rceil`
    batches (the last may be short); :math:`S = \max_k \lceil n_k / B \rceil` rows per
    epoch, the rows a smaller client does not need are idle (all -1).

    >>> plans = batch_plans([5, 2], [0, 1], batch_size=2, epochs=1, base_seed=0, round_index=1)
    >>> plans.shape, sorted(plans[0].ravel().tolist())
    ((2, 3, 2), [-1, 0, 1, 2, 3, 4])
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    b, e = check_int("batch_size", batch_size), check_int("epochs", epochs)
    if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 1:
        raise ValueError(f"every client needs >= 1 record, got sizes {sizes.tolist()}")
    steps = -(-int(sizes.max()) // b)
    keys = shuffle_keys(base_seed, round_index, client_ids, epochs=e, length=steps * b)
    idx = np.arange(steps * b)
    keys[:, :, :][np.broadcast_to(idx >= sizes[:, None, None], keys.shape)] = np.iinfo(np.uint64).max
    perm = np.argsort(keys, axis=-1, kind="stable")  # records first, padding last
    perm[perm >= sizes[:, None, None]] = -1
    return perm.reshape(len(sizes), e * steps, b)


def batch_plan(n: int, *, batch_size: int, epochs: int, base_seed: int, round_index: int,
               client_id: int) -> np.ndarray:  # fmt: skip
    """One client's plan, ``(epochs * ceil(n / B), B)``: its row of :func:`batch_plans` without idle rows.

    >>> batch_plan(5, batch_size=2, epochs=2, base_seed=0, round_index=1, client_id=0).shape
    (6, 2)
    """
    n = check_int("n (client samples)", n)
    plan = batch_plans([n], [client_id], batch_size=batch_size, epochs=epochs, base_seed=base_seed,
                       round_index=round_index)[0]  # fmt: skip
    return plan[(plan >= 0).any(axis=1)]


def _objective(model: nn.Module, loss_fn, mu: float):
    """The local objective for one client: masked mean loss plus the FedProx term."""

    def objective(params, x, y, m, anchor):  # x: (B, d), y: (B,), m: (B,) 0/1
        per_example = loss_fn(functional_call(model, params, (x,)), y)
        value = (per_example * m).sum() / m.sum().clamp_min(1.0)
        if mu:
            value = value + 0.5 * mu * sum(((params[k] - anchor[k]) ** 2).sum() for k in params)
        return value

    return objective


def local_update(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, plan: np.ndarray,
                 lr: float, mu: float = 0.0, loss: str = "bce",
                 correction: Mapping[str, Tensor] | None = None,
                 ) -> dict[str, Tensor]:  # fmt: skip
    r"""One client's local SGD, step by step with autograd (the reference implementation).

    Args:
        model: the architecture (its own parameter values are not used).
        params: the global parameters :math:`\theta_t` by name.
        x, y: the client's data, ``(n_k, d)`` and ``(n_k,)``.
        plan: from :func:`batch_plan` (-1 entries are skipped).
        lr: :math:`\eta > 0`. mu: the FedProx :math:`\mu \ge 0`. loss: a key of :data:`LOSSES`.
        correction: added to every step's gradient, by name (SCAFFOLD's :math:`c - c_k`,
            :mod:`privlab.federated.scaffold`); ``None`` for none.

    Returns:
        The client's parameters after local training, by name.

    Used in: chapter 9.
    """
    lr, mu = check_positive("lr", lr), check_nonnegative("mu", mu)
    loss_fn = _loss_fn(loss)
    anchor = {k: v.detach() for k, v in params.items()}
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    for row in plan:
        idx = torch.as_tensor(row[row >= 0], device=x.device)
        if len(idx) == 0:
            continue
        value = loss_fn(functional_call(model, theta, (x[idx],)), y[idx]).mean()
        if mu:
            value = value + 0.5 * mu * sum(((theta[k] - anchor[k]) ** 2).sum() for k in theta)
        grads = torch.autograd.grad(value, list(theta.values()))
        if correction is not None:
            grads = [g + correction[k] for k, g in zip(theta, grads)]
        with torch.no_grad():
            theta = {k: (v - lr * g).requires_grad_(True) for (k, v), g in zip(theta.items(), grads)}
    return {k: v.detach() for k, v in theta.items()}


def local_updates_vmap(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, plans: Tensor, *,
                       lr: float, mu: float = 0.0, loss: str = "bce") -> dict[str, Tensor]:  # fmt: skip
    r"""All clients' local SGD at once: ``vmap`` over stacked parameters, padded and masked data.

    Args:
        model: the architecture.
        params: the global parameters :math:`\theta_t` by name (shared start point).
        x: ``(m, N, d)`` the m clients' data padded to :math:`N = \max_k n_k`.
        y: ``(m, N)`` their labels.
        plans: ``(m, T, B)`` indices from :func:`batch_plans`; -1 = no example.
        lr, mu, loss: as in :func:`local_update`.

    Returns:
        Each parameter stacked over clients, ``(m, *shape)``.

    Used in: chapter 9.
    """
    lr, mu = check_positive("lr", lr), check_nonnegative("mu", mu)
    m = x.shape[0]
    anchor = {k: v.detach() for k, v in params.items()}
    theta = {k: v.detach().unsqueeze(0).repeat(m, *([1] * v.dim())) for k, v in params.items()}
    step_grad = vmap(grad(_objective(model, _loss_fn(loss), mu)), in_dims=(0, 0, 0, 0, None))
    plans = torch.as_tensor(plans, device=x.device)
    mask = (plans >= 0).to(x.dtype)  # (m, T, B)
    idx = plans.clamp_min(0)
    rows = torch.arange(m, device=x.device)[:, None]
    for t in range(plans.shape[1]):
        mt = mask[:, t]
        g = step_grad(theta, x[rows, idx[:, t]], y[rows, idx[:, t]], mt, anchor)
        active = (mt.sum(1) > 0).to(x.dtype)  # idle clients: an exact no-op, FedProx term included
        theta = {k: v - lr * active.view(-1, *([1] * (v.dim() - 1))) * g[k] for k, v in theta.items()}
    return theta


#: Parameter-free, elementwise modules the batched-matmul path applies as they are.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity)


def supports_bmm(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of ``nn.Linear`` layers and the activations in :data:`ELEMENTWISE`."""
    return isinstance(model, nn.Sequential) and len(model) > 0 and all(
        isinstance(layer, (nn.Linear, *ELEMENTWISE)) for layer in model)


def _stacked_layers(model: nn.Sequential, theta: Mapping[str, Tensor]) -> list:
    """``model``'s layers over the stacked parameters, in :mod:`privlab.dpsgd.batched`'s form (ReLU as its ``RELU``)."""
    layers = []
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            layers.append((theta[f"{i}.weight"], theta.get(f"{i}.bias")))
        else:
            layers.append(batched.RELU if isinstance(layer, nn.ReLU) else layer)
    return layers


def local_updates_bmm(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, plans: Tensor, *,
                      lr: float, mu: float = 0.0, loss: str = "bce",
                      correction: Mapping[str, Tensor] | None = None,
                      ) -> dict[str, Tensor]:  # fmt: skip
    r""":func:`local_updates_vmap` for MLPs without ``torch.func``: batched matmuls, gradients by hand.

    Linear/ReLU MLPs get their gradients by hand from :mod:`privlab.dpsgd.batched` (backpropagation
    written out, :math:`g = w\,\partial\ell/\partial z` at the logits with :math:`w` the batch-mean
    weights); other elementwise activations take one autograd backward per step through
    :func:`privlab.dpsgd.batched.forward`.

    Clients never interact, so the gradient of :math:`\sum_k L_k(\theta_k)` with
    respect to the stacked :math:`(\theta_1, \dots, \theta_m)` is every client's own
    gradient; ``torch.baddbmm`` runs all clients' layers in one call. Several times
    faster than ``vmap`` for small models, where per-call overhead dominates.

    ``correction``: per-client terms added to every step's gradient, by name,
    ``(m, *shape)`` (SCAFFOLD's :math:`c - c_k`, :mod:`privlab.federated.scaffold`).

    Raises:
        ValueError: for a model :func:`supports_bmm` refuses.
    """
    if not supports_bmm(model):
        raise ValueError("the bmm path needs an nn.Sequential of nn.Linear and elementwise activations; use vmap")
    lr, mu = check_positive("lr", lr), check_nonnegative("mu", mu)
    loss_fn, m = _loss_fn(loss), x.shape[0]
    anchor = {k: v.detach() for k, v in params.items()}
    theta = {k: v.detach().unsqueeze(0).repeat(m, *([1] * v.dim())) for k, v in params.items()}
    plans = torch.as_tensor(plans, device=x.device)
    mask = (plans >= 0).to(x.dtype)
    idx = plans.clamp_min(0)
    rows = torch.arange(m, device=x.device)[:, None, None]
    xs, ys = x[rows, idx], y[rows, idx]  # every step's batch, gathered once: (m, T, B, d), (m, T, B)
    counts = mask.sum(2)  # (m, T): examples per client and step
    weights = mask / counts.clamp_min(1.0).unsqueeze(-1)  # (m, T, B): the mean over each batch
    # scaled (m, T) learning rates: 0 where a client has no batch left. Without FedProx an idle client's
    # gradient is exactly 0 anyway; with it the proximal term must not move an idle client.
    step_lr = lr * (counts > 0).to(x.dtype)
    manual = all(isinstance(layer, (nn.Linear, nn.ReLU)) for layer in model)  # else autograd
    for t in range(plans.shape[1]):
        if manual:
            layers = _stacked_layers(model, theta)
            out, inputs = batched.forward(layers, xs[:, t])  # (m, B, out)
            g = batched.output_grads(out, ys[:, t], loss) * weights[:, t].unsqueeze(-1)  # d(sum_i w_i l_i)/dz
            sums = iter(batched.grad_sums(layers, inputs, batched.backward(layers, inputs, g)))
            grads = {}
            for i, layer in enumerate(model):
                if isinstance(layer, nn.Linear):
                    grads[f"{i}.weight"], gb = next(sums)
                    if gb is not None:
                        grads[f"{i}.bias"] = gb
        else:
            theta = {k: v.requires_grad_(True) for k, v in theta.items()}
            out, _ = batched.forward(_stacked_layers(model, theta), xs[:, t])  # (m, B, out)
            per_example = loss_fn(out.reshape(-1, out.shape[-1]), ys[:, t].reshape(-1)).reshape(weights[:, t].shape)
            total = (per_example * weights[:, t]).sum()
            grads = dict(zip(theta, torch.autograd.grad(total, list(theta.values()))))
        if mu:  # the FedProx term's gradient, mu (theta - theta_global)
            grads = {k: g + mu * (theta[k].detach() - anchor[k]) for k, g in grads.items()}
        if correction is not None:
            grads = {k: g + correction[k] for k, g in grads.items()}
        lr_t = step_lr[:, t]
        theta = {k: v.detach().sub_(grads[k] * lr_t.view(-1, *([1] * (v.dim() - 1)))) for k, v in theta.items()}
    return {k: v.detach() for k, v in theta.items()}


def loss_and_accuracy(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *,
                      loss: str = "bce") -> tuple[float, float]:  # fmt: skip
    """Mean loss and accuracy of the model with these parameters on ``(x, y)``."""
    with torch.no_grad():
        out = functional_call(model, dict(params), (x,))
        value = float(_loss_fn(loss)(out, y).mean())
        pred = (out.reshape(y.shape) > 0).to(y.dtype) if loss == "bce" else out.argmax(-1).to(y.dtype)
        return value, float((pred == y).to(torch.float32).mean())
