"""Per-step time and peak memory of DP-SGD implementations on the StreamRec MLP, measured in one run.

The model is the StreamRec click predictor of COURSE.md: 40 -> 128 -> 64 -> 32 -> 1,
each hidden block Linear-LayerNorm-ReLU-Dropout(0.1); binary cross-entropy; batch
4096 (``--batch``); SGD. Every DP variant uses sigma = 1, C = 1.

Rows: a non-private step (the baseline every ratio divides by), privlab's fast
path, the same with its memory option ``recompute_norm_inputs`` ("recomp"), the
fast path as it was before issue 18 ("prev", loaded from git at
:data:`PREVIOUS_FAST_COMMIT`), privlab's vmap, privlab's loop (on ``--loop-batch`` examples, its time
scaled linearly to the full batch; its memory is *not* scaled), and Opacus 1.6's
grad_sample modes hooks, ew (expanded weights), functorch and ghost (fast
gradient clipping; the logits are squeezed to (B,) so its (B, 1) pitfall does
not apply).

The step factories, timers and peak-memory measurement are :mod:`privlab.profiling`'s
(chapter 8 uses the same); this script adds the two privlab variants above and the command line.

Timing: ``--rounds`` rounds, each timing ``--steps`` consecutive steps of every
method in turn (interleaved, so a busy shared machine slows all methods alike);
reported: the median over rounds of the mean wall-clock step time, and the same
for the process's CPU time (``time.process_time``), which on a machine shared
with other work is the steadier measure of the work done (with several threads
it is their sum, not a latency). On CUDA the device is synchronised around each
timed block.

Peak memory, one further step per method, honestly labelled:
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the memory
  allocated when it began;
* CPU: the same quantity for torch's CPU allocator, from the allocation and free
  events of ``torch.profiler`` (``profile_memory=True``): the running sum of
  bytes allocated minus freed since the step began, maximised over the step.
  Not RSS: NumPy/Python allocations and allocator caching are not counted.
In both cases the model, optimizer state and the input batch, allocated before
the step, are excluded; gradients are released before each step.

A second table times the kernel alone (the issue's second target): a non-private forward and
backward (the baseline), the forward with the backward for the layers' output gradients only (what
the fast path cannot avoid), :func:`handwritten_kernel` (the whole clipped sum written out for this
MLP: the floor of the design in eager PyTorch), :func:`twopass_kernel` (ghost clipping by hand: two
backward passes, no output gradients held), :func:`remat_kernel` (the forward re-run), privlab's
kernel and the previous one, each with its
peak memory measured as the steps' is (``--no-kernel`` skips it).

Why 1.10x memory is out of reach here without re-running layers (the argument behind the kernel
table's memory column; float32, B = 4096, MB = 2^20 bytes): the non-private step peaks as its
backward begins, holding the forward's saved tensors (14.1 MB; 14.6 MB peak). When the backward
reaches the first hidden block (width 128), a non-private step has freed everything after it; that
block's own saved tensors (its Linear's output, the ReLU's output, dropout's float mask: 3 x 2 MB)
and autograd's two transients there (the next Linear's input gradient and the dropout product,
2 x 2 MB) are live either way: 10 MB. A clipped sum cannot be formed before every example's norm is
known, which needs this block's gradients, so at that moment an exact method must also hold, for
every layer after the block, what its clipped sum needs per example: each later Linear's input and
output gradient (128 + 64, 64 + 32, 32 + 1) and each later LayerNorm's per-example gradients
(2 x 64, 2 x 32): 513 floats, 8.0 MB, so 18.0 MB = 1.23x (measured: privlab 18.09 MB). Ghost
clipping (:func:`twopass_kernel`) keeps instead those layers' saved tensors for its second backward,
as much (measured 18.3 MB). Recomputing a LayerNorm's input from the Linear input that is held anyway
(one matmul; ``recompute_norm_inputs``) replaces its 2d per-example floats by its output gradient's
d: 417 floats, 6.5 MB, 16.5 MB = 1.13x (measured 16.56 MB, at about 1.4x time). What is left is
inputs of later Linears and output gradients; rebuilding those means re-running the later layers'
forward with the same dropout draws, or their backward: more time again. :func:`remat_kernel` (the
"remat" row) is the far end of that trade: a norms pass that frees as it goes, then the whole
forward re-run for the clipped sum; it meets the memory target and pays about a second step
(measured 1.04x memory at 1.98x time).

The machine's load average (1, 5, 15 minutes) is printed before and after the timing: on a
shared machine the ratios, measured side by side, are the figures to read, not the milliseconds.

Benchmarks are not tests: this prints figures and never fails on a slow machine.

On CUDA, two more rows (``--no-graph`` skips them): a non-private and privlab's fast step replayed
from a CUDA graph (:class:`privlab.dpsgd.CUDAGraphStep`, what ``DPSGDConfig(cuda_graph=True)`` trains):
each call pads the batch to the capacity a Poisson batch of this expected size out of
:data:`GRAPH_N` examples gets (:func:`privlab.dpsgd.graph_capacity`: 4480 rows for 4096), copies the
indices to the device and replays. Their ratio to each other is printed too. Their peak memory is
that of the warm-up and capture (a replay allocates nothing: the graph's pool holds that memory
between steps).

With ``--compile``, two more rows: a non-private step and privlab's fast step on
``torch.compile(model, dynamic=True)`` (what ``DPSGDConfig(compile=True)`` trains), against the
same eager non-private baseline.

Usage: python benchmarks/dpsgd.py [--device cpu|cuda|auto] [--batch 4096] [--threads 2] [--no-heap-trim]
                                 [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import warnings

import torch

from privlab.dpsgd import CUDAGraphStep, DPOptimizer, graph_capacity
from privlab.losses import bce_losses
from privlab.profiling import (  # noqa: F401  (time_steps, step_peak_bytes, disable_heap_trimming: dpsgd_lm.py's too)
    STEPS,
    disable_heap_trimming,
    privlab_step,
    step_peak_bytes,
    streamrec_mlp,
    time_steps,
)


#: The fast path as it was before issue 18 (recomputed norm inputs, unfused rules), loaded from git so the
#: gain shows in one run without a second copy of the code in the repository.
PREVIOUS_FAST_COMMIT = "aed51482e78181f0ae8f7783d7d4d8fee0a5dc26"


def previous_fast():
    """``fast_norms_and_clipped_sum`` of privlab at :data:`PREVIOUS_FAST_COMMIT` (its fast.py, rules.py and
    per_sample.py, which import nothing else of privlab), imported from ``git show`` into a private package.

    Raises ``RuntimeError`` where git or the commit is not there (a copy of the tree without its history).
    """
    import importlib
    import pathlib
    import subprocess
    import sys
    import tempfile

    name = "_privlab_dpsgd_previous"
    if name not in sys.modules:
        root = pathlib.Path(__file__).resolve().parent.parent
        pkg = pathlib.Path(tempfile.mkdtemp(prefix="privlab_prev_")) / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        for f in ("fast.py", "rules.py", "per_sample.py"):
            try:
                src = subprocess.run(["git", "-C", str(root), "show", f"{PREVIOUS_FAST_COMMIT}:src/privlab/dpsgd/{f}"],
                                     check=True, capture_output=True, text=True).stdout
            except (OSError, subprocess.CalledProcessError) as exc:
                raise RuntimeError(f"the previous fast path needs git and commit {PREVIOUS_FAST_COMMIT[:7]}: "
                                   f"{exc}") from None
            (pkg / f).write_text(src)
        sys.path.insert(0, str(pkg.parent))
    return importlib.import_module(f"{name}.fast").fast_norms_and_clipped_sum


def privlab_previous_step(model, *, batch, device):
    """privlab's DPOptimizer with the kernel's fast path swapped for the previous one during each step."""
    from privlab.dpsgd import clipping

    previous, inner = previous_fast(), privlab_step("fast")(model, batch=batch, device=device)
    step, release = inner

    def swapped(x, y):
        current = clipping.fast_norms_and_clipped_sum
        clipping.fast_norms_and_clipped_sum = previous
        try:
            step(x, y)
        finally:
            clipping.fast_norms_and_clipped_sum = current

    return swapped, release


def privlab_recompute_step(model, *, batch, device):
    """privlab's fast path with its memory option on: norm-layer inputs recomputed after the backward."""
    from privlab.dpsgd import fast

    step, release = privlab_step("fast")(model, batch=batch, device=device)

    def recomputing(x, y):
        default, fast.RECOMPUTE_NORM_INPUTS = fast.RECOMPUTE_NORM_INPUTS, True
        try:
            step(x, y)
        finally:
            fast.RECOMPUTE_NORM_INPUTS = default

    return recomputing, release


