r"""Build and grade the privlab course assignments with otter-grader (no Docker needed).

Each assignment is one master notebook in Otter Assign's format, kept as a jupytext MyST file
(``NN_topic/topic.md``) so that it can be reviewed as text. ``otter assign`` reads ``.ipynb``, so
this script converts the master with jupytext, then runs Otter Assign, which writes

    OUT/NN_topic/master/topic.ipynb                     the master notebook (converted)
    OUT/NN_topic/dist/student/topic.ipynb               the notebook to release (stubs, public tests)
    OUT/NN_topic/dist/autograder/topic.ipynb            the reference solution with every test
    OUT/NN_topic/dist/autograder/topic-autograder_*.zip the autograder (hidden tests included)
    OUT/NN_topic/dist/solutions/topic.ipynb             solutions to release after the deadline
                                                        (public tests only, no hidden ones)

``--variant N`` builds a per-student copy (``OUT/NN_topic-variant-N``) whose parameters (the
``P = {...}  # PARAMETERS`` lines of the master: epsilon, delta, q, ...) are drawn from a table
below with a seed derived from the assignment and N, so numeric answers differ between students;
``--all-public`` builds a self-study copy (``OUT/NN_topic-public``) in which every test is public.

Grading runs Otter's non-containerised runner (``otter run``, via ``otter.api.grade_submission``)
in the current environment, so privlab must be importable there. Each submission is graded in its
own process with a time limit; a submission that cannot be graded (a corrupt notebook, a time-out)
becomes a row with an ``error`` and zero points, and the CSV is written row by row as grading goes.

Usage (from the repository root)::

    .venv/bin/python assignments/build.py build [NAMES...] [--out build/assignments] [--no-run-tests]
                                               [--variant N ...] [--all-public]
    .venv/bin/python assignments/build.py grade AUTOGRADER_ZIP SUBMISSION... [--csv scores.csv]
                                               [--jobs 2] [--timeout 600]

Used in: assignments/README.md and tests/test_assignments.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "build" / "assignments"
SHARED = HERE / "_shared"
DEFAULT_TIMEOUT = 600.0

# Parameters a per-student variant draws from (each value is valid for every question using it).
VARIANT_CHOICES = {
    "01_mechanisms": {"epsilon": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "delta": [1e-05, 1e-06, 1e-07, 1e-08]},
    "02_accounting": {"sample_rate": [0.005, 0.01, 0.02], "noise_multiplier": [1.0, 1.2, 1.5],
                      "delta": [1e-05, 1e-06], "target_epsilon": [2.0, 3.0, 4.0]},
    # question 4's training run: from 300 random starts at every (q, sigma) here the reference
    # never scored below 0.94 (the hidden test asks > 0.9)
    "03_dpsgd": {"sample_rate": [0.05, 0.1, 0.2], "noise_multiplier": [0.8, 1.0, 1.3],
                 "delta": [1e-05, 1e-06, 1e-07]},
    "04_federated": {"sample_rate": [0.02, 0.05, 0.1], "noise_multiplier": [0.9, 1.2, 1.5],
                     "delta": [1e-05, 1e-06, 1e-07]},
}
_PARAMETERS_LINE = re.compile(r"^(?P<indent>[ \t]*)P = \{.*\}(?P<tail>[ \t]*# PARAMETERS)[ \t]*$", re.M)


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


def variant_parameters(name: str, variant: int) -> dict:
    """The parameters of student variant ``variant`` of assignment ``name`` (deterministic)."""
    if name not in VARIANT_CHOICES:
        raise ValueError(f"unknown assignment {name!r}; variants exist for {sorted(VARIANT_CHOICES)}")
    if not (isinstance(variant, int) and variant >= 0):
        raise ValueError(f"variant must be an integer >= 0, got {variant!r}")
    rng = random.Random(f"{name}:{variant}")  # string seeds are hashed with SHA-512: stable across runs
    return {key: rng.choice(values) for key, values in VARIANT_CHOICES[name].items()}


def set_parameters(text: str, params: dict) -> str:
    """Rewrite every ``P = {...}  # PARAMETERS`` line of a master (the cell and the tests)."""
    if not _PARAMETERS_LINE.search(text):
        raise ValueError("the master has no 'P = {...}  # PARAMETERS' line")
    return _PARAMETERS_LINE.sub(lambda m: f"{m['indent']}P = {params!r}{m['tail']}", text)


