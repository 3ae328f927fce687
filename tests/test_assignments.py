"""The course assignments: Otter Assign builds each one; the reference solutions get full marks on
every question and the untouched student notebooks (stubs) get zero.

Grading uses otter-grader's local runner (``otter.api.grade_submission``, what ``otter run`` does),
without Docker, in a Jupyter kernel of this environment.
"""

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("otter", reason="otter-grader is in the dev extra")
pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("privlab_assignments_build", ROOT / "assignments" / "build.py")
build_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_tool)

ASSIGNMENTS = sorted(build_tool.masters())


def test_at_least_four_assignments():
    topics = {name.split("_", 1)[1] for name in ASSIGNMENTS}
    assert len(ASSIGNMENTS) >= 4
    assert {"mechanisms", "accounting", "dpsgd"} <= topics and topics & {"federated", "synthetic"}


def test_build_tool_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown assignment 'nope'"):
        build_tool.build("nope", tmp_path)
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        build_tool.grade_many([], processes=0)
    with pytest.raises(FileNotFoundError, match="expected one autograder zip"):
        build_tool.autograder_zip(tmp_path)


def _notebook_text(path: Path) -> tuple[str, str]:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"]), json.dumps(nb["metadata"])


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Build every assignment, then grade each reference solution and each untouched student
    notebook (eight kernels, two at a time). ``{name: (dist, solution scores, stub scores)}``."""
    out = tmp_path_factory.mktemp("assignments")
    dists = {name: build_tool.build(name, out, run_tests=False) for name in ASSIGNMENTS}
    jobs = []
    for name, dist in dists.items():
        stem = build_tool.masters()[name].stem
        autograder = build_tool.autograder_zip(dist)
        jobs += [(autograder, dist / "autograder" / f"{stem}.ipynb"), (autograder, dist / "student" / f"{stem}.ipynb")]
    scores = build_tool.grade_many(jobs, processes=2)
    return {name: (dists[name], scores[2 * i], scores[2 * i + 1]) for i, name in enumerate(dists)}


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_hides_solutions_and_hidden_tests(name, graded):
    dist, _, _ = graded[name]
    stem = build_tool.masters()[name].stem
    source, metadata = _notebook_text(dist / "student" / f"{stem}.ipynb")
    assert "BEGIN SOLUTION" not in source and "# SOLUTION" not in source and "..." in source
    assert "hidden=True" not in metadata and "# HIDDEN" not in source and "def test_" not in source
    with zipfile.ZipFile(build_tool.autograder_zip(dist)) as zf:
        test_files = {n: zf.read(n).decode() for n in zf.namelist() if n.startswith("tests/")}
    assert test_files
    for path, text in test_files.items():
        assert "hidden=True" in text, f"{path}: every question needs a hidden test"
        assert "hidden=False" in text, f"{path}: every question needs a public test"
        assert Path(path).stem in metadata, f"{path}: its public tests are not in the student notebook"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_solution_gets_full_marks(name, graded):
    dist, scores, _ = graded[name]
    with zipfile.ZipFile(build_tool.autograder_zip(dist)) as zf:
        questions = {Path(n).stem for n in zf.namelist() if n.startswith("tests/")}
    assert questions and questions <= set(scores), scores
    assert scores["possible"] > 0
    assert scores["total"] == pytest.approx(scores["possible"]), scores


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_untouched_stubs_score_zero(name, graded):
    dist, _, stub_scores = graded[name]
    with zipfile.ZipFile(build_tool.autograder_zip(dist)) as zf:
        questions = {Path(n).stem for n in zf.namelist() if n.startswith("tests/")}
    assert {q: stub_scores[q] for q in questions} == {q: 0.0 for q in questions}, stub_scores
    assert stub_scores["total"] == 0.0 < stub_scores["possible"]