def compiled(factory):
    """The same step on ``torch.compile(model, dynamic=True)``, as ``DPSGDConfig(compile=True)`` trains."""

    def make(model, *, batch, device):
        return factory(torch.compile(model, dynamic=True), batch=batch, device=device)

    return make


def handwritten_kernel(model, x, y, max_grad_norm=1.0):
    """The clipped sum written out by hand for this MLP: the floor of the book-keeping design in eager PyTorch.

    Forward; one backward for the output gradients of every Linear and LayerNorm only; per-example
    squared norms ((||a_i||^2 + 1) ||b_i||^2 per Linear, ||x_hat_i * b_i||^2 + ||b_i||^2 per LayerNorm,
    with the forward's saved mean and rstd); clip factors; one weighted product per parameter. No graph
    checks, hooks or fallbacks: what privlab's fast path costs beyond this is its machinery.
    """
    import torch.nn.functional as F

    acts, outs, stats, h = [], [], [], x
    for m in model:
        if isinstance(m, torch.nn.Linear):
            acts.append(h)
            h = m(h)
            outs.append(h)
        elif isinstance(m, torch.nn.LayerNorm):
            stats.append(h)
            h = m(h)
            outs.append(h)
            stats[-1] = (stats[-1].detach(), h.grad_fn._saved_result1, h.grad_fn._saved_result2)
        else:
            h = m(h)
    losses = F.binary_cross_entropy_with_logits(h.squeeze(1), y, reduction="none")
    grads = torch.autograd.grad(losses.sum(), outs)
    sq = lambda t: torch.linalg.vector_norm(t, dim=1).square()  # noqa: E731
    norm2, linear, norm = [], [], []
    it = iter(stats)
    for m, b in zip([m for m in model if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))], grads):
        if isinstance(m, torch.nn.Linear):
            a = acts[len(linear)].detach()
            norm2.append(sq(a).add_(1).mul_(sq(b)))
            linear.append((a, b))
        else:
            s, mean, rstd = next(it)
            g = s.sub(mean).mul_(rstd).mul_(b)
            norm2.append(sq(g).add_(sq(b)))
            norm.append((g, b))
    c = max_grad_norm / torch.stack(norm2).sum(0).sqrt().clamp_min(max_grad_norm)
    cc, out = c.unsqueeze(1), []
    for a, b in linear:
        out += [b.t() @ (a * cc) if a.shape[1] <= b.shape[1] else (b * cc).t() @ a, torch.mv(b.t(), c)]
    for g, b in norm:
        out += [torch.mv(g.t(), c), torch.mv(b.t(), c)]
    return out