def privlab_requirement() -> str:
    """The pip requirement that installs privlab in the autograder's image (Docker and Gradescope).

    The repository set in ``_config.yml`` (the same URL the chapters' install cell uses), so the
    image installs privlab with its pinned dependencies (torch, opacus, ...) from the published
    repository: for GitHub its default branch's archive (Otter's image has no ``git``), otherwise
    ``git+URL``. ``PRIVLAB_AUTOGRADER_REQUIREMENT`` overrides it, e.g. to pin a tag
    (``privlab @ https://github.com/you/privlab/archive/refs/tags/v0.1.0.zip``) or a wheel URL.
    """
    override = os.environ.get("PRIVLAB_AUTOGRADER_REQUIREMENT", "").strip()
    if override:
        return override
    from privlab.book import repository_url

    url = repository_url(HERE.parent)
    if url.startswith("https://github.com/"):
        return f"privlab @ {url}/archive/HEAD.zip"
    return f"privlab @ git+{url}"


#: The Python of the autograder's image: the version the course is tested with.
GRADING_PYTHON = "3.11"
_CONFIG_NAME = re.compile(r"^(# ASSIGNMENT CONFIG\nname: [^\n]*\n)", re.M)


def set_requirements(text: str, requirements: list[str]) -> str:
    """Add ``requirements:`` (pip lines for the autograder's image) to a master's ASSIGNMENT CONFIG.

    Otter's non-containerised runner (``grade`` below) ignores them; ``otter grade`` (Docker) and
    Gradescope install them into the grading environment next to otter-grader, on Python
    :data:`GRADING_PYTHON`.

    >>> print(set_requirements("# ASSIGNMENT CONFIG\\nname: x\\nfiles: []\\n", ["privlab"]), end="")
    # ASSIGNMENT CONFIG
    name: x
    python_version: '3.11'
    requirements:
      - "privlab"
    files: []
    """
    if not _CONFIG_NAME.search(text):
        raise ValueError("the master has no '# ASSIGNMENT CONFIG' block starting with 'name:'")
    if re.search(r"^requirements:", text, flags=re.M):
        raise ValueError("the master already sets requirements:")
    lines = "".join(f"  - {json.dumps(r)}\n" for r in requirements)
    extra = f"python_version: '{GRADING_PYTHON}'\nrequirements:\n{lines}"
    return _CONFIG_NAME.sub(lambda m: m.group(1) + extra, text, count=1)


def make_all_public(text: str) -> str:
    """Turn every hidden test of a master into a public one (for a self-study build)."""
    return re.sub(r"^hidden: true[ \t]*\n", "", text, flags=re.M)


def solutions_notebook(dist: Path, stem: str) -> Path:
    """Write ``dist/solutions/STEM.ipynb``: the reference answers, the model answers and rubrics of
    the written questions, and the student notebook's metadata (public tests only)."""
    student = json.loads((Path(dist) / "student" / f"{stem}.ipynb").read_text())
    solution = json.loads((Path(dist) / "autograder" / f"{stem}.ipynb").read_text())
    markers = re.compile(r"^\s*# (BEGIN|END) SOLUTION\s*$")
    cells = []
    for cell in solution["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.strip() == "_Type your answer here, replacing this text._":
            continue  # the autograder notebook keeps the placeholder before the model answer
        if cell["cell_type"] == "code":
            lines = [re.sub(r"\s*# SOLUTION\s*$", "", line) for line in text.split("\n") if not markers.match(line)]
            text = "\n".join(lines)
            cell = {**cell, "outputs": [], "execution_count": None}
        cells.append({**cell, "source": text})
    student["cells"] = cells  # the student notebook's metadata holds the public tests only
    out = Path(dist) / "solutions" / f"{stem}.ipynb"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(student, indent=1))
    for support in (Path(dist) / "student").glob("*.py"):
        (out.parent / support.name).write_bytes(support.read_bytes())
    return out


