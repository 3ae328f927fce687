"""The ``privlab`` command line: ``privlab --help`` lists the subcommands.

Subcommands are registered in :data:`COMMANDS`, one small function each, so a new chapter's
experiment adds one entry rather than another branch.

>>> main(["info", "--scale", "smoke"])  # doctest: +ELLIPSIS
privlab ...
scale: smoke
...
0
>>> main(["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10000",
...       "--delta", "1e-5", "--accountant", "rdp"])
rdp: epsilon = 6.71274 (delta = 1e-05)
0
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable

from privlab import __version__
from privlab.config import get_scale


def _info(args: argparse.Namespace) -> int:
    import torch

    print(f"privlab {__version__} (python {platform.python_version()}, torch {torch.__version__})")
    print(f"scale: {get_scale(args.scale).name}")
    print(f"cuda available: {torch.cuda.is_available()}")
    return 0


def _chapters(args: argparse.Namespace) -> int:
    from privlab.book import main as book_main

    return book_main(["--notebooks", str(args.notebooks)] if args.notebooks else ["--list"])


def _epsilon(args: argparse.Namespace) -> int:
    from privlab.accounting import epsilon

    for name in args.accountant:
        eps = epsilon(noise_multiplier=args.noise_multiplier, sample_rate=args.sample_rate,
                      steps=args.steps, delta=args.delta, accountant=name)
        print(f"{name}: epsilon = {eps:.6g} (delta = {args.delta:g})")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from privlab.accounting import calibrate_noise

    for name in args.accountant:
        sigma = calibrate_noise(target_epsilon=args.target_epsilon, delta=args.delta,
                                sample_rate=args.sample_rate, steps=args.steps, accountant=name)
        print(f"{name}: noise_multiplier = {sigma:.6g} for epsilon <= {args.target_epsilon:g}")
    return 0


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The DP-SGD run both accounting commands describe."""
    p.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q = batch / N")
    p.add_argument("--steps", type=int, required=True, help="number of training steps")
    p.add_argument("--delta", type=float, required=True, help="target delta")
    p.add_argument("--accountant", nargs="+", default=["pld"],
                   choices=["pld", "rdp", "zcdp", "basic", "advanced"], help="one or more accountants")


def _add_accounting(sub) -> None:
    p = sub.add_parser("epsilon", help="epsilon of a DP-SGD run (Poisson-sampled Gaussian steps)")
    p.add_argument("--noise-multiplier", type=float, required=True, help="sigma: noise std / clip norm")
    _run_arguments(p)
    p.set_defaults(func=_epsilon)
    p = sub.add_parser("calibrate", help="smallest noise multiplier meeting a target epsilon")
    p.add_argument("--target-epsilon", type=float, required=True)
    _run_arguments(p)
    p.set_defaults(func=_calibrate)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print versions, the scale profile and the device")
    p.add_argument("--scale", choices=["smoke", "book", "paper"], default=None,
                   help="scale profile (default: $PRIVLAB_SCALE or 'book')")
    p.set_defaults(func=_info)


def _add_chapters(sub) -> None:
    p = sub.add_parser("chapters", help="list the book's chapters or convert them to notebooks")
    p.add_argument("--notebooks", metavar="DIR", default=None, help="write .ipynb files into DIR")
    p.set_defaults(func=_chapters)


def _streamrec(args: argparse.Namespace) -> int:
    from privlab.experiments.streamrec import run_sweep
    from privlab.experiments.streamrec_report import (
        aggregate_table,
        save_figures,
        write_results,
    )

    results = run_sweep(args.scale, epsilons=args.epsilons, seed=args.seed, studies=not args.no_studies,
                        progress=not args.no_progress, device=args.device)
    path = write_results(results, args.out)
    figures = save_figures(results, args.out)
    print(aggregate_table(results["runs"]).round(4).to_string())
    print(f"wrote {path} and {len(figures)} figures")
    return 0


def _add_streamrec(sub) -> None:
    p = sub.add_parser("streamrec", help="the DP StreamRec sweep (chapter 12): results.json and figures")
    p.add_argument("--scale", choices=["smoke", "book", "paper"], default=None,
                   help="scale profile (default: $PRIVLAB_SCALE or 'book')")
    p.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0, float("inf")],
                   help="target epsilons; 'inf' trains the non-private baseline (default: 1 3 8 inf)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for results.json and the PNGs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the runs (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-studies", action="store_true", help="skip the batch-size, clip-norm and seed studies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_streamrec)


#: Each entry adds one subcommand to the parser.
COMMANDS: list[Callable] = [_add_info, _add_chapters, _add_accounting, _add_streamrec]


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
