"""Grade stored submissions in this process with the autograder's own test files (no kernel).

A stored submission is a small ``.py`` file of *overrides*: top-level ``def``/``class``/assignment
statements that replace the statements of the same name in the reference solution, where the
solution defines them (so later cells, such as a training run, use the student's version); other
statements (imports, extra helpers) run after the notebook's first code cell. The notebook's code
cells then run in order in one fresh namespace, a failing cell is skipped as Otter's runner does,
and each ``tests/<question>.py`` of the autograder zip runs against that namespace with
``otter.test_files.ExceptionTestFile``: the same test code and the same points as ``otter run``,
without starting a kernel (about 0.1-3 s per submission instead of 5-10 s).

A comment line ``# expect: {"q3_noise": 1.0, ...}`` in the file gives the grades the suite asserts
for the questions it lists; every other question must get full marks.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "assignments" / "_shared"
SUBMISSIONS = Path(__file__).resolve().parent / "submissions"
# A kernel starts from a random torch seed (model initialisations in the notebooks use it; no test
# depends on it); in-process grading fixes it so that grades do not depend on the order of tests.
TORCH_SEED = 0


def _is_grader_cell(source: str) -> bool:
    return "otter.Notebook(" in source or source.lstrip().startswith("grader.check")


def notebook_cells(notebook: Path) -> list[str]:
    """The code cells a student's kernel would run, without Otter's init and check cells."""
    nb = json.loads(Path(notebook).read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return [c for c in cells if not _is_grader_cell(c)]


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = set()
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
        return names
    return set()


def apply_overrides(cells: list[str], overrides: str) -> list[str]:
    """Replace the solution's top-level statements by the submission's statements of the same name."""
    tree = ast.parse(overrides)
    by_name, extra = {}, []
    for node in tree.body:
        names = _defined_names(node)
        segment = ast.get_source_segment(overrides, node)
        if names:
            for n in names:
                by_name[n] = (id(node), segment)
        else:
            extra.append(segment)
    used, out = set(), []
    for source in cells:
        try:
            cell_tree = ast.parse(source)
        except SyntaxError:
            out.append(source)
            continue
        parts = []
        for node in cell_tree.body:
            hit = [by_name[n] for n in _defined_names(node) if n in by_name]
            if hit:
                key, segment = hit[0]
                if key not in used:
                    used.add(key)
                    parts.append(segment)
            else:
                parts.append(ast.get_source_segment(source, node))
        out.append("\n".join(parts))
    unmatched = [seg for key, seg in {v[0]: v[1] for v in by_name.values()}.items() if key not in used]
    if out:
        out[0] = "\n".join([out[0], *extra, *unmatched])
    return out


def autograder_tests(autograder_zip: Path, into: Path) -> list[Path]:
    """Extract the autograder's ``tests/*.py`` (hidden tests included) into ``into``."""
    with zipfile.ZipFile(autograder_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("tests/") and n.endswith(".py"))
        for n in names:
            zf.extract(n, into)
    return [Path(into) / n for n in names]


def grade_env(env: dict, tests: list[Path]) -> dict[str, float]:
    """``{question: score, ..., "total": ..., "possible": ...}`` with Otter's test-file scoring."""
    import torch
    from otter.test_files import ExceptionTestFile

    scores, total, possible = {}, 0.0, 0.0
    dtype = torch.get_default_dtype()
    sys.path.insert(0, str(SHARED))
    try:
        for path in tests:
            tf = ExceptionTestFile.from_file(str(path))
            torch.set_default_dtype(env.get("__dtype__", dtype))
            tf.run(env)
            scores[tf.name] = float(tf.score)
            total += float(tf.score)
            possible += float(tf.possible)
    finally:
        torch.set_default_dtype(dtype)
        sys.path.remove(str(SHARED))
    scores["total"], scores["possible"] = total, possible
    return scores


def grade_overrides(solution_notebook: Path, tests: list[Path], overrides: str) -> dict[str, float]:
    """Grade the solution notebook with ``overrides`` applied (``""`` grades the solution)."""
    return grade_env(run_cells(apply_overrides(notebook_cells(solution_notebook), overrides)), tests)


def run_cells(cells: list[str]) -> dict:
    """Run the cells in one namespace as a kernel would (a cell that raises is skipped); the
    default torch dtype the notebook chose is remembered for its tests and restored afterwards."""
    import torch

    before, rng = torch.get_default_dtype(), torch.random.get_rng_state()
    torch.manual_seed(TORCH_SEED)
    env: dict = {"__name__": "__main__"}
    sys.path.insert(0, str(SHARED))
    try:
        for i, source in enumerate(cells):
            try:
                exec(compile(source, f"<cell {i}>", "exec"), env)
            except Exception:
                pass
        env["__dtype__"] = torch.get_default_dtype()
    finally:
        torch.set_default_dtype(before)
        torch.random.set_rng_state(rng)
        sys.path.remove(str(SHARED))
    return env


def expected_grades(path: Path) -> dict:
    """The ``# expect: {...}`` line of a stored submission (``{}``: full marks everywhere)."""
    m = re.search(r"^# expect: (\{.*\})\s*$", Path(path).read_text(), flags=re.M)
    return json.loads(m.group(1)) if m else {}


def question_points(tests: list[Path]) -> dict[str, float]:
    """``{question: points possible}`` of the autograder's test files."""
    from otter.test_files import ExceptionTestFile

    return {tf.name: float(tf.possible) for tf in (ExceptionTestFile.from_file(str(p)) for p in tests)}