def build(name: str, out: Path = DEFAULT_OUT, *, run_tests: bool = True, variant: int | None = None,
          all_public: bool = False) -> Path:
    """Convert one master notebook to .ipynb and run Otter Assign on it; returns its ``dist`` folder.

    Args:
        name: the assignment folder, e.g. ``"01_mechanisms"``.
        out: where to write ``NAME/master`` and ``NAME/dist`` (replaced if present);
            ``NAME-variant-N`` for a variant, ``NAME-public`` for an all-public build.
        run_tests: let Otter Assign run every test against the solutions (it raises if one fails).
        variant: build student variant N (parameters from ``variant_parameters``).
        all_public: make every test public (self-study; never for graded work).
    """
    import shutil

    import jupytext
    from otter.assign import main as otter_assign

    sources = masters()
    if name not in sources:
        raise ValueError(f"unknown assignment {name!r}; choose from {sorted(sources)}")
    text = set_requirements(sources[name].read_text(), [privlab_requirement()])
    folder = name
    if variant is not None:
        params = variant_parameters(name, variant)
        text = set_parameters(text, params)
        folder += f"-variant-{variant}"
    if all_public:
        text = make_all_public(text)
        folder += "-public"
    target = Path(out).resolve() / folder
    if target.exists():
        shutil.rmtree(target)
    master = target / "master" / f"{sources[name].stem}.ipynb"
    master.parent.mkdir(parents=True)
    jupytext.write(jupytext.reads(text, fmt="md:myst"), master)
    for support in SHARED.glob("*.py"):  # files the tests import (listed under `files:` in the config)
        shutil.copy(support, master.parent / support.name)
    dist = target / "dist"
    otter_assign(str(master), str(dist), no_pdfs=True, no_run_tests=not run_tests)
    autograder_zip(dist)  # fail here, not later, if Otter wrote no autograder
    solutions_notebook(dist, sources[name].stem)
    if variant is not None:
        (dist / "parameters.json").write_text(json.dumps({"variant": variant, **params}, indent=1))
    return dist


def questions(autograder: Path) -> list[str]:
    """The autograded questions of an autograder zip (its ``tests/*.py``), in order."""
    with zipfile.ZipFile(autograder) as zf:
        return sorted(Path(n).stem for n in zf.namelist() if n.startswith("tests/") and n.endswith(".py"))


def points_possible(autograder: Path) -> float:
    """The autograded points of an autograder zip (the ``points = ...`` line of each test file)."""
    total = 0.0
    with zipfile.ZipFile(autograder) as zf:
        for n in zf.namelist():
            if n.startswith("tests/") and n.endswith(".py"):
                m = re.search(r"^points = ([0-9.]+)\s*$", zf.read(n).decode(), flags=re.M)
                total += float(m.group(1)) if m else 0.0
    return total


def grade(autograder: Path, submission: Path) -> dict[str, float]:
    """Grade one submission (.ipynb or Otter's submission .zip) in this process; ``{question: score}``.

    The extra key ``"total"`` holds the sum; ``"possible"`` the maximum. No time limit: use
    ``grade_many`` for that.
    """
    from otter.api import grade_submission

    results = grade_submission(str(submission), str(autograder), quiet=True)
    scores = {name: float(r.score) for name, r in results.results.items()}
    scores["total"] = float(results.total)
    scores["possible"] = float(results.possible)
    return scores


def student_id(submission: Path) -> str:
    """The student ID of a submission: its file name without the extension (``alice.ipynb``)."""
    return Path(submission).stem


