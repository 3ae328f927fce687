r"""Build and grade the privlab course assignments with otter-grader (no Docker needed).

Each assignment is one master notebook in Otter Assign's format, kept as a jupytext MyST file
(``NN_topic/topic.md``) so that it can be reviewed as text. ``otter assign`` reads ``.ipynb``, so
this script converts the master with jupytext, then runs Otter Assign, which writes

    OUT/NN_topic/master/topic.ipynb                     the master notebook (converted)
    OUT/NN_topic/dist/student/topic.ipynb               the notebook to release (stubs, public tests)
    OUT/NN_topic/dist/autograder/topic.ipynb            the reference solution with every test
    OUT/NN_topic/dist/autograder/topic-autograder_*.zip the autograder (hidden tests included)

Grading runs Otter's non-containerised runner (``otter run``, via ``otter.api.grade_submission``)
in the current environment, so privlab must be importable there.

Usage (from the repository root)::

    .venv/bin/python assignments/build.py build [NAMES...] [--out build/assignments] [--no-run-tests]
    .venv/bin/python assignments/build.py grade AUTOGRADER_ZIP SUBMISSION... [--csv scores.csv] [--jobs 2]

Used in: assignments/README.md and tests/test_assignments.py.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "build" / "assignments"


def masters() -> dict[str, Path]:
    """The master notebooks, ``{"01_mechanisms": .../01_mechanisms/mechanisms.md, ...}``."""
    found = {}
    for folder in sorted(p for p in HERE.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        sources = sorted(folder.glob("*.md"))
        if len(sources) != 1:
            raise ValueError(f"{folder} must hold exactly one master notebook (.md), found {len(sources)}")
        found[folder.name] = sources[0]
    return found


def autograder_zip(dist: Path) -> Path:
    """The autograder zip Otter Assign wrote into ``dist/autograder`` (its name has a timestamp)."""
    zips = sorted((Path(dist) / "autograder").glob("*-autograder_*.zip"))
    if len(zips) != 1:
        raise FileNotFoundError(f"expected one autograder zip in {dist}/autograder, found {len(zips)}")
    return zips[0]


def build(name: str, out: Path = DEFAULT_OUT, *, run_tests: bool = True) -> Path:
    """Convert one master notebook to .ipynb and run Otter Assign on it; returns its ``dist`` folder.

    Args:
        name: the assignment folder, e.g. ``"01_mechanisms"``.
        out: where to write ``NAME/master`` and ``NAME/dist`` (replaced if present).
        run_tests: let Otter Assign run every test against the solutions (it raises if one fails).
    """
    import shutil

    import jupytext
    from otter.assign import main as otter_assign

    sources = masters()
    if name not in sources:
        raise ValueError(f"unknown assignment {name!r}; choose from {sorted(sources)}")
    target = Path(out).resolve() / name
    if target.exists():
        shutil.rmtree(target)
    master = target / "master" / f"{sources[name].stem}.ipynb"
    master.parent.mkdir(parents=True)
    jupytext.write(jupytext.read(sources[name]), master)
    dist = target / "dist"
    otter_assign(str(master), str(dist), no_pdfs=True, no_run_tests=not run_tests)
    autograder_zip(dist)  # fail here, not later, if Otter wrote no autograder
    return dist


def grade(autograder: Path, submission: Path) -> dict[str, float]:
    """Grade one submission (.ipynb or Otter's submission .zip) locally; ``{question: score, ...}``.

    The extra key ``"total"`` holds the sum; ``"possible"`` the maximum.
    """
    from otter.api import grade_submission

    results = grade_submission(str(submission), str(autograder), quiet=True)
    scores = {name: float(r.score) for name, r in results.results.items()}
    scores["total"] = float(results.total)
    scores["possible"] = float(results.possible)
    return scores


def grade_many(jobs: list[tuple[Path, Path]], *, processes: int = 1) -> list[dict[str, float]]:
    """Grade ``[(autograder_zip, submission), ...]``, several at a time; scores in the same order.

    Otter's runner changes the working directory, so parallel grading uses forked processes (each
    starts its own kernel); where ``fork`` is unavailable, or ``processes`` is 1, it grades in turn.
    """
    import multiprocessing

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    processes = min(processes, len(jobs))
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [grade(*job) for job in jobs]
    ctx = multiprocessing.get_context("fork")  # the target is inherited, not pickled

    def work(indices, conn):
        try:
            conn.send([(i, grade(*jobs[i])) for i in indices])
        except BaseException as exc:  # report, do not hang the parent
            conn.send(exc)
        finally:
            conn.close()

    workers = []
    for w in range(processes):
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=work, args=(range(w, len(jobs), processes), send))
        proc.start()
        send.close()
        workers.append((proc, receive))
    results: list = [None] * len(jobs)
    for proc, receive in workers:
        got = receive.recv()
        proc.join()
        if isinstance(got, BaseException):
            raise RuntimeError("grading failed in a worker process") from got
        for i, scores in got:
            results[i] = scores
    return results


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student notebooks and autograders from the masters")
    b.add_argument("names", nargs="*", help="assignment folders (default: all)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT)
    b.add_argument("--no-run-tests", action="store_true", help="skip checking the solutions")
    g = sub.add_parser("grade", help="grade submissions with an autograder zip (no Docker)")
    g.add_argument("autograder", type=Path)
    g.add_argument("submissions", nargs="+", type=Path)
    g.add_argument("--csv", type=Path, help="write one row per submission")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time")
    args = parser.parse_args(argv)

    if args.command == "build":
        for name in args.names or list(masters()):
            dist = build(name, args.out, run_tests=not args.no_run_tests)
            print(f"{name}: release {dist / 'student'}, autograder {autograder_zip(dist)}")
        return 0

    rows = []
    all_scores = grade_many([(args.autograder, path) for path in args.submissions], processes=args.jobs)
    for path, scores in zip(args.submissions, all_scores):
        rows.append({"submission": str(path), **scores})
        print(f"{path}: {scores['total']:g} / {scores['possible']:g}")
    if args.csv:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