def twopass_kernel(model, x, y, max_grad_norm=1.0):
    """Ghost clipping written out by hand for this MLP (Opacus's "ghost" mode; Li et al. 2022): two backward passes.

    The first backward (``retain_graph=True``) computes each layer's per-example squared norms from
    its output gradient the moment that arrives (a pre-hook on the layer's autograd node) and keeps
    no output gradient; the second differentiates ``sum_i c_i loss_i``, whose parameter gradients are
    the clipped sum. It holds no ``(B, d)`` output gradients, but the first pass keeps the whole
    forward's saved tensors alive until it ends: on this MLP its peak is that of the single-pass
    design (the kernel table shows both), and it pays a second backward.
    """
    losses, c = _norms_then_factors(model, x, y, max_grad_norm, retain_graph=True)
    return torch.autograd.grad(losses @ c, list(model.parameters()))


def _norms_then_factors(model, x, y, max_grad_norm, *, retain_graph):
    """Forward, then one backward that turns each layer's output gradient into per-example squared
    norms as it arrives (pre-hooks on the autograd nodes); returns the losses and the clip factors."""
    import torch.nn.functional as F

    norm2, hooks, h, first = [], [], x, None
    sq = lambda t: torch.linalg.vector_norm(t, dim=1).square()  # noqa: E731
    for m in model:
        if isinstance(m, torch.nn.Linear):
            a_sq = sq(h).add_(1)
            h = m(h)
            if first is None:  # its node never runs (nothing before it needs a gradient): see below
                first, first_a_sq = h, a_sq
            else:
                hooks.append(h.grad_fn.register_prehook(lambda go, a_sq=a_sq: norm2.append(a_sq * sq(go[0]))))
        elif isinstance(m, torch.nn.LayerNorm):
            s, h = h.detach(), m(h)

            def ln_norm(go, s=s, node=h.grad_fn):
                b = go[0]
                norm2.append(sq(s.sub(node._saved_result1).mul_(node._saved_result2).mul_(b)).add_(sq(b)))

            hooks.append(h.grad_fn.register_prehook(ln_norm))
            s = None
        else:
            h = m(h)
    losses = F.binary_cross_entropy_with_logits(h.squeeze(1), y, reduction="none")
    try:  # asking for the first layer's output gradient runs every node after it; nothing else is held
        norm2.append(first_a_sq * sq(torch.autograd.grad(losses.sum(), [first], retain_graph=retain_graph)[0]))
    finally:
        for hook in hooks:
            hook.remove()
    return losses, (max_grad_norm / torch.stack(norm2).sum(0).sqrt().clamp_min(max_grad_norm)).detach()


