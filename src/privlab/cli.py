"""The ``privlab`` command line: ``privlab --help`` lists the subcommands.

Subcommands are registered in :data:`COMMANDS`, one small function each, so a new chapter's
experiment adds one entry rather than another branch. Every subcommand but two takes ``--json``
to print one JSON document instead of text; ``localhost`` and ``distributed`` hand their
arguments to their own programs (see their ``--help``), which write their results as files
(``distributed --out FILE.json``; ``localhost`` into its run's output folder). Bad arguments end
with a one-line error and exit status 2. Each subcommand imports its implementation when it runs, so ``privlab --help`` and
the accounting commands start without loading torch or the experiments.

>>> main(["info", "--scale", "smoke"])  # doctest: +ELLIPSIS
privlab ...
scale: smoke
...
0
>>> main(["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10000",
...       "--delta", "1e-5", "--accountant", "rdp"])
rdp: epsilon = 6.71274 (delta = 1e-05; q = 0.01, T = 10000)
0
>>> main(["epsilon", "--noise-multiplier", "1", "--batch-size", "256", "--dataset-size", "25600",
...       "--epochs", "100", "--accountant", "rdp", "--json"])
{"command": "epsilon", "sample_rate": 0.01, "steps": 10000, "delta": 1e-05, "noise_multiplier": 1.0, "epsilon": {"rdp": 6.712739...}}
0
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Callable

from privlab import __version__
from privlab._validate import check_epsilon
from privlab.accounting import ACCOUNTANTS, calibrate_noise, dpsgd_epsilon
from privlab.config import get_scale
from privlab.provenance import to_jsonable


def _print_json(obj) -> None:
    print(json.dumps(to_jsonable(obj), allow_nan=False))


# --- info, chapters -------------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    import torch

    facts = {"privlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "scale": get_scale(args.scale).name, "cuda_available": torch.cuda.is_available()}
    if args.json:
        _print_json(facts)
        return 0
    print(f"privlab {__version__} (python {facts['python']}, torch {facts['torch']})")
    print(f"scale: {facts['scale']}")
    print(f"cuda available: {facts['cuda_available']}")
    return 0


def _add_info(sub) -> None:
    p = _parser(sub, "info", "print versions, the scale profile and the device")
    _scale_argument(p)
    p.set_defaults(func=_info)


def _chapters(args: argparse.Namespace) -> int:
    from privlab.book import main as book_main

    return book_main(["--notebooks", str(args.notebooks)] if args.notebooks else ["--list"])


def _add_chapters(sub) -> None:
    p = sub.add_parser("chapters", help="list the book's chapters or convert them to notebooks")
    p.add_argument("--notebooks", metavar="DIR", default=None, help="write .ipynb files into DIR")
    p.set_defaults(func=_chapters)


# --- accounting -----------------------------------------------------------------------------------


def _run_shape(args: argparse.Namespace) -> tuple[float, int]:
    """``(sample_rate, steps)`` from either ``--sample-rate/--steps`` or ``--batch-size/--dataset-size/--epochs``.

    q = B / N and T = ceil(E N / B), the convention of Opacus and of chapter 4.
    ``privlab.dpsgd.train`` runs E round(N / B) steps (E whole epochs of round(1 / q) steps),
    which can be one step more per epoch: for its runs give ``--steps`` (the step count it reports).
    """
    direct = args.sample_rate is not None or args.steps is not None
    shape = [args.batch_size, args.dataset_size, args.epochs]
    if direct and any(v is not None for v in shape):
        raise ValueError("give either --sample-rate and --steps, or --batch-size, --dataset-size and --epochs")
    if direct:
        if args.sample_rate is None or args.steps is None:
            raise ValueError(f"--sample-rate and --steps go together, got sample_rate={args.sample_rate}, "
                             f"steps={args.steps}")
        return args.sample_rate, args.steps
    if any(v is None for v in shape):
        raise ValueError("the run needs --sample-rate and --steps, or --batch-size, --dataset-size and --epochs")
    b, n, e = shape
    if not 0 < b <= n:
        raise ValueError(f"batch_size must be in (0, dataset_size={n}], got {b}")
    if not (math.isfinite(e) and e > 0):
        raise ValueError(f"epochs must be a positive finite number, got {e}")
    steps = math.ceil(e * n / b)
    if steps > 10**9:
        raise ValueError(f"epochs={e} with batch_size={b}, dataset_size={n} is {steps:.3g} steps: more than 10^9")
    return b / n, steps


def _warn_delta(args: argparse.Namespace) -> None:
    """With N known, say when delta is not below 1/N (publishing one record in the clear is (0, 1/N)-DP)."""
    n = args.dataset_size
    if n is not None and args.delta >= 1.0 / n:
        print(f"warning: delta = {args.delta:g} >= 1/N = {1.0 / n:g}: a guarantee that allows publishing a "
              f"record in the clear; use delta well below 1/N (e.g. {0.01 / n:.1g})", file=sys.stderr)


def _epsilon(args: argparse.Namespace) -> int:
    q, steps = _run_shape(args)
    _warn_delta(args)
    out = {name: dpsgd_epsilon(noise_multiplier=args.noise_multiplier, sample_rate=q, steps=steps,
                               delta=args.delta, accountant=name) for name in args.accountant}
    if args.json:
        _print_json({"command": "epsilon", "sample_rate": q, "steps": steps, "delta": args.delta,
                     "noise_multiplier": args.noise_multiplier, "epsilon": out})
        return 0
    for name, eps in out.items():
        print(f"{name}: epsilon = {eps:.6g} (delta = {args.delta:g}; q = {q:.6g}, T = {steps})")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    q, steps = _run_shape(args)
    _warn_delta(args)
    out = {name: calibrate_noise(target_epsilon=args.target_epsilon, delta=args.delta, sample_rate=q, steps=steps,
                                 accountant=name) for name in args.accountant}
    if args.json:
        _print_json({"command": "calibrate", "sample_rate": q, "steps": steps, "delta": args.delta,
                     "target_epsilon": args.target_epsilon, "noise_multiplier": out})
        return 0
    for name, sigma in out.items():
        print(f"{name}: noise_multiplier = {sigma:.6g} for epsilon <= {args.target_epsilon:g} "
              f"(delta = {args.delta:g}; q = {q:.6g}, T = {steps})")
    return 0


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The DP-SGD run both accounting commands describe."""
    g = p.add_argument_group("the run: give q and T, or B, N and epochs")
    g.add_argument("--sample-rate", type=float, default=None, help="Poisson sampling rate q = B / N")
    g.add_argument("--steps", type=int, default=None, help="number of training steps T")
    g.add_argument("--batch-size", type=int, default=None, help="expected batch size B")
    g.add_argument("--dataset-size", type=int, default=None, help="number of training examples N")
    g.add_argument("--epochs", type=float, default=None, help="epochs E (T = ceil(E N / B), Opacus's convention; "
                   "privlab.dpsgd.train runs E round(N / B) steps: give --steps to match its runs)")
    p.add_argument("--delta", type=float, default=1e-5, help="target delta (default 1e-5; use < 1/N)")
    p.add_argument("--accountant", nargs="+", default=["pld"], choices=list(ACCOUNTANTS),
                   help="one or more accountants (default: pld)")


