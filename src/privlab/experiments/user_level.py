r"""User-level DP-SGD: sample users, clip each user's summed gradient, add noise once.

Example-level DP-SGD protects one *row*: its neighbouring datasets differ in one
interaction. A user with :math:`k` rows is then protected only through group
privacy, :math:`(k\varepsilon, k e^{(k-1)\varepsilon}\delta)`, which is vacuous
for a power user. User-level DP-SGD (McMahan et al. 2018, "Learning
differentially private recurrent language models", arXiv:1710.06963, DP-FedSGD;
Charles et al. 2024, "Fine-tuning large language models with user-level
differential privacy", arXiv:2407.07737, "user-level sampling") makes the
*user* the privacy unit: the neighbouring relation is add/remove one user with
all their rows. One step is

.. math::
    \tilde g = \frac{1}{qU}\Bigl(\sum_{u \in S} \min\Bigl(1, \frac{C}{\|G_u\|}\Bigr) G_u
    + \mathcal N(0, \sigma^2 C^2 I)\Bigr), \qquad
    G_u = \nabla_\theta \sum_{r \in R_u} \ell_r, \qquad S \sim \mathrm{Poisson}(q),

with :math:`U` users, :math:`R_u` user :math:`u`'s rows (at most ``max_rows``
of them: a public cap, contribution bounding) and :math:`q = b/U`. Adding or
removing a user moves the clipped sum by at most :math:`C`, so the accountants
of :mod:`privlab.accounting` apply unchanged with :math:`N = U`.

Implementation, on :mod:`privlab.dpsgd`'s public API only: :func:`pack_by_user`
lays each user's rows out as one padded "sequence" ``(U, R, ...)`` with a 0/1
mask; :func:`masked_loss` sums a row loss over a user's real rows; then a
user *is* one example of :func:`privlab.dpsgd.train` (its fast path handles
Linear, LayerNorm and Embedding on sequences), so Poisson sampling, clipping,
noise and the optimizer step are the package's. :func:`user_clipped_sum_reference`
is the obviously-correct loop (one autograd call per user) the tests compare it with.

Used in: chapter 13.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from privlab._validate import check_int, check_positive, check_rng
from privlab.dpsgd import train

__all__ = ["PackedUsers", "masked_loss", "pack_by_user", "train_user_level", "user_clipped_sum_reference"]


@dataclass(frozen=True, eq=False)
class PackedUsers:
    """Rows grouped per user and padded: user :math:`j` is ``inputs[k][j]``, its real rows where the mask is 1."""

    users: np.ndarray  # (U,) user ids, one per packed user (users with at least one row)
    inputs: tuple[Tensor, ...]  # each (U, R, ...): the row inputs, zero-padded
    targets: Tensor  # (U, R, 2) float32: [..., 0] the row label, [..., 1] the mask (1 = a real row)
    rows_kept: int  # rows kept after the cap
    rows_total: int  # rows before the cap

    @property
    def n_users(self) -> int:
        """:math:`U`, the number of privacy units."""
        return int(self.users.size)

    @property
    def rows_per_user(self) -> np.ndarray:
        """(U,) rows kept per user."""
        return self.targets[..., 1].sum(1).numpy().astype(np.int64)


def pack_by_user(user, inputs: Sequence, labels, *, max_rows: int, rng: np.random.Generator) -> PackedUsers:
    r"""Group rows by user, keep at most ``max_rows`` per user (a uniform random subset), pad.

    The cap is a public constant and the subset of a user's rows is a uniform draw from
    that user's rows only, so removing a user leaves the distribution of every other
    user's subset unchanged (one permutation is drawn over all rows, so with a fixed
    ``rng`` the subsets themselves can shift; within disjoint users a uniform permutation
    gives independent uniform orders): the packing is a per-user transformation in
    distribution and user-level DP of the training carries over.

    Args:
        user: (N,) integer user id per row.
        inputs: arrays or tensors of shape (N, ...), the model's positional inputs per row.
        labels: (N,) row labels.
        max_rows: :math:`R`, the most rows a user contributes.
        rng: numpy Generator for the subset of a capped user's rows.

    Returns:
        :class:`PackedUsers`, users in increasing id order.

    Raises:
        ValueError: empty data, mismatched lengths or a bad ``max_rows``.

    >>> p = pack_by_user(np.array([3, 1, 3, 3]), [np.arange(4.0)], np.array([1, 0, 1, 0]), max_rows=2,
    ...                  rng=np.random.default_rng(0))
    >>> p.users.tolist(), tuple(p.inputs[0].shape), p.rows_per_user.tolist(), p.rows_kept, p.rows_total
    ([1, 3], (2, 2), [1, 2], 3, 4)
    """
    rng = check_rng(rng)
    r_max = check_int("max_rows", max_rows)
    user = np.asarray(user)
    n = user.size
    arrays = [torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x for x in inputs]
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if n == 0 or user.ndim != 1:
        raise ValueError(f"user must be a non-empty 1-D array, got shape {user.shape}")
    if any(a.shape[0] != n for a in arrays) or lab.shape != (n,):
        raise ValueError(f"inputs and labels must have {n} rows, got {[tuple(a.shape) for a in arrays]}, "
                         f"{tuple(lab.shape)}")  # fmt: skip
    # a random order, then a stable sort by user: each user's rows in random order, the first R kept
    perm = rng.permutation(n)
    order = perm[np.argsort(user[perm], kind="stable")]
    u_sorted = user[order]
    users, start, counts = np.unique(u_sorted, return_index=True, return_counts=True)
    rank = np.arange(n) - np.repeat(start, counts)  # position of each row within its user
    keep = rank < r_max
    rows, slot = np.repeat(np.arange(users.size), counts)[keep], rank[keep]
    width = int(min(r_max, counts.max()))
    src = torch.from_numpy(order[keep])
    r_idx, s_idx = torch.from_numpy(rows), torch.from_numpy(slot)
    packed = []
    for a in arrays:
        out = torch.zeros((users.size, width, *a.shape[1:]), dtype=a.dtype)
        out[r_idx, s_idx] = a[src]
        packed.append(out)
    targets = torch.zeros((users.size, width, 2), dtype=torch.float32)
    targets[r_idx, s_idx, 0] = lab[src]
    targets[r_idx, s_idx, 1] = 1.0
    return PackedUsers(users=users, inputs=tuple(packed), targets=targets, rows_kept=int(keep.sum()), rows_total=n)


def masked_loss(row_loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    r"""Per-user loss :math:`\sum_r m_{ur}\,\ell(z_{ur}, y_{ur})` from a per-row loss, as a ``(U, R)`` tensor.

    ``row_loss(outputs, labels)`` returns per-row losses (e.g.
    ``nn.BCEWithLogitsLoss(reduction="none")``); padded rows get weight 0.
    :func:`privlab.dpsgd.train` sums all but the batch dimension, so each user's
    loss is the sum over their real rows.

    >>> f = masked_loss(lambda z, y: (z - y) ** 2)
    >>> f(torch.tensor([[1.0, 5.0]]), torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])).tolist()
    [[1.0, 0.0]]
    """

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return row_loss(outputs, targets[..., 0]) * targets[..., 1]

    return loss


def user_clipped_sum_reference(model: nn.Module, row_loss, inputs: Sequence[Tensor], labels: Tensor, user,
                               *, max_grad_norm: float) -> list[Tensor]:  # fmt: skip
    r"""The slow, obviously-correct user-level kernel: :math:`\sum_u \min(1, C/\|G_u\|)\, G_u`.

    One autograd call per user on its flat rows (no padding), for the tests.

    Args:
        model: maps the flat row inputs ``(n, ...)`` to per-row outputs.
        row_loss: per-row loss ``(n,)``.
        inputs: flat row inputs; labels: (n,) row labels; user: (n,) user ids.
        max_grad_norm: :math:`C`.
    """
    c = check_positive("max_grad_norm", max_grad_norm)
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    user = np.asarray(user)
    for u in np.unique(user):
        idx = torch.from_numpy(np.flatnonzero(user == u))
        loss = row_loss(model(*[x[idx] for x in inputs]), labels[idx]).sum()
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = c / max(float(norm), c)
        total = [t + factor * g for t, g in zip(total, grads)]
    return total


def train_user_level(model: nn.Module, packed: PackedUsers, *, row_loss, config, generator: torch.Generator):
    """User-level DP-SGD: :func:`privlab.dpsgd.train` with one packed user as one example.

    ``config.batch_size`` (or ``sample_rate``) counts *users*; the accountant's
    :math:`N` is ``packed.n_users``. The recorded losses are per *user* (the sum
    over their rows); divide by the mean rows per user for a per-row loss.
    """
    inputs = packed.inputs if len(packed.inputs) > 1 else packed.inputs[0]
    with warnings.catch_warnings():
        # the per-user loss is (B, R) by design; when a Poisson batch has B == R users the
        # kernel's (B, B) broadcasting heuristic fires on it: not a mixing of examples here
        warnings.filterwarnings("ignore", message="loss_fn returned shape", category=RuntimeWarning)
        return train(model, inputs, packed.targets, loss_fn=masked_loss(row_loss), config=config,
                     generator=generator)