def remat_kernel(model, x, y, max_grad_norm=1.0):
    """The norms pass of :func:`twopass_kernel` freeing as it goes, then the forward re-run: 1.0x memory, more time.

    The first pass is a forward and a backward that computes each layer's per-example squared norms
    the moment its output gradient arrives and keeps nothing (no ``retain_graph``: autograd frees each
    node's saved tensors once it has run). The second re-runs the forward from the same random
    state (the same dropout draws; its per-example losses must equal the first pass's, or the clip
    factors would belong to another function, so it raises if they differ) and differentiates
    ``sum_i c_i loss_i``. Neither pass holds more than a non-private step does: this is what meeting
    the memory target costs in time.
    """
    import torch.nn.functional as F

    state = torch.random.get_rng_state()
    losses, c = _norms_then_factors(model, x, y, max_grad_norm, retain_graph=False)
    torch.random.set_rng_state(state)
    again = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y, reduction="none")
    if not torch.equal(again.detach(), losses.detach()):
        raise RuntimeError("the re-run forward differs from the first: the clip factors would not apply")
    return torch.autograd.grad(again @ c, list(model.parameters()))


def kernel_rows(model, x, y, previous):
    """The kernel alone (no noise, no optimizer), each row a callable of no arguments."""
    import torch.nn.functional as F

    from privlab.dpsgd import clip_factors
    from privlab.dpsgd.fast import fast_norms_and_clipped_sum

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()

    def output_grads():  # forward and the backward the fast path needs, nothing else
        outs, h = [], x
        for m in model:
            h = m(h)
            if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)):
                outs.append(h)
        torch.autograd.grad(F.binary_cross_entropy_with_logits(h.squeeze(1), y, reduction="none").sum(), outs)

    factors = lambda n: clip_factors(n, max_grad_norm=1.0)  # noqa: E731
    return {"non-private fwd+bwd": fwd_bwd,
            "fwd + output grads": output_grads,
            "hand-written kernel": lambda: handwritten_kernel(model, x, y),
            "hand-written two-pass": lambda: twopass_kernel(model, x, y),
            "hand-written remat": lambda: remat_kernel(model, x, y),
            "privlab kernel": lambda: fast_norms_and_clipped_sum(model, bce_losses, (x,), y, factors),
            **({} if previous is None else
               {"privlab kernel prev": lambda: previous(model, bce_losses, (x,), y, factors)})}


def time_kernels(rows, rounds, device) -> dict:
    """Interleaved rounds; per row the median time and the median of its per-round ratio to the first row."""
    import time

    from privlab.profiling import sync

    for f in rows.values():
        f()
    wall = {k: [] for k in rows}
    cpu = {k: [] for k in rows}
    for _ in range(rounds):
        for k, f in rows.items():
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            f()
            sync(device)
            wall[k].append(time.perf_counter() - w)
            cpu[k].append(time.process_time() - c)
    first = next(iter(rows))
    ratio = lambda t, k: statistics.median(a / b for a, b in zip(t[k], t[first]))  # noqa: E731
    return {k: dict(ms=1e3 * statistics.median(wall[k]), x_wall=ratio(wall, k),
                    cpu_ms=1e3 * statistics.median(cpu[k]), x_cpu=ratio(cpu, k)) for k in rows}


