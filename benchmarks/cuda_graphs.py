"""How much of a small model's DP-SGD cost on a GPU is the host's: the StreamRec MLP's steps replayed as CUDA graphs.

On a GPU the StreamRec MLP at batch 4096 is bound by the host: its non-private step takes about
the same time at batch 4096 and 65,536 (benchmarks/dpsgd.py), so the ratio of two steps counts
their kernel launches and Python work, not their arithmetic. A CUDA graph replays a captured step's
kernels without the host, so the ratio of two graphed steps is the ratio of their time on the
device. At this size that time is itself mostly per-kernel latency (a few dozen small kernels in a
fraction of a millisecond), not arithmetic: the graphed ratio is the floor of the same unfused
sequence of operations, which fused kernels could lower. Rows (one SGD step each, sigma = 1, C = 1, batch
``--batch``):

* non-private: forward, backward, SGD update (eager, and replayed as a graph);
* DP, hand-written: :func:`dpsgd.handwritten_kernel` (the clipped sum written out for this MLP),
  one Gaussian draw for all parameters, scale by 1/B, SGD update (eager, and as a graph);
* DP, privlab: :class:`privlab.dpsgd.DPOptimizer` with the fast path (eager, and, where capture
  succeeds, as a graph: then every check of the fast path ran once, at capture, and the replays
  repeat the kernels it chose; fine for a measurement at a fixed batch, not how privlab trains).

Dropout masks are drawn inside the graphs (CUDA's graph-safe RNG). Each row: median over
``--rounds`` of the mean time of ``--steps`` consecutive steps, timed with CUDA events.
Benchmarks are not tests; without CUDA this prints that and exits 0.

Usage: python benchmarks/cuda_graphs.py [--batch 4096] [--rounds 20] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from dpsgd import handwritten_kernel  # noqa: E402

from privlab.losses import bce_losses  # noqa: E402
from privlab.profiling import streamrec_mlp  # noqa: E402

LR = 0.01


def nonprivate_step(model, x, y):
    params = list(model.parameters())

    def step():
        for p in params:
            p.grad = None
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-LR)

    return step


def handwritten_step(model, x, y, gen):
    batch = x.shape[0]
    # the kernel's order: the Linears' (weight, bias) pairs, then the LayerNorms'
    ps = [p for kind in (torch.nn.Linear, torch.nn.LayerNorm) for m in model if isinstance(m, kind)
          for p in (m.weight, m.bias)]

    def step():
        grads = [g.reshape(p.shape) for g, p in zip(handwritten_kernel(model, x, y), ps)]
        z = torch.randn(sum(g.numel() for g in grads), device=x.device, generator=gen)
        noisy = [g + n.view_as(g) for g, n in zip(grads, torch.split(z, [g.numel() for g in grads]))]
        with torch.no_grad():
            torch._foreach_add_(ps, noisy, alpha=-LR / batch)

    return step


def privlab_step(model, x, y, gen):
    from privlab.dpsgd import DPOptimizer

    dp = DPOptimizer(torch.optim.SGD(model.parameters(), lr=LR), noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch_size=float(x.shape[0]), generator=gen, method="fast")
    return lambda: dp.step(model, bce_losses, x, y)


def graphed(step, gens, warmup=3):
    """``step`` captured in a CUDA graph (after warm-up on a side stream); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    for g in gens:
        graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_it(fn, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_graphs: no CUDA GPU; nothing measured.")
        return {}
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 40, generator=gen).to(dev)
    y = torch.randint(0, 2, (args.batch,), generator=gen).float().to(dev)
    rows, failed = {}, {}
    makers = {"non-private": lambda m, g: nonprivate_step(m, x, y),
              "DP hand-written": lambda m, g: handwritten_step(m, x, y, g),
              "DP privlab": lambda m, g: privlab_step(m, x, y, g)}
    for name, make in makers.items():
        for mode in ("eager", "graph"):
            torch.manual_seed(0)
            model = streamrec_mlp().to(dev).train()
            noise_gen = torch.Generator(device=dev).manual_seed(0)
            step = make(model, noise_gen)
            try:
                if mode == "graph":
                    step = graphed(step, [noise_gen])
                else:
                    for _ in range(3):
                        step()
                step()
                torch.cuda.synchronize()
                rows[f"{name}, {mode}"] = step
            except Exception as exc:  # a step that cannot be captured is a result too
                failed[f"{name}, {mode}"] = f"{type(exc).__name__}: {exc}"[:200]
    times = {k: [] for k in rows}
    for _ in range(args.rounds):
        for k, fn in rows.items():
            times[k].append(time_it(fn, args.steps))
    ms = {k: statistics.median(v) for k, v in times.items()}
    print(f"StreamRec MLP, batch {args.batch}, {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"median over {args.rounds} rounds of {args.steps} steps (CUDA events)")
    print(f"{'step':28s} {'ms':>8s} {'x same mode non-private':>24s}")
    for k, v in ms.items():
        base = ms.get(f"non-private, {k.split(', ')[1]}")
        print(f"{k:28s} {v:8.3f} {v / base if base else float('nan'):24.2f}")
    for k, why in failed.items():
        print(f"{k:28s} failed: {why}")
    out = dict(batch=args.batch, device=torch.cuda.get_device_name(), torch=torch.__version__, ms=ms, failed=failed)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
