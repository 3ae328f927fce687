r"""DP-SGD on several processes (GPUs): the clipped sums all-reduced, the noise added once.

One step on :math:`W` workers (ranks), with the *global* Poisson batch
:math:`S_t` split into disjoint parts :math:`S_t^{(0)}, \dots, S_t^{(W-1)}`:

.. math::
    \tilde g = \frac{1}{qN}\Bigl(\underbrace{\sum_{r=0}^{W-1}\; \sum_{i \in S_t^{(r)}}
    \mathrm{clip}_C(g_i)}_{\text{local clipped sums, all-reduced}}
    \;+\; \mathcal{N}(0, \sigma^2 C^2 I)\Bigr),
    \qquad S_t \sim \mathrm{Poisson}(q) \text{ over all } N \text{ examples}.

Symbols as in :class:`privlab.dpsgd.DPOptimizer`: :math:`C` ``max_grad_norm``,
:math:`\sigma` ``noise_multiplier``, :math:`qN` the expected batch size.

**Sampling.** Every rank draws the *same* global Poisson batch from an
identically seeded sampler (cheap: :math:`O(|S_t|)`, independent of :math:`N`)
and keeps its contiguous slice ``torch.tensor_split(S_t, W)[rank]`` (:func:`local_slice`). The batch
the accountant sees is therefore exactly the single-process one, so
:math:`\varepsilon(\sigma, q, T, \delta)` is unchanged and computed with the
global :math:`q` (no per-rank accounting). (The alternative, each rank
Poisson-sampling its own shard at rate :math:`q`, also yields a Poisson(:math:`q`)
sample of the union, but no longer reproduces the single-process run.)

**Noise, once.** The local clipped sums are all-reduced (summed; one collective
on a flat buffer, as ``DistributedDataParallel`` buckets do). Then *every* rank
adds the *same* draw :math:`z \sim \mathcal{N}(0, \sigma^2 C^2 I)` from a noise
generator seeded identically on all ranks. The released update is
:math:`\sum_{i \in S_t}\mathrm{clip}_C(g_i) + z` with one :math:`z`: exactly the
Gaussian mechanism of the single-process step, so the privacy guarantee is
unchanged. Had every rank drawn *independent* noise before the all-reduce, the
sum would carry :math:`W` draws (variance :math:`W\sigma^2C^2`: more privacy,
worse accuracy, a mis-stated :math:`\sigma`); had they drawn independent noise
after it, the replicas would diverge. Identical noise keeps the replicas
bit-for-bit in sync without a broadcast; the alternative "rank 0 adds the noise
before the all-reduce" is equivalent in distribution. Ranks are trusted (they
hold raw data); the guarantee covers what leaves training: the model and its
updates.

**DDP semantics.** Parameters are broadcast from rank 0 at the start (as
``DistributedDataParallel`` does on construction), and every rank applies the
identical noisy update, so the replicas stay equal. Per-sample gradients need
their own backward passes, so instead of wrapping the model in
``DistributedDataParallel`` (whose hooks all-reduce the *unclipped* batch
gradient) the clipped sums are all-reduced explicitly in
:meth:`DistributedDPOptimizer.reduce`, the hook :class:`~privlab.dpsgd.DPOptimizer`
provides for this.

**All of it lives here.** :func:`privlab.dpsgd.train` knows nothing of processes:
:func:`train_distributed` runs it on every rank with :class:`DistributedDPOptimizer`, whose
:meth:`~DistributedDPOptimizer.step` receives the global batch, keeps the rank's slice,
and sums the batch loss over ranks in the same collective as the clipped sums (so the
epoch losses ``train`` records are global, with no extra synchronisation).

With the same seed the result equals :func:`privlab.dpsgd.train` up to float
summation order (the tests check 1e-5), for models without dropout: dropout
masks are drawn per rank, for the rank's slice, so with dropout the run is
equally private but not the same draw.

Backends: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``).
Run with ``torchrun --nproc_per_node=N -m privlab.dpsgd.distributed ...``, or through the
command line, ``torchrun --nproc_per_node=N $(which privlab) distributed ...`` (``--help``
lists the options; without torchrun either runs as one process).

Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1; Li et al.,
*PyTorch Distributed: Experiences on Accelerating Data Parallel Training*,
VLDB 2020 (arXiv:2006.15704) for DDP.

Used in: chapters 8, 13.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..losses import bce_losses
from ..models import StreamRecClickPredictor
from .optimizer import DPOptimizer, StepStats
from .per_sample import as_input_tuple, batch_size_of
from .train import DPSGDConfig, TrainResult, train

__all__ = ["DistributedDPOptimizer", "init_distributed", "local_slice", "main", "train_distributed"]


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_slice(idx: Tensor, *, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous part of the global batch ``idx`` (parts differ in size by at most one).

    >>> local_slice(torch.arange(5), rank=1, world_size=2)
    tensor([3, 4])
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    return torch.tensor_split(idx, world_size)[rank]


class DistributedDPOptimizer(DPOptimizer):
    r""":class:`~privlab.dpsgd.DPOptimizer` for one rank of a process group: its slice, one all-reduce, same noise.

    :meth:`step` takes the *global* batch (every rank drew the same one) and steps on
    this rank's :func:`local_slice` of it; :meth:`reduce` sums the clipped sums over ranks,
    :math:`\bar g = \sum_r \bar g^{(r)}`, in one ``all_reduce`` on a flat buffer that also
    carries the slice's loss sum, so :attr:`StepStats.loss_sum` is the global batch's.
    ``add_noise`` is inherited unchanged: every rank's generator is seeded identically, so
    all ranks add the same draw, once, after the sum. Dropout masks differ per rank: on its
    first step, rank :math:`r` reseeds torch's generator (which :func:`~privlab.dpsgd.train`
    has seeded inside ``fork_rng``) with its initial seed :math:`+ r`.
    Without a process group it is the plain :class:`DPOptimizer`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_sum: Tensor | None = None  # this slice's loss sum, then the global one (after reduce)
        self._dropout_seeded = False

    def clipped_sum(self, model: nn.Module, loss_fn, inputs, targets):
        result = super().clipped_sum(model, loss_fn, inputs, targets)
        self._loss_sum = result.losses.sum()
        return result

    def reduce(self, grads: list[Tensor]) -> list[Tensor]:
        if _world()[1] == 1 or not grads:
            return grads
        flat = torch.cat([g.reshape(-1) for g in grads] + [self._loss_sum.to(grads[0].dtype).reshape(1)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self._loss_sum = flat[-1]
        return [part.view_as(g) for part, g in zip(torch.split(flat[:-1], [g.numel() for g in grads]), grads)]

    def step(self, model: nn.Module, loss_fn, inputs, targets) -> StepStats:
        """One DP-SGD step on this rank's slice of the global batch ``inputs``, ``targets``."""
        rank, world = _world()
        if world == 1:
            return super().step(model, loss_fn, inputs, targets)
        if not self.private:
            raise ValueError("non-private distributed training is plain DDP; use torch's DistributedDataParallel")
        if not self._dropout_seeded:  # train() seeded torch inside fork_rng; each rank its own masks
            torch.manual_seed(torch.initial_seed() + rank)
            self._dropout_seeded = True
        xs = as_input_tuple(inputs)
        rows = local_slice(torch.arange(batch_size_of(xs)), rank=rank, world_size=world).to(xs[0].device)
        xs = tuple(x.index_select(0, rows) for x in xs)
        targets = None if targets is None else targets.index_select(0, rows)
        stats = super().step(model, loss_fn, xs if len(xs) > 1 else xs[0], targets)
        return StepStats(self._loss_sum, stats.norms)


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ...); returns (rank, world, device).

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. On
    CUDA each rank uses ``cuda:LOCAL_RANK``. Without torchrun's variables it
    runs as a single process (rank 0 of 1, no group).
    """
    cuda = torch.cuda.is_available() and backend in (None, "nccl")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def train_distributed(
    model: nn.Module,
    X,
    y,
    *,
    loss_fn,
    config: DPSGDConfig,
    generator: torch.Generator,
    eval_fn: Callable[[nn.Module], object] | None = None,
) -> TrainResult:
    r""":func:`privlab.dpsgd.train` on every rank of the current process group; same arguments, same result.

    Call it on every rank with the same model initialisation, the same data
    ``(X, y)`` and a generator seeded identically (the seeds of the sampler and
    the noise are drawn from it exactly as :func:`~privlab.dpsgd.train` does).
    Each rank computes the clipped sum of its slice of the global Poisson
    batch; :class:`DistributedDPOptimizer` sums them (and the batch losses) and adds
    the noise once. Epsilon is the single-process one; only rank 0 shows a progress bar.

    Args:
        model, X, y, loss_fn, config, generator, eval_fn: as in :func:`privlab.dpsgd.train`
            (``config.record_grad_norms`` is not supported here).

    Returns:
        :class:`~privlab.dpsgd.TrainResult`, identical on every rank.

    Raises:
        ValueError: bad config, generator or data shapes.

    Reference: Abadi et al. 2016 (arXiv:1607.00133), Algorithm 1.

    >>> g = torch.Generator().manual_seed(0)
    >>> X, y = torch.randn(40, 3, generator=g), torch.randn(40, generator=g)
    >>> mse = lambda out, t: (out.squeeze(1) - t) ** 2
    >>> cfg = DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0, batch_size=8, accountant=None, progress=False)
    >>> train_distributed(nn.Linear(3, 1), X, y, loss_fn=mse, config=cfg,
    ...                   generator=torch.Generator().manual_seed(1)).steps   # one process: plain train()
    5

    Used in: chapters 8, 13.
    """
    if not isinstance(config, DPSGDConfig):
        raise ValueError(f"config must be a DPSGDConfig, got {type(config).__name__}")
    if config.record_grad_norms:
        raise ValueError("record_grad_norms=True is not supported in distributed training; profile with train()")
    if config.cuda_graph:
        raise ValueError("cuda_graph=True is not supported in distributed training (each rank's slice varies); "
                         "use train() on one device")
    rank, world = _world()
    if world > 1:
        if rank != 0:
            config = dataclasses.replace(config, progress=False)
        if not config.private:
            raise ValueError("non-private distributed training is plain DDP; use torch's DistributedDataParallel")
        device = torch.device(config.device) if config.device is not None else next(model.parameters()).device
        model.to(device)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        n = batch_size_of(as_input_tuple(X))
        _same_on_every_rank(generator, n, config, device, rank, world)  # before anything is changed
        for t in list(model.parameters()) + list(model.buffers()):  # DDP's construction-time broadcast:
            dist.broadcast(t.data, src=0)  # every replica starts from rank 0's parameters
    return train(model, X, y, loss_fn=loss_fn, config=config, generator=generator, eval_fn=eval_fn,
                 dp_optimizer_cls=DistributedDPOptimizer)


def _same_on_every_rank(generator: torch.Generator, n: int, config: DPSGDConfig, device, rank: int,
                        world: int) -> None:
    """Refuse a run whose ranks differ in the generator's state, the number of examples or the config.

    Every rank draws the *global* Poisson batch and the noise from its own generator and keeps its
    slice: with different seeds the slices come from different batches, so an example can land in
    two ranks' slices and be summed twice (sensitivity 2C), and each rank adds its own noise; the
    reported epsilon would not change. Measured before this check (a red-team read, 2 gloo ranks
    seeded 1 and 2, N = 400, b = 40): 37 examples summed twice in 200 steps, no error."""
    def digest(data: bytes) -> int:
        return int.from_bytes(hashlib.sha256(data).digest()[:7], "big")

    # every field but progress and device (they may differ by rank); a callable (an optimizer
    # factory) by its qualified name, as its repr holds a per-process address
    fields = [(f.name, getattr(v, "__qualname__", None) if callable(v) else repr(v))
              for f in dataclasses.fields(config) if f.name not in ("progress", "device")
              for v in [getattr(config, f.name)]]
    mine = torch.tensor([digest(generator.get_state().numpy().tobytes()), n, digest(repr(fields).encode())],
                        dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    for r, other in enumerate(every):
        if not torch.equal(other, every[0]):
            what = [name for name, a, b in zip(("generator state", "number of examples", "config"),
                                               other.tolist(), every[0].tolist()) if a != b]
            raise ValueError(f"rank {r} differs from rank 0 in its {', '.join(what)} (this is rank {rank}): "
                             "every rank needs the same data, config and generator seed, else their batches "
                             "differ and an example can be summed twice")


# -- command line: torchrun --nproc_per_node=N -m privlab.dpsgd.distributed ... --------------------


def _synthetic(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded logistic task: x ~ N(0, I_d), y ~ Bernoulli(sigmoid(w.x)), identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g) / math.sqrt(d) * 2
    y = torch.bernoulli(torch.sigmoid(X @ w), generator=g)
    return X, y


def main(argv=None, prog: str = "python -m privlab.dpsgd.distributed") -> dict:
    """Train the StreamRec click MLP (dropout off) with DP-SGD on every rank; rank 0 prints and writes JSON."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Multi-process DP-SGD (clipped sums all-reduced, noise added once per step). "
                    "Launch: torchrun --nproc_per_node=N -m privlab.dpsgd.distributed [options]; "
                    "without torchrun it runs as one process.")
    p.add_argument("--examples", type=int, default=20_000, help="examples in the synthetic task (default 20000)")
    p.add_argument("--features", type=int, default=40, help="input features (default 40)")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 64, 32], help="hidden sizes")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512, help="expected (Poisson) batch size qN")
    p.add_argument("--sigma", type=float, default=1.0, help="noise multiplier")
    p.add_argument("--clip", type=float, default=1.0, help="max_grad_norm C")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--method", choices=["fast", "vmap", "loop"], default="fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl on CUDA, else gloo")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--out", default=None, help="rank 0 writes results (and final parameters) to this JSON file")
    p.add_argument("--progress", action="store_true", help="show a progress bar on rank 0")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = init_distributed(args.backend)
    try:
        X, y = _synthetic(args.examples, args.features, args.seed)
        torch.manual_seed(args.seed)  # the model's initialisation, identical on every rank
        model = StreamRecClickPredictor(args.features, args.hidden, dropout=0.0)
        cfg = DPSGDConfig(noise_multiplier=args.sigma, max_grad_norm=args.clip, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, method=args.method,
                          progress=args.progress, device=str(device))
        start = time.perf_counter()
        res = train_distributed(model, X, y, loss_fn=bce_losses, config=cfg,
                                generator=torch.Generator().manual_seed(args.seed + 1))
        wall = time.perf_counter() - start
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
        out = {"world_size": world, "backend": dist.get_backend() if dist.is_initialized() else None, "device": str(device),
               "steps": res.steps, "losses": list(res.losses), "epsilon": res.epsilon, "delta": res.delta,
               "sample_rate": res.sample_rate, "seconds": wall, "params": flat.tolist()}
        if rank == 0:
            print(f"world {world} ({out['backend'] or 'single process'}, {device}): {res.steps} steps, "
                  f"loss {res.losses[-1]:.4f}, epsilon {res.epsilon:.3f} at delta {res.delta:.1e}, {wall:.1f} s")
            if args.out:
                with open(args.out, "w") as fh:
                    json.dump(out, fh)
        return out
    finally:
        if dist.is_initialized():  # a group of one under torchrun too
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