METHODS = {
    "non-private": STEPS["non-private"],
    "privlab fast": STEPS["privlab fast"],
    "privlab fast recomp": privlab_recompute_step,
    "privlab fast prev": privlab_previous_step,
    **{name: STEPS[name] for name in ("privlab vmap", "privlab loop", "opacus hooks", "opacus ew",
                                      "opacus functorch", "opacus ghost")},
}
#: The data set size the CUDA-graph rows pad for (a Poisson batch of ``--batch`` expected rows out of it).
GRAPH_N = 1_000_000


def graphed(private: bool):
    """A step replayed from a CUDA graph on the batch padded to its Poisson capacity (CUDA only)."""

    def make(model, *, batch, device):
        if torch.device(device).type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), noise_multiplier=1.0 if private else 0.0,
                         max_grad_norm=1.0 if private else None, expected_batch_size=float(batch),
                         generator=torch.Generator(device=device).manual_seed(0), method="fast")
        capacity, idx, held = graph_capacity(GRAPH_N, batch / GRAPH_N), torch.arange(batch), {}

        def step(x, y):
            if not held:  # the first call warms up and captures; its peak is the graph's memory
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                held["graph"] = CUDAGraphStep(dp, model, bce_losses, (x,), y, capacity=capacity)
                held["graph"](idx)
                torch.cuda.synchronize()
                step.peak_bytes = torch.cuda.max_memory_allocated() - before
                return
            held["graph"](idx)

        return step, lambda: None

    return make


GRAPHED = {"non-private graph": graphed(False), "privlab fast graph": graphed(True)}


def _peak_bytes(run: dict, device) -> int:
    """A row's peak memory: a graph row's, measured at its capture (a replay allocates nothing), or one step's."""
    captured = getattr(run["step"], "peak_bytes", None)
    if captured is not None:
        return captured
    return step_peak_bytes(run["step"], run["release"], run["x"], run["y"], device)
