r"""DP-FedAvg: differential privacy for a client (client level) or for a record (sample level).

**Client level** (McMahan, Ramage, Talwar, Zhang 2018, *Learning Differentially
Private Recurrent Language Models*, arXiv:1710.06963, Algorithm 1 with the fixed
denominator): each round every client joins independently with probability
:math:`q` (Poisson sampling), its update is clipped to norm :math:`C`, and the
server adds Gaussian noise to the sum before dividing by the *expected* number of
clients :math:`qK`:

.. math::
    \Delta_t = \frac{1}{qK}\Bigl(\sum_{k \in S_t} \Delta_k \min\Bigl(1, \frac{C}{\|\Delta_k\|}\Bigr)
    + \mathcal N(0, \sigma^2 C^2 I)\Bigr).

Adding or removing one client moves the clipped sum by at most :math:`C`, so a
round is the Poisson-subsampled Gaussian mechanism with noise multiplier
:math:`\sigma` and rate :math:`q`; :math:`T` rounds compose, and the cumulative
:math:`\varepsilon` after round :math:`t` is
``privlab.accounting.dpsgd_epsilon(noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta)``
-- reported every round, never reset.

**Sample level** (DP-SGD inside every client, Abadi et al. 2016,
arXiv:1607.00133): each local step samples the client's records with probability
:math:`q_\ell`, clips each example's gradient to :math:`C`, adds
:math:`\mathcal N(0, \sigma^2 C^2 I)` and divides by :math:`q_\ell n_k`. A record
is touched only by its own client's DP-SGD, so after :math:`t` rounds of
:math:`s` local steps its guarantee is that of :math:`s t` DP-SGD steps (assuming,
conservatively, that its client joined every round).

The DP-SGD noise and Poisson masks come from each client's private stream
(:func:`private_client_rng`: a secret seed that client alone holds, or OS
entropy), never from the shuffle seed the server sends, which the server could
use to remove the noise, and never from a seed the clients share, which would
let any one client (colluding with the server) remove every other client's
noise.

**Client sizes are treated as public** at sample level: each client's size
:math:`n_k` sets its DP-SGD normalisation :math:`1/(q_\ell n_k)`, and the server
averages the client updates with weights :math:`n_k / \sum_j n_j`. The DP-SGD
analysis covers the noisy gradient sums only, so the guarantee is for adding or
removing one record *with the sizes* :math:`n_k` *held fixed as public side
information* (as Abadi et al. and Opacus treat the dataset size in
:math:`1/(qn)`). Where the sizes are private, release them first with DP (noisy
counts, accounted for separately) and train on those, or use uniform weights.

Used in: chapter 9.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from .._validate import check_delta, check_int, check_positive, check_probability
from ..accounting import DPSGD_ACCOUNTANTS, dpsgd_epsilon
from ..dpsgd import clipped_grad_sum
from .fedavg import FedAvg, NoPrivacy
from .local import LOSSES

__all__ = ["ClientLevelDP", "SampleLevelDP", "clip_updates", "client_secret_seeds", "epsilon_per_round",
           "private_client_rng", "sample_level_draws"]


def _epsilon(**kwargs) -> float:
    return float(dpsgd_epsilon(**kwargs))


def epsilon_per_round(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float,
                      steps_per_round: int = 1, accountant: str = "pld") -> np.ndarray:  # fmt: skip
    r"""Cumulative :math:`\varepsilon` after rounds :math:`1, \dots, T` (composition over rounds).

    Args:
        noise_multiplier: :math:`\sigma`. sample_rate: :math:`q` per step.
        rounds: :math:`T`. delta: :math:`\delta`.
        steps_per_round: mechanism invocations per round (1 at client level;
            the local DP-SGD steps at sample level).
        accountant: ``"pld"`` or ``"rdp"`` (:func:`privlab.accounting.dpsgd_epsilon`).

    Returns:
        ``(T,)`` array, non-decreasing.

    Used in: chapter 9.
    """
    rounds, s = check_int("rounds", rounds), check_int("steps_per_round", steps_per_round)
    return np.array([
        _epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=s * t, delta=delta,
                 accountant=accountant) for t in range(1, rounds + 1)
    ])  # fmt: skip


def clip_updates(deltas: Tensor, *, clip_norm: float) -> Tensor:
    r"""Clip each row to L2 norm :math:`C`: :math:`\Delta_k \cdot C / \max(\|\Delta_k\|, C)`.

    >>> clip_updates(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), clip_norm=1.0).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.30000001192092896, 0.4000000059604645]]
    """
    c = check_positive("clip_norm", clip_norm)
    norms = deltas.norm(dim=1, keepdim=True)
    return deltas * (c / norms.clamp_min(c))


def _check_common(obj) -> None:
    check_positive("clip_norm", obj.clip_norm)
    check_positive("noise_multiplier", obj.noise_multiplier)
    check_delta(obj.delta)
    if obj.accountant not in DPSGD_ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {DPSGD_ACCOUNTANTS}, got {obj.accountant!r}")


@dataclass(frozen=True, kw_only=True)
class ClientLevelDP(NoPrivacy):
    r"""Client-level DP-FedAvg: Poisson client sampling, clip to :math:`C`, noise :math:`\sigma C` on the sum.

    The client sampling rate is :math:`q = m / K` with :math:`m` the algorithm's
    ``clients_per_round`` (all clients, :math:`q = 1`, when ``None``). Updates
    are weighted uniformly: sample-count weights would let one large client
    exceed the sensitivity :math:`C`.

    Privacy unit: one client (all its records); neighbouring: add or remove one
    client. The divisor :math:`qK` is fixed in advance, with the number of
    clients :math:`K` treated as public, so one client moves the noisy sum by at
    most :math:`C` at every :math:`q`, :math:`q = 1` included (as the accountant
    assumes).

    Args:
        clip_norm: :math:`C`. noise_multiplier: :math:`\sigma`. delta: :math:`\delta`.
        accountant: ``"pld"`` (default) or ``"rdp"``.

    Reference: McMahan et al. 2018, arXiv:1710.06963, Algorithm 1.
    """

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accountant: str = "pld"

    def __post_init__(self) -> None:
        _check_common(self)

    @staticmethod
    def sample_rate(num_clients: int, algo: FedAvg) -> float:
        m = num_clients if algo.clients_per_round is None else algo.clients_per_round
        if m > num_clients:
            raise ValueError(f"clients_per_round must be <= num_clients = {num_clients}, got {m}")
        return m / num_clients

    def select(self, num_clients: int, algo: FedAvg, rng: np.random.Generator) -> np.ndarray:
        q = self.sample_rate(num_clients, algo)
        return np.arange(num_clients) if q == 1.0 else np.flatnonzero(rng.random(num_clients) < q)

    def client_vectors(self, deltas: Tensor, sizes: np.ndarray) -> Tensor:
        return clip_updates(deltas, clip_norm=self.clip_norm)

    def finish(self, total: Tensor, num_clients: int, algo: FedAvg, rng: np.random.Generator) -> Tensor:
        noise = torch.as_tensor(rng.standard_normal(total.shape[-1]), dtype=total.dtype, device=total.device)
        expected = self.sample_rate(num_clients, algo) * num_clients
        return (total + self.noise_multiplier * self.clip_norm * noise) / expected

    def epsilon(self, rounds: int, num_clients: int, algo: FedAvg) -> float:
        return _epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate(num_clients, algo),
                        steps=rounds, delta=self.delta, accountant=self.accountant)  # fmt: skip


_PRIVATE_TAG = 0x5EC7E7  # separates the clients' private streams from any shuffle stream


def private_client_rng(client_seed: int | None, round_index: int, client_id: int) -> np.random.Generator:
    """The generator of client ``client_id``'s DP draws (noise, Poisson masks) in one round.

    It never depends on the server's shuffle seed: a server that knew the stream
    could subtract the noise and see the clipped sums noise-free. ``client_seed``
    is client ``client_id``'s own secret, which neither the server nor any other
    client receives (reproducible simulations; see :func:`client_secret_seeds`);
    ``None`` draws fresh OS entropy (``SeedSequence()``), as in deployment.
    """
    if client_seed is None:
        return np.random.default_rng(np.random.SeedSequence())
    return np.random.default_rng([int(client_seed), int(round_index), int(client_id), _PRIVATE_TAG])


def client_secret_seeds(num_clients: int, entropy: int | None = None) -> tuple[int, ...]:
    """One secret seed per client, for reproducible simulations of :class:`SampleLevelDP`.

    The seeds are independent children of ``SeedSequence(entropy)`` (``None``: OS
    entropy). ``entropy`` stands for the simulator, which plays every client; in a
    deployment each client draws its own seed and shows it to nobody. It must not
    be the server's shuffle seed.

    >>> s = client_secret_seeds(3, entropy=7)
    >>> len(set(s)) == 3 and s == client_secret_seeds(3, entropy=7)
    True
    """
    check_int("num_clients", num_clients)
    children = np.random.SeedSequence(entropy).spawn(num_clients)
    return tuple(int(c.generate_state(2, dtype=np.uint64)[0]) for c in children)


def sample_level_draws(clients, sel, spec, rule, base_seed: int, round_index: int):
    """Each selected client's Poisson masks ``(s, n_k)`` and noise ``(s, P)`` for one round of
    :class:`SampleLevelDP`, from its private generator (a generator per client, yielded in ``sel`` order).

    ``base_seed`` (the server's shuffle seed) is deliberately unused: see
    :func:`private_client_rng`.
    """
    del base_seed
    draws = []
    for k in sel:
        g = private_client_rng(rule.client_seed_of(int(k)), round_index, int(k))
        masks = g.random((rule.local_steps, int(clients.sizes[k]))) < rule.sample_rate
        draws.append((masks, g.standard_normal((rule.local_steps, spec.size))))
    return draws


def _dp_step(flat_sum: Tensor, noise: Tensor, theta_flat: Tensor, anchor: Tensor, n_k: Tensor, rule, algo):
    """Noise, scale by the expected batch :math:`q_\\ell n_k`, FedProx pull, SGD step (flat tensors)."""
    noisy = (flat_sum + rule.noise_multiplier * rule.clip_norm * noise) / (rule.sample_rate * n_k)
    return theta_flat - algo.local_lr * (noisy + algo.mu * (theta_flat - anchor))


def dp_train_loop(model, spec, params, clients, sel, algo, base_seed, round_index, *, rule) -> Tensor:
    """Client-by-client DP-SGD, through :func:`privlab.dpsgd.clipped_grad_sum`."""
    local = copy.deepcopy(model)
    out = []
    for k, (masks, noise) in zip(sel, sample_level_draws(clients, sel, spec, rule, base_seed, round_index)):
        x, y = clients.client(int(k))
        theta = params.clone()
        for s in range(rule.local_steps):
            with torch.no_grad():
                for name, value in spec.unflatten(theta).items():
                    local.get_parameter(name).copy_(value)
            idx = torch.as_tensor(np.flatnonzero(masks[s]), device=x.device)
            summed = clipped_grad_sum(local, LOSSES[algo.loss], x[idx], y[idx], max_grad_norm=rule.clip_norm,
                                      method=rule.kernel)  # fmt: skip
            flat = torch.cat([g.reshape(-1) for g in summed])
            theta = _dp_step(flat, torch.as_tensor(noise[s], dtype=theta.dtype), theta, params,
                             torch.tensor(float(len(y))), rule, algo)  # fmt: skip
        out.append(theta)
    return torch.stack(out) if out else params.new_zeros((0, spec.size))


def dp_train_vmap(model, spec, params, clients, sel, algo, base_seed, round_index, *, rule) -> Tensor:
    """All clients' DP-SGD at once: per-example gradients by a nested ``vmap`` over clients and examples."""
    m, dev = len(sel), clients.x.device
    if m == 0:
        return params.new_zeros((0, spec.size))
    idx = torch.as_tensor(sel, device=dev)
    x, y, n_k = clients.x[idx], clients.y[idx], torch.as_tensor(clients.sizes[sel], dtype=params.dtype, device=dev)
    draws = sample_level_draws(clients, sel, spec, rule, base_seed, round_index)
    masks = np.zeros((m, rule.local_steps, x.shape[1]), dtype=np.float32)
    for i, (mk, _) in enumerate(draws):
        masks[i, :, : mk.shape[1]] = mk
    masks = torch.from_numpy(masks).to(dev)
    noise = torch.as_tensor(np.stack([nz for _, nz in draws]), dtype=params.dtype, device=dev)
    loss_fn = LOSSES[algo.loss]

    def example_loss(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi[None],)), yi[None]).sum()

    per_example = vmap(vmap(grad(example_loss), in_dims=(None, 0, 0)), in_dims=(0, 0, 0))
    theta = params.expand(m, -1).clone()
    for s in range(rule.local_steps):
        g = spec.flatten(per_example(spec.unflatten(theta), x, y))  # (m, N, P)
        factors = masks[:, s] * (rule.clip_norm / g.norm(dim=-1).clamp_min(rule.clip_norm))  # (m, N)
        flat_sum = torch.einsum("mn,mnp->mp", factors, g)
        theta = _dp_step(flat_sum, noise[:, s], theta, params, n_k[:, None], rule, algo)
    return theta


