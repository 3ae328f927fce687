"""The book's plumbing: which chapters ``_toc.yml`` lists, and turning them into notebooks.

Chapters are jupytext MyST markdown files (``chapters/NN_topic.md``). ``make test`` converts
every chapter listed in ``_toc.yml`` to a notebook under ``build/notebooks`` (never committed)
and nbval executes them::

    python -m privlab.book --notebooks build/notebooks

Nothing here is privacy code; it keeps the test pipeline and the book reading the same list.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privlab.config import ROOT


def _toc_files(node) -> list[str]:
    """All ``file:`` entries in a parsed ``_toc.yml`` tree, in order."""
    out: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for key in ("root", "parts", "chapters", "sections"):
            value = node.get(key)
            if key == "root" and isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                for child in value:
                    out.extend(_toc_files(child))
    return out


def chapter_files(root: Path = ROOT) -> list[Path]:
    """The jupytext chapters listed in ``_toc.yml`` (those under ``chapters/``), in book order.

    Raises:
        FileNotFoundError: if a listed chapter has no ``.md`` file.
    """
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    paths = []
    for entry in _toc_files(toc):
        if not entry.startswith("chapters/"):
            continue
        path = root / f"{entry}.md"
        if not path.exists():
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but {path} does not exist")
        paths.append(path)
    return paths


def to_notebooks(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Convert every chapter to ``out_dir/<name>.ipynb`` with jupytext; stale notebooks removed."""
    import jupytext

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for md in chapter_files(root):
        nb = jupytext.read(md)
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        target = out_dir / f"{md.stem}.ipynb"
        jupytext.write(nb, target)
        written.append(target)
    for stale in set(out_dir.glob("*.ipynb")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m privlab.book", description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, metavar="DIR", help="write the chapters as .ipynb into DIR")
    parser.add_argument("--list", action="store_true", help="print the chapter files in book order")
    args = parser.parse_args(argv)
    if args.list or not args.notebooks:
        for path in chapter_files():
            print(path.relative_to(ROOT))
    if args.notebooks:
        for path in to_notebooks(args.notebooks):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