def _add_accounting(sub) -> None:
    p = _parser(sub, "epsilon", "epsilon of a DP-SGD run (Poisson-sampled Gaussian steps)",
                "example: privlab epsilon --noise-multiplier 1.1 --batch-size 256 --dataset-size 60000 --epochs 60")
    p.add_argument("--noise-multiplier", type=float, required=True, help="sigma: noise std / clip norm")
    _run_arguments(p)
    p.set_defaults(func=_epsilon)
    p = _parser(sub, "calibrate", "smallest noise multiplier meeting a target epsilon",
                "example: privlab calibrate --target-epsilon 3 --batch-size 256 --dataset-size 60000 --epochs 60")
    p.add_argument("--target-epsilon", type=float, required=True)
    _run_arguments(p)
    p.set_defaults(func=_calibrate)


# --- experiments ----------------------------------------------------------------------------------


def _streamrec(args: argparse.Namespace) -> int:
    from privlab.experiments.streamrec import run_sweep
    from privlab.experiments.streamrec_report import aggregate_table, save_figures, write_results

    results = run_sweep(args.scale, epsilons=args.epsilons, seed=args.seed, studies=not args.no_studies,
                        progress=not (args.no_progress or args.json), device=args.device,
                        threads=args.threads)
    path = write_results(results, args.out)
    figures = save_figures(results, args.out)
    if args.json:
        _print_json({"command": "streamrec", "results": str(path), "figures": [str(f) for f in figures],
                     "runs": aggregate_table(results["runs"]).reset_index().to_dict("records")})
        return 0
    print(aggregate_table(results["runs"]).round(4).to_string())
    print(f"wrote {path} and {len(figures)} figures")
    return 0


