"""The ``privlab`` command line: ``privlab --help`` lists the subcommands.

Subcommands are registered in :data:`COMMANDS`, one small function each, so a new chapter's
experiment adds one entry rather than another branch.

>>> main(["info", "--scale", "smoke"])  # doctest: +ELLIPSIS
privlab ...
scale: smoke
...
0
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Callable

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


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print versions, the scale profile and the device")
    p.add_argument("--scale", choices=["smoke", "book", "paper"], default=None,
                   help="scale profile (default: $PRIVLAB_SCALE or 'book')")
    p.set_defaults(func=_info)


def _add_chapters(sub) -> None:
    p = sub.add_parser("chapters", help="list the book's chapters or convert them to notebooks")
    p.add_argument("--notebooks", metavar="DIR", default=None, help="write .ipynb files into DIR")
    p.set_defaults(func=_chapters)


#: Each entry adds one subcommand to the parser.
COMMANDS: list[Callable] = [_add_info, _add_chapters]


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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