@dataclass(frozen=True, kw_only=True)
class SampleLevelDP(NoPrivacy):
    r"""Sample-level DP-FedAvg: DP-SGD with Poisson sampling inside every client.

    Args:
        clip_norm: per-example :math:`C`. noise_multiplier: :math:`\sigma`.
        sample_rate: the local Poisson rate :math:`q_\ell`. local_steps: :math:`s` per round.
        delta: :math:`\delta`. accountant: ``"pld"`` or ``"rdp"``.
        kernel: the :func:`privlab.dpsgd.clipped_grad_sum` method the ``"loop"`` trainer uses.
        client_seeds: one secret seed per client (``client_seeds[k]`` is client
            ``k``'s, for its DP noise and Poisson masks, :func:`private_client_rng`);
            the server and the other clients never receive it. Distinct seeds are
            required. ``None`` (default) uses fresh OS entropy: not reproducible,
            as in deployment. Holding all the seeds in one object is a simulation
            shortcut: a deployment must not copy it.

    The noise must come from randomness the server cannot rebuild: were it drawn
    from the server's shuffle seed, the server would subtract it and see every
    client's clipped gradient sums without noise, and sample-level DP would give
    nothing against the server. Nor may clients share one seed: then any client
    could regenerate every other client's noise, and one client colluding with
    the server (or one leaked configuration) would remove the noise from all
    updates.

    The algorithm's ``local_epochs`` and ``batch_size`` are not used (DP-SGD draws
    its own batches); ``local_lr`` and ``mu`` are.

    Privacy unit: one record; neighbouring: add or remove one record, with the
    client sizes :math:`n_k` treated as public (they set the normalisation
    :math:`1/(q_\ell n_k)` and the server's weights :math:`n_k/\sum_j n_j`; see
    the module docstring).

    Reference: Abadi et al. 2016, arXiv:1607.00133, Algorithm 1, run by each client.
    """

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    sample_rate: float = 0.1
    local_steps: int = 10
    delta: float = 1e-5
    accountant: str = "pld"
    kernel: str = "vmap"
    client_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        check_probability("sample_rate", self.sample_rate)
        check_int("local_steps", self.local_steps)
        if self.client_seeds is not None:
            seeds = tuple(int(s) for s in self.client_seeds)
            if len(set(seeds)) != len(seeds):
                raise ValueError("client_seeds must be distinct: a shared seed lets one client rebuild another's noise")
            object.__setattr__(self, "client_seeds", seeds)
        if self.kernel not in ("loop", "vmap", "fast"):
            raise ValueError(f"kernel must be 'loop', 'vmap' or 'fast', got {self.kernel!r}")

    METHODS: ClassVar[tuple[str, ...]] = ("auto", "vmap", "loop")  # per-example gradients: no bmm path

    def client_seed_of(self, k: int) -> int | None:
        """Client ``k``'s own secret seed (``None``: OS entropy)."""
        if self.client_seeds is None:
            return None
        if not 0 <= k < len(self.client_seeds):
            raise ValueError(f"no secret seed for client {k}: client_seeds has {len(self.client_seeds)}")
        return self.client_seeds[k]

    def trainer(self, method: str):
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        return partial({"auto": dp_train_vmap, "vmap": dp_train_vmap, "loop": dp_train_loop}[method], rule=self)

    def epsilon(self, rounds: int, num_clients: int, algo: FedAvg) -> float:
        return _epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                        steps=self.local_steps * rounds, delta=self.delta, accountant=self.accountant)  # fmt: skip