def _add_streamrec(sub) -> None:
    p = _parser(sub, "streamrec", "the DP StreamRec sweep (chapter 13): results.json and figures",
                "example: privlab streamrec --scale smoke --epsilons 1 8 inf --out runs/streamrec")
    _scale_argument(p)
    p.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, float("inf")],
                   help="target epsilons; 'inf' trains the non-private baseline (default: 1 3 8 inf)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for results.json and the PNGs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the runs (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per run (default 1: fastest for batch-4096 steps on a shared CPU)")
    p.add_argument("--no-studies", action="store_true", help="skip the batch-size, clip-norm and seed studies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_streamrec)


def _cliff(args: argparse.Namespace) -> int:
    from privlab.experiments import privacy_cliff as pc

    data = pc.cliff_data() if args.task == "blobs" else pc.cps1988_task(seed=0)
    kwargs = {} if args.sigmas is None else {"sigmas": tuple(args.sigmas)}
    if args.clip_norms is not None:
        kwargs["clip_norms"] = tuple(args.clip_norms)
    if args.seeds is not None:
        kwargs["seeds"] = tuple(args.seeds)
    config = pc.CliffConfig(mode=args.mode, epochs=args.epochs, **kwargs)
    result = pc.run_sweep(data, config)
    table = pc.summarize(result)
    checks = pc.validate(result)
    found = pc.cliffs(result.records)
    path = result.write_json(f"{args.out}/results.json") if args.out else None
    if args.json:
        _print_json({"command": "cliff", "task": result.task, "mode": args.mode, "runs": len(result.records),
                     "seconds": result.seconds, "summary": table.to_dict("records"), "checks": checks,
                     "cliffs": [{"C": c, "sigma": s} for c, s in found], "results": str(path) if path else None})
        return 0
    print(f"{len(result.records)} runs on {result.task} ({args.mode} mode) in {result.seconds:.2f} s")
    print(table.round(4).to_string(index=False))
    print("checks: " + ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in checks.items()))
    print(f"configurations below 50% of the baseline (the published cliff rule): {found or 'none'}")
    if path:
        print(f"wrote {path}")
    return 0


def _add_cliff(sub) -> None:
    p = _parser(sub, "cliff", "the privacy-cliff reproduction sweep (chapter 7): 66 DP-SGD runs at once",
                "example: privlab cliff --mode corrected --task cps1988 --json")
    p.add_argument("--mode", choices=["published", "corrected"], default="published",
                   help="published: shuffled batches + simplified RDP; corrected: Poisson + PLD (default published)")
    p.add_argument("--task", choices=["blobs", "cps1988"], default="blobs",
                   help="the published synthetic blobs, or real CPS1988 wages (default blobs)")
    p.add_argument("--sigmas", nargs="+", type=float, default=None, help="noise multipliers (default: published grid)")
    p.add_argument("--clip-norms", nargs="+", type=float, default=None, help="clip norms C (default: 0.1 1 10)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 42 123 456)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/results.json")
    p.set_defaults(func=_cliff)