#: Rows added by ``--compile`` (compilation takes seconds to a minute; its warm-up steps are not timed).
COMPILED = {"non-private compiled": compiled(STEPS["non-private"]),
            "privlab fast compiled": compiled(STEPS["privlab fast"])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--batch", type=int, default=4096, help="batch size (default 4096)")
    parser.add_argument("--loop-batch", type=int, default=64, help="batch for the per-example loop (scaled up)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="steps timed per method per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help=f"subset of {list(METHODS)}")
    parser.add_argument("--no-heap-trim", action="store_true",
                        help="glibc mallopt: keep freed heap memory mapped (as jemalloc/tcmalloc do)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the table of the kernel alone")
    parser.add_argument("--compile", action="store_true",
                        help="add the rows of a non-private and a privlab fast step on torch.compile(model)")
    parser.add_argument("--no-graph", action="store_true", help="on CUDA, skip the two CUDA-graph rows")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    heap = "glibc default"
    if args.no_heap_trim:
        heap = "heap trimming off (mallopt)" if disable_heap_trimming() else "mallopt unavailable: default"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Opacus's notices about secure RNG and hooks
    gen = torch.Generator().manual_seed(0)
    x_full = torch.randn(args.batch, 40, generator=gen).to(device)
    y_full = torch.randint(0, 2, (args.batch,), generator=gen).float().to(device)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    runs, failed = {}, {}
    methods = {**METHODS, **COMPILED, **GRAPHED}
    graph_rows = list(GRAPHED) if device.type == "cuda" and not args.no_graph else []
    for name in args.methods + (list(COMPILED) if args.compile else []) + graph_rows:
        torch.manual_seed(0)
        model = streamrec_mlp().to(device).train()
        n = args.loop_batch if name == "privlab loop" else args.batch
        x, y = x_full[:n], y_full[:n]
        try:
            step, release = methods[name](model, batch=args.batch, device=args.device)
            for _ in range(args.warmup):
                step(x, y)
            runs[name] = dict(step=step, release=release, x=x, y=y, batch=n, times=[])
        except Exception as exc:  # an Opacus mode refusing this model is a result too
            failed[name] = f"{type(exc).__name__}: {exc}"[:160]
    for _ in range(args.rounds):
        for r in runs.values():
            r["times"].append(time_steps(r["step"], r["x"], r["y"], args.steps, device))
    results = {}
    for name, r in runs.items():
        scale = 1e3 * args.batch / r["batch"]  # milliseconds; the loop's time scales linearly with the batch
        results[name] = dict(batch=r["batch"], ms_per_step=scale * statistics.median(t[0] for t in r["times"]),
                             cpu_ms_per_step=scale * statistics.median(t[1] for t in r["times"]),
                             peak_mb=_peak_bytes(r, device) / 2**20)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    base = results.get("non-private")
    print(f"DP-SGD step on the StreamRec MLP, batch {args.batch}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), {platform.processor() or platform.machine()}")
    print(f"memory: {'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'torch.profiler CPU allocator events'}"
          f", peak during the step above what was live at its start; malloc: {heap}")
    if load_before is not None:
        print(f"machine: {os.cpu_count()} CPUs; load average (1, 5, 15 min) before "
              f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)}")
    print("time: median over rounds of wall-clock ms/step, and of process CPU ms/step (robust to other load "
          "on a shared machine; with several threads it sums them)")
    print(f"{'method':18s} {'batch':>6s} {'wall ms':>9s} {'x wall':>7s} {'CPU ms':>9s} {'x CPU':>7s} "
          f"{'peak MB':>9s} {'x mem':>7s}")
    nan = float("nan")
    for name, r in results.items():
        tr = r["ms_per_step"] / base["ms_per_step"] if base else nan
        cr = r["cpu_ms_per_step"] / base["cpu_ms_per_step"] if base else nan
        mr = r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] else nan
        note = f"  (time scaled from batch {r['batch']}; memory at batch {r['batch']})" if r["batch"] != args.batch else ""
        print(f"{name:18s} {r['batch']:6d} {r['ms_per_step']:9.2f} {tr:7.2f} {r['cpu_ms_per_step']:9.2f} {cr:7.2f} "
              f"{r['peak_mb']:9.2f} {mr:7.2f}{note}")
        r.update(time_ratio=tr, cpu_time_ratio=cr, memory_ratio=mr)
    for name, why in failed.items():
        print(f"{name:18s} failed: {why}")
    if {"non-private graph", "privlab fast graph"} <= results.keys():
        g, ng = results["privlab fast graph"], results["non-private graph"]
        print(f"CUDA graphs (batch padded to {graph_capacity(GRAPH_N, args.batch / GRAPH_N)} rows; memory: warm-up "
              f"and capture): privlab fast graph / non-private graph = {g['ms_per_step'] / ng['ms_per_step']:.2f}x "
              f"time, {g['peak_mb'] / ng['peak_mb']:.2f}x memory")
    kernels = {}
    if not args.no_kernel:
        torch.manual_seed(0)
        model = streamrec_mlp().to(device).train()
        try:
            previous = previous_fast()
        except RuntimeError as exc:
            previous = None
            print(f"no 'privlab kernel prev' row: {exc}")
        rows = kernel_rows(model, x_full, y_full, previous)
        kernels = time_kernels(rows, args.rounds * args.steps, device)
        release = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
        for name, f in rows.items():  # measured like the steps' (the returned sums are part of each peak)
            kernels[name]["peak_mb"] = step_peak_bytes(lambda x, y, f=f: f(), release, None, None, device) / 2**20
        first = kernels[next(iter(kernels))]["peak_mb"]
        print(f"the kernel alone (forward, per-example norms, clipped sum; no noise, no optimizer), "
              f"{args.rounds * args.steps} interleaved rounds, ratio = median of per-round ratios to the first row:")
        print(f"{'kernel':22s} {'wall ms':>9s} {'x wall':>7s} {'CPU ms':>9s} {'x CPU':>7s} {'peak MB':>9s} {'x mem':>7s}")
        for name, r in kernels.items():
            r["x_mem"] = r["peak_mb"] / first if first else float("nan")
            print(f"{name:22s} {r['ms']:9.2f} {r['x_wall']:7.2f} {r['cpu_ms']:9.2f} {r['x_cpu']:7.2f} "
                  f"{r['peak_mb']:9.2f} {r['x_mem']:7.2f}")
    out = dict(device=str(device), batch=args.batch, threads=torch.get_num_threads(), torch=torch.__version__, malloc=heap,
               rounds=args.rounds, steps=args.steps, results=results, failed=failed, cpus=os.cpu_count(),
               load_before=load_before, load_after=load_after, kernels=kernels)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
