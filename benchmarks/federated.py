"""Federated simulation speed: privlab's vectorised simulator against Flower's simulation engine.

Prints, from one run:

1. client updates per second for a small MLP on the same experiment (the ``toy``
   hospital sites, full participation): privlab's vectorised simulator (``bmm``,
   batched matmuls, the default for MLPs; ``vmap``, ``torch.func``, any model), its
   client-by-client ``loop``, and Flower's simulation engine (Ray; its rate measured
   after round 1, so Ray's start-up and the actors' imports are excluded and
   reported apart);
2. 1,000 clients x 50 rounds of FedAvg on the real CPS1988 table split into 1,000
   clients (about 28 records each), privlab ``bmm`` and ``vmap``: wall-clock time and rate.

Targets on 2 CPU cores: privlab >= 2,000 client updates/s; 1,000 x 50 under 60 s.
Timings depend on the machine's load; the ratios printed come from the same run.

Usage: python benchmarks/federated.py [--threads 1] [--flower-clients 10] [--skip-flower]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from privlab.config import make_rng, make_torch_generator
from privlab.federated import FedAvg, cps1988_silos, iid_partition, make_model, simulate
from privlab.federated.flower import experiment, run_flower_simulation


def _rate(updates: int, seconds: float, how: str = "median of repeats") -> str:
    return f"{updates / seconds:10,.0f} client updates/s  ({updates} updates in {seconds:.3f} s, {how})"


def privlab_rate(data, model, algo, method: str, seed: int = 0, min_seconds: float = 1.0) -> tuple[float, int]:
    """Median seconds of one ``simulate`` call (repeated for at least ``min_seconds``) and its client updates."""
    simulate(model, data, FedAvg(rounds=1, batch_size=algo.batch_size), rng=make_rng(seed), method=method)  # warm-up
    times, spent = [], 0.0
    while spent < min_seconds or len(times) < 3:
        start = time.perf_counter()
        result = simulate(model, data, algo, rng=make_rng(seed), method=method)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if times[-1] > 10 * min_seconds:  # a long run: once is enough
            break
    return float(np.median(times)), int(result.history["clients"].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 avoids contention on 2 shared cores)")
    p.add_argument("--clients", type=int, default=1000, help="clients in the large run")
    p.add_argument("--rounds", type=int, default=50, help="rounds in the large run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--hidden", type=int, default=32, help="MLP hidden width in the large run")
    p.add_argument("--flower-clients", type=int, default=20, help="virtual SuperNodes in the comparison")
    p.add_argument("--flower-rounds", type=int, default=4, help="rounds in the comparison (the first is warm-up)")
    p.add_argument("--flower-cpus", type=int, default=2, help="CPUs given to Ray")
    p.add_argument("--skip-flower", action="store_true", help="only privlab's figures")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}; the machine may be shared with other work")

    # --- 1. the same experiment: privlab vmap / loop vs Flower ----------------------------------------
    cfg = {"dataset": "toy", "num-clients": args.flower_clients, "num-rounds": args.flower_rounds,
           "batch-size": args.batch_size, "hidden": 16}
    exp = experiment(cfg)
    print(f"\n## Same experiment: {args.flower_clients} toy hospital sites ({exp.data.sizes.min()}-"
          f"{exp.data.sizes.max()} records), MLP {exp.data.num_features}-16-1, batch {args.batch_size}, "
          f"{args.flower_rounds} rounds")
    times = {}
    for method in ("bmm", "vmap", "loop"):
        times[method], n = privlab_rate(exp.data, exp.model, exp.algorithm, method)
        print(f"privlab {method:6s} {_rate(n, times[method])}")
    if not args.skip_flower:
        start = time.perf_counter()
        run = run_flower_simulation(cfg, num_cpus=args.flower_cpus)
        total = time.perf_counter() - start
        ends = run.history["round-end-times"]  # [start, round 1, ..., round R]
        steady = ends[-1] - ends[1]
        updates = args.flower_clients * (args.flower_rounds - 1)
        print(f"Flower sim     {_rate(updates, steady, 'one run')}  rounds 2..{args.flower_rounds}")
        print(f"               round 1 (Ray actors start) {ends[1] - ends[0]:.1f} s; whole call incl. Ray start "
              f"{total:.1f} s")
        flower = updates / steady
        print("ratio to Flower's simulation engine: " + ", ".join(
            f"privlab {m} {(n / t) / flower:,.1f}x" for m, t in times.items()))

    # --- 2. 1,000 clients x 50 rounds on the real table ------------------------------------------------
    x, y = cps1988_silos().pooled()
    data = iid_partition(x, y, num_clients=args.clients, rng=make_rng(0))
    model = make_model(data.num_features, args.hidden, generator=make_torch_generator(0))
    algo = FedAvg(rounds=args.rounds, batch_size=args.batch_size, local_lr=0.1)
    print(f"\n## {args.clients} clients x {args.rounds} rounds: CPS1988 split IID ({data.sizes.min()}-"
          f"{data.sizes.max()} records each), MLP {data.num_features}-{args.hidden}-1, batch {args.batch_size}")
    for method in ("bmm", "vmap"):
        seconds, n = privlab_rate(data, model, algo, method)
        verdict = "meets" if seconds < 60 and n / seconds >= 2000 else "misses"
        print(f"privlab {method:6s} {_rate(n, seconds)}  -> {verdict} the targets (< 60 s, >= 2,000/s)")


if __name__ == "__main__":
    main()