def _lm(args: argparse.Namespace) -> int:
    from privlab.experiments import language_model as lm

    scale = get_scale(args.scale).name
    for e in args.epsilons or ():  # before any pretraining (NaN was dropped silently, -1 refused late)
        check_epsilon(e, name="each of --epsilons", allow_inf=True)
    runs = lm.default_runs(scale, [e for e in args.epsilons if math.isfinite(e)] if args.epsilons else None)
    # shadow-model LiRA on ordinary sequences, as in chapter 14: without noise and at the smallest epsilon
    finite = [r[0] for r in runs if math.isfinite(r[0])]
    lira_epsilons = [math.inf] + ([min(finite)] if finite else [])
    results = lm.run(scale, runs=runs, seed=args.seed, progress=not args.json, lira_epsilons=lira_epsilons)
    path = lm.write_results(results, args.out) if args.out else None
    nan = float("nan")
    rows = [{"epsilon": r["epsilon_target"], "method": r["method"], "unit": r["unit"],
             "clip_only": r["clip_only"], "clipped": r["clipped_fraction"], "perplexity": r["perplexity"],
             "mean_exposure@64": sum(r["exposure"].get("64", [nan])) / len(r["exposure"].get("64", [nan])),
             "mia_auc": r["auc"], "tpr@1%fpr": r["tpr_at_1pct_fpr"], "seconds": r["seconds"],
             "trainable": r["trainable_parameters"]} for r in results["runs"]]
    rows.insert(0, {"method": "public model", "perplexity": results["public_model"]["perplexity"]})
    lira = [{"epsilon": x["epsilon"], **{k: x["summary"][k] for k in
             ("lira_auc", "lira_auc_se_boot", "loss_auc", "loss_auc_se_boot", "lira_tpr@0.01", "loss_tpr@0.01")}}
            for x in results["sequence_lira"]]  # fmt: skip
    if args.json:
        _print_json({"command": "lm", "scale": scale, "runs": rows, "sequence_lira": lira,
                     "results": str(path) if path else None})
        return 0
    import pandas as pd

    print(f"language-model experiment, scale {scale}")
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    print("membership inference on ordinary sequences (shadow-model LiRA against the loss threshold)")
    print(pd.DataFrame(lira).round(3).to_string(index=False))
    if path:
        print(f"wrote {path}")
    return 0


def _add_lm(sub) -> None:
    p = _parser(sub, "lm", "the language-model experiment: canary exposure, DP fine-tuning (full, LoRA), "
                "user-level DP, membership inference",
                "example: privlab lm --scale smoke --epsilons 1 8 inf --out results/lm")
    _scale_argument(p)
    p.add_argument("--epsilons", nargs="+", type=float, default=None,
                   help="target epsilons for full fine-tuning (inf is always run; default 1 3 8, smoke 1 8); "
                   "the non-private, clipped-only, LoRA and user-level controls are always run")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, canaries and training (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/results.json and DIR/exposure.png")
    p.set_defaults(func=_lm)


def _localhost(args: argparse.Namespace) -> int:
    from privlab.federated.flower.localhost import main as localhost_main

    return localhost_main(args.args, prog="privlab localhost")


def _add_localhost(sub) -> None:
    p = sub.add_parser("localhost", add_help=False, prefix_chars="\0",
                       help="the FedAvg experiment on a Flower SuperLink and N SuperNodes on localhost (chapter 9)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="see privlab localhost --help")
    p.set_defaults(func=_localhost)


def _distributed(args: argparse.Namespace) -> int:
    from privlab.dpsgd.distributed import main as distributed_main

    distributed_main(args.args, prog="privlab distributed")
    return 0


def _add_distributed(sub) -> None:
    p = sub.add_parser("distributed", add_help=False, prefix_chars="\0",
                       help="multi-process DP-SGD, one process per rank (chapter 8): "
                            "torchrun --nproc_per_node=N $(which privlab) distributed ...")
    p.add_argument("args", nargs=argparse.REMAINDER, help="see privlab distributed --help")
    p.set_defaults(func=_distributed)


# --- the parser -----------------------------------------------------------------------------------


def _parser(sub, name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=epilog)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return p


def _scale_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=["smoke", "book", "paper"], default=None,
                   help="scale profile (default: $PRIVLAB_SCALE or 'book')")


#: Each entry adds one subcommand to the parser.
COMMANDS: list[Callable] = [_add_info, _add_chapters, _add_accounting, _add_streamrec, _add_cliff, _add_lm,
                            _add_localhost, _add_distributed]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privlab",
        description="privlab: the command line of the privacy-preserving ML course.",
    )
    parser.add_argument("--version", action="version", version=f"privlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except ValueError as err:  # bad input: a clear message naming the value, not a traceback
        parser.exit(2, f"privlab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