def _unreadable_notebook(submission: Path) -> str:
    """Why a ``.ipynb`` cannot be read (``""`` if it can, or if it is not a notebook)."""
    if Path(submission).suffix != ".ipynb":
        return ""
    try:
        nb = json.loads(Path(submission).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return "no list of cells"
    return ""


def _error_row(message: str) -> dict:
    return {"total": 0.0, "error": message}


#: The error of a kernel that exited before it ran anything: Jupyter picks the kernel's five ports by
#: binding port 0 and closing it, and the kernel binds them a moment later, so another process can take
#: one in between (jupyter/jupyter_client#487). No line of the submission has run, so it is started again.
KERNEL_START_FAILURE = "Kernel died before replying to kernel_info"
#: How many times a submission whose kernel died at start-up is started in all.
KERNEL_START_ATTEMPTS = 3
#: The command that grades one submission in its own process (``autograder`` and ``submission`` follow).
GRADE_ONE = [sys.executable, str(Path(__file__).resolve()), "grade-one"]


def grade_many(jobs: list[tuple[Path, Path]], *, processes: int = 1, timeout: float = DEFAULT_TIMEOUT,
               on_result=None) -> list[dict]:
    """Grade ``[(autograder_zip, submission), ...]``, each in its own process; rows in the same order.

    A row is ``{question: score, "total", "possible", "error": ""}``; a submission that fails to
    grade (unreadable, or running past ``timeout`` seconds) gets ``{"total": 0, "error": why}``
    and the others are graded as usual. A time-out kills the grading process group; its kernel
    (started by Jupyter in a session of its own) exits when its parent does. A kernel that dies
    before it runs anything (:data:`KERNEL_START_FAILURE`) is started again, up to
    :data:`KERNEL_START_ATTEMPTS` times in all, with a note on stderr. ``on_result(i, row)``
    is called as each submission finishes, e.g. to write a CSV row at once.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    results: list = [None] * len(jobs)
    pending = list(range(len(jobs)))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    attempts = [0] * len(jobs)

    def finish(i: int, row: dict) -> None:
        results[i] = row
        if on_result is not None:
            on_result(i, row)

    while pending or running:
        while pending and len(running) < processes:
            i = pending.pop(0)
            autograder, submission = jobs[i]
            unreadable = _unreadable_notebook(submission)
            if unreadable:
                finish(i, _error_row(f"grading failed: {Path(submission).name} is not a readable notebook ({unreadable})"))
                continue
            attempts[i] += 1
            proc = subprocess.Popen([*GRADE_ONE, str(autograder), str(submission)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            running[i] = (proc, time.monotonic())
        time.sleep(0.05)
        for i, (proc, started) in list(running.items()):
            if proc.poll() is None:
                if time.monotonic() - started > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    del running[i]
                    finish(i, _error_row(f"timed out after {timeout:g} s"))
                continue
            stdout, stderr = proc.communicate()
            del running[i]
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                finish(i, {**json.loads(lines[-1]), "error": ""})
            else:
                last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
                if KERNEL_START_FAILURE in last[0] and attempts[i] < KERNEL_START_ATTEMPTS:
                    print(f"{Path(jobs[i][1]).name}: the kernel died at start-up (attempt {attempts[i]} of "
                          f"{KERNEL_START_ATTEMPTS}); starting it again", file=sys.stderr, flush=True)
                    pending.insert(0, i)
                    continue
                finish(i, _error_row(f"grading failed: {last[0][:300]}"))
    return results


def _grade_cli(args) -> int:
    qs = questions(args.autograder)
    fields = ["student_id", "submission", *qs, "total", "possible", "error"]
    possible = points_possible(args.autograder)
    handle = open(args.csv, "w", newline="") if args.csv else None
    writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore") if handle else None
    if writer:
        writer.writeheader()
        handle.flush()

    def on_result(i, row):
        path = args.submissions[i]
        full = {"student_id": student_id(path), "submission": str(path), **{q: 0.0 for q in qs}, **row}
        full.setdefault("possible", possible)
        if writer:
            writer.writerow(full)
            handle.flush()  # the CSV is usable while grading goes on
        status = f"ERROR {row['error']}" if row.get("error") else f"{row['total']:g} / {full['possible']:g}"
        print(f"{path}: {status}", flush=True)

    try:
        rows = grade_many([(args.autograder, p) for p in args.submissions], processes=args.jobs,
                          timeout=args.timeout, on_result=on_result)
    finally:
        if handle:
            handle.close()
    return 1 if any(r.get("error") for r in rows) else 0


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student notebooks, autograders and solutions from the masters")
    b.add_argument("names", nargs="*", help="assignment folders (default: all)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT)
    b.add_argument("--no-run-tests", action="store_true", help="skip checking the solutions")
    b.add_argument("--variant", type=int, nargs="+", help="per-student variants to build (e.g. 1 2 3)")
    b.add_argument("--all-public", action="store_true", help="every test public (self-study build)")
    g = sub.add_parser("grade", help="grade submissions with an autograder zip (no Docker)")
    g.add_argument("autograder", type=Path)
    g.add_argument("submissions", nargs="+", type=Path)
    g.add_argument("--csv", type=Path, help="write one row per submission, as grading goes")
    g.add_argument("--jobs", type=int, default=1, help="submissions graded at the same time")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per submission")
    one = sub.add_parser("grade-one")  # internal: one submission, scores as JSON on stdout
    one.add_argument("autograder", type=Path)
    one.add_argument("submission", type=Path)
    args = parser.parse_args(argv)

    if args.command == "grade-one":
        scores = grade(args.autograder, args.submission)
        print(json.dumps(scores), flush=True)
        return 0
    if args.command == "grade":
        return _grade_cli(args)
    names = args.names or list(masters())
    if args.variant:
        names = [n for n in names if n in VARIANT_CHOICES] if not args.names else names
    for name in names:
        for variant in args.variant or [None]:
            dist = build(name, args.out, run_tests=not args.no_run_tests, variant=variant,
                         all_public=args.all_public)
            print(f"{name}: release {dist / 'student'}, autograder {autograder_zip(dist)}, "
                  f"solutions {dist / 'solutions'}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
