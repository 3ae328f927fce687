"""The course assignments: Otter Assign builds each one; the reference solutions get full marks on
every question, the untouched student notebooks (stubs) get zero, and a suite of stored wrong and
right submissions (tests/assignments/submissions) gets the grades recorded in each file.

The solutions and stubs are graded with otter-grader's local runner (``otter run``), without
Docker, in a Jupyter kernel of this environment. The stored submissions are graded in this process
by tests/assignments/grading.py with the autograder's own test files (no kernel per submission);
``test_in_process_grader_matches_otter`` checks that both ways give the same scores.
"""

import csv
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("otter", reason="otter-grader is in the dev extra")
pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("privlab_assignments_build", ROOT / "assignments" / "build.py")
build_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_tool)
sys.path.insert(0, str(ROOT / "tests" / "assignments"))
import grading  # noqa: E402  (tests/assignments/grading.py)

ASSIGNMENTS = sorted(build_tool.masters())
STEMS = {name: path.stem for name, path in build_tool.masters().items()}
# questions that ask for privlab.accounting on purpose (a budget computed with the library's accountants)
PRIVLAB_ALLOWED = {"q4_budget"}
SUBMISSIONS = sorted((p.parent.name, p) for p in grading.SUBMISSIONS.glob("*/*.py"))


def test_at_least_four_assignments():
    topics = {name.split("_", 1)[1] for name in ASSIGNMENTS}
    assert len(ASSIGNMENTS) >= 4
    assert {"mechanisms", "accounting", "dpsgd"} <= topics and topics & {"federated", "synthetic"}


def test_build_tool_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown assignment 'nope'"):
        build_tool.build("nope", tmp_path)
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        build_tool.grade_many([], processes=0)
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got 0"):
        build_tool.grade_many([], timeout=0)
    with pytest.raises(FileNotFoundError, match="expected one autograder zip"):
        build_tool.autograder_zip(tmp_path)
    with pytest.raises(ValueError, match="unknown assignment 'nope'"):
        build_tool.variant_parameters("nope", 1)
    with pytest.raises(ValueError, match="variant must be an integer >= 0, got -1"):
        build_tool.variant_parameters("02_accounting", -1)


FAKE_GRADE_ONE = """\
import json, sys
from pathlib import Path
autograder, submission = sys.argv[1:]
count = Path(submission + ".starts")
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
fails, message = json.loads(Path(submission).read_text())
if n <= fails:
    sys.exit(f"RuntimeError: {message}")
print(json.dumps({"q1": 1.0, "total": 1.0, "possible": 1.0}))
"""


def test_a_kernel_that_dies_at_start_up_is_started_again_and_nothing_else_is(tmp_path, monkeypatch):
    """The Jupyter port race (a kernel's port taken before it binds it) kills a kernel before any
    code runs: grading starts it again, up to KERNEL_START_ATTEMPTS times; any other failure is final."""
    fake = tmp_path / "grade_one.py"
    fake.write_text(FAKE_GRADE_ONE)
    monkeypatch.setattr(build_tool, "GRADE_ONE", [sys.executable, str(fake)])
    died = build_tool.KERNEL_START_FAILURE
    cases = {"once": (1, died), "always": (99, died), "other": (1, "the student's code raised")}
    jobs = []
    for name, case in cases.items():
        (tmp_path / name).write_text(json.dumps(case))
        jobs.append((tmp_path / "autograder.zip", tmp_path / name))
    once, always, other = build_tool.grade_many(jobs, processes=2, timeout=60)
    assert once == {"q1": 1.0, "total": 1.0, "possible": 1.0, "error": ""}
    assert always["total"] == 0.0 and always["error"] == f"grading failed: RuntimeError: {died}"
    assert other["error"] == "grading failed: RuntimeError: the student's code raised"
    starts = {name: int((tmp_path / f"{name}.starts").read_text()) for name in cases}
    assert starts == {"once": 2, "always": build_tool.KERNEL_START_ATTEMPTS, "other": 1}


def _notebook_text(path: Path) -> tuple[str, str]:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"]), json.dumps(nb["metadata"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every assignment built once (without Otter Assign's own solution run): ``{name: dist}``."""
    out = tmp_path_factory.mktemp("assignments")
    return {name: build_tool.build(name, out, run_tests=False) for name in ASSIGNMENTS}


@pytest.fixture(scope="module")
def graded(built):
    """Each reference solution and each untouched student notebook graded by Otter's runner in a
    kernel (eight kernels, two at a time). ``{name: (dist, solution scores, stub scores)}``."""
    jobs = []
    for name, dist in built.items():
        autograder = build_tool.autograder_zip(dist)
        jobs += [(autograder, dist / "autograder" / f"{STEMS[name]}.ipynb"), (autograder, dist / "student" / f"{STEMS[name]}.ipynb")]
    scores = build_tool.grade_many(jobs, processes=2, timeout=600)
    for (_, path), row in zip(jobs, scores):
        assert not row["error"], (path, row)
    return {name: (built[name], scores[2 * i], scores[2 * i + 1]) for i, name in enumerate(built)}


@pytest.fixture(scope="module")
def test_files(built, tmp_path_factory):
    """The autograders' test files (hidden tests included): ``{name: [tests/q*.py, ...]}``."""
    root = tmp_path_factory.mktemp("autograder_tests")
    return {name: grading.autograder_tests(build_tool.autograder_zip(dist), root / name) for name, dist in built.items()}


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_release_hides_solutions_and_hidden_tests(name, built):
    dist = built[name]
    source, metadata = _notebook_text(dist / "student" / f"{STEMS[name]}.ipynb")
    assert "BEGIN SOLUTION" not in source and "# SOLUTION" not in source and "..." in source
    assert "hidden=True" not in metadata and "# HIDDEN" not in source and "def test_" not in source
    assert "hidden: true" not in source and "Rubric" not in source and "Model answer" not in source
    assert (dist / "student" / "owncode.py").is_file()  # the public tests import it
    with zipfile.ZipFile(build_tool.autograder_zip(dist)) as zf:
        test_files = {n: zf.read(n).decode() for n in zf.namelist() if n.startswith("tests/")}
        assert "files/owncode.py" in zf.namelist()
    assert test_files
    for path, text in test_files.items():
        assert "hidden=True" in text, f"{path}: every question needs a hidden test"
        assert "hidden=False" in text, f"{path}: every question needs a public test"
        assert Path(path).stem in metadata, f"{path}: its public tests are not in the student notebook"
        assert "points=None" not in text, f"{path}: every test carries explicit points"
        if Path(path).stem not in PRIVLAB_ALLOWED:
            assert "assert_own_code" in text, f"{path}: the numpy/scipy-only rule is not checked"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_student_notebook_shows_points_and_written_questions(name, built):
    nb = json.loads((built[name] / "student" / f"{STEMS[name]}.ipynb").read_text())
    markdown = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    n_questions = sum(text.lstrip().startswith("**Question") or "**Question" in text for text in markdown)
    assert sum("_Points:_" in text for text in markdown) >= n_questions >= 4
    assert any("written, graded by hand" in text for text in markdown)
    assert any("Type your answer here" in text for text in markdown)


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_solutions_release_has_answers_and_no_hidden_tests(name, built, test_files):
    path = built[name] / "solutions" / f"{STEMS[name]}.ipynb"
    source, metadata = _notebook_text(path)
    assert "hidden=True" not in metadata and "def test_" not in source
    assert "BEGIN SOLUTION" not in source and "# SOLUTION" not in source
    assert "Model answer" in source and "Rubric" in source
    # every stub of the student notebook is filled in
    assert "= ...\n" not in source and "    ...\n" not in source
    scores = grading.grade_env(grading.run_cells(grading.notebook_cells(path)), test_files[name])
    assert scores["total"] == scores["possible"] > 0, scores
    assert (path.parent / "owncode.py").is_file()


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_solution_gets_full_marks(name, graded):
    dist, scores, _ = graded[name]
    questions = set(build_tool.questions(build_tool.autograder_zip(dist)))
    assert questions and questions <= set(scores), scores
    assert scores["possible"] > 0
    assert scores["total"] == pytest.approx(scores["possible"]), scores


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_untouched_stubs_score_zero(name, graded):
    dist, _, stub_scores = graded[name]
    questions = build_tool.questions(build_tool.autograder_zip(dist))
    assert {q: stub_scores[q] for q in questions} == {q: 0.0 for q in questions}, stub_scores
    assert stub_scores["total"] == 0.0 < stub_scores["possible"]


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_in_process_grader_matches_otter(name, graded, test_files):
    dist, solution_scores, stub_scores = graded[name]
    for notebook, expected in [(dist / "autograder", solution_scores), (dist / "student", stub_scores)]:
        got = grading.grade_env(grading.run_cells(grading.notebook_cells(notebook / f"{STEMS[name]}.ipynb")), test_files[name])
        assert got == pytest.approx({k: expected[k] for k in got}), (notebook, got, expected)


@pytest.mark.parametrize("name, path", SUBMISSIONS, ids=[f"{n}/{p.stem}" for n, p in SUBMISSIONS])
def test_stored_submission_grades(name, path, built, test_files):
    """Every false pass of issue 21 now loses points; every correct-but-different answer keeps them."""
    possible = grading.question_points(test_files[name])
    expect = grading.expected_grades(path)
    assert set(expect) <= set(possible), f"{path.name}: unknown questions {set(expect) - set(possible)}"
    scores = grading.grade_overrides(built[name] / "autograder" / f"{STEMS[name]}.ipynb", test_files[name], path.read_text())
    wanted = {q: float(expect.get(q, points)) for q, points in possible.items()}
    assert {q: scores[q] for q in possible} == pytest.approx(wanted), path.name
    if path.stem.startswith("wrong_"):
        assert any(wanted[q] < possible[q] for q in possible), f"{path.name} must lose points somewhere"


def test_every_graded_question_has_a_wrong_submission():
    covered = {(name, q) for name, path in SUBMISSIONS if path.stem.startswith("wrong_") for q in grading.expected_grades(path)}
    for name in ["01_mechanisms", "03_dpsgd", "04_federated"]:
        assert {q for n, q in covered if n == name}, name
    # the false passes listed in issue 21
    assert {("01_mechanisms", "q2_sensitivity"), ("03_dpsgd", "q3_noise"), ("03_dpsgd", "q4_training"),
            ("04_federated", "q1_fedavg"), ("04_federated", "q3_client_dp")} <= covered


def _notebook(path: Path, cells: list[str], name: str) -> Path:
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": c} for c in cells],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "otter": {"assignment_name": name}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_grading_survives_corrupt_and_hanging_submissions(built, tmp_path):
    """A corrupt notebook and a notebook that never finishes each give an error row naming the
    student, with zero points; the CSV has a student-ID column and gets each row as it is graded.
    (A good submission's row is checked by the ``graded`` fixture, which uses the same path.)"""
    autograder = build_tool.autograder_zip(built["02_accounting"])
    hang = _notebook(tmp_path / "dave.ipynb", ["import time\ntime.sleep(3600)"], "accounting")
    corrupt = tmp_path / "carol.ipynb"
    corrupt.write_text('{"cells": [')
    out = tmp_path / "scores.csv"
    rc = build_tool._cli(["grade", str(autograder), str(hang), str(corrupt), "--csv", str(out),
                          "--jobs", "2", "--timeout", "5"])
    assert rc == 1  # some submission needs the teacher's attention
    table = list(csv.reader(out.open()))
    assert table[0] == ["student_id", "submission", *build_tool.questions(autograder), "total", "possible", "error"]
    rows = [dict(zip(table[0], row)) for row in table[1:]]
    assert [r["student_id"] for r in rows] == ["carol", "dave"]  # in the order they finished
    assert rows[0]["error"].startswith("grading failed: carol.ipynb is not a readable notebook")
    assert rows[1]["error"] == "timed out after 5 s"
    assert all(r["total"] == "0.0" and r["q1_composition"] == "0.0" and r["possible"] == str(build_tool.points_possible(autograder)) for r in rows)
    assert build_tool.points_possible(autograder) == 13.0


def test_variants_and_self_study_build(built, tmp_path, test_files):
    """Per-student parameters change the numeric answers; the all-public build hides no test."""
    params = [build_tool.variant_parameters("02_accounting", v) for v in range(1, 6)]
    assert params == [build_tool.variant_parameters("02_accounting", v) for v in range(1, 6)]  # deterministic
    assert len({json.dumps(p, sort_keys=True) for p in params}) > 1
    text = build_tool.masters()["02_accounting"].read_text()
    default = next(p for p in [build_tool.variant_parameters("02_accounting", v) for v in range(1, 50)]
                   if p["target_epsilon"] != 3.0 and p["sample_rate"] != 0.01)
    rewritten = build_tool.set_parameters(text, default)
    assert rewritten.count(repr(default)) == text.count("# PARAMETERS") >= 3
    assert "hidden: true" in text and "hidden: true" not in build_tool.make_all_public(text)

    variant = next(v for v in range(1, 50) if build_tool.variant_parameters("02_accounting", v) == default)
    dist = build_tool.build("02_accounting", tmp_path, run_tests=False, variant=variant, all_public=True)
    assert dist.parent.name == f"02_accounting-variant-{variant}-public"
    assert json.loads((dist / "parameters.json").read_text()) == {"variant": variant, **default}
    tests = grading.autograder_tests(build_tool.autograder_zip(dist), tmp_path / "tests")
    assert all("hidden=True" not in t.read_text() for t in tests)
    solution = dist / "autograder" / "accounting.ipynb"
    scores = grading.grade_overrides(solution, tests, "")
    assert scores["total"] == scores["possible"] > 0
    # the default build's answer to question 4 is wrong for this student
    env = grading.run_cells(grading.notebook_cells(built["02_accounting"] / "autograder" / "accounting.ipynb"))
    copied = grading.grade_overrides(solution, tests, f"max_steps = {int(env['max_steps'])}\n"
                                     f"pld_epsilon_at_max_steps = {float(env['pld_epsilon_at_max_steps'])!r}\n")
    assert copied["q4_budget"] == 0.25  # only the public smoke test (a finite PLD epsilon) passes


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_autograder_image_installs_privlab(name, built):
    """The zip's environment.yml (what `otter grade`'s Docker image and Gradescope install) has
    privlab from the configured repository, on the Python the course is tested with."""
    import yaml

    with zipfile.ZipFile(build_tool.autograder_zip(built[name])) as zf:
        env = yaml.safe_load(zf.read("environment.yml"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"python={build_tool.GRADING_PYTHON}" in env["dependencies"]
    assert build_tool.privlab_requirement() in pip and any(p.startswith("otter-grader") for p in pip)
    assert build_tool.privlab_requirement().startswith("privlab @ https://github.com/")


def test_privlab_requirement_override(monkeypatch):
    monkeypatch.setenv("PRIVLAB_AUTOGRADER_REQUIREMENT", "privlab @ https://example.org/privlab-0.1.0.whl")
    assert build_tool.privlab_requirement() == "privlab @ https://example.org/privlab-0.1.0.whl"
    with pytest.raises(ValueError, match="already sets requirements"):
        build_tool.set_requirements("# ASSIGNMENT CONFIG\nname: x\nrequirements: []\n", ["privlab"])


@pytest.mark.parametrize("name, question, answer", [("03_dpsgd", "q4_training", "dp_epsilon"),
                                                    ("04_federated", "q3_client_dp", "epsilon_100_rounds")])
def test_variants_of_assignments_3_and_4(name, question, answer, built, tmp_path):
    """A variant's solution gets full marks; the default build's numeric answer loses the hidden
    epsilon test's points for that student."""
    text = build_tool.masters()[name].read_text()
    base = eval(build_tool._PARAMETERS_LINE.search(text).group(0).split("=", 1)[1].split("#")[0])  # noqa: S307
    assert set(build_tool.variant_parameters(name, 1)) == set(base)
    variant = next(v for v in range(1, 50) if all(build_tool.variant_parameters(name, v)[k] != base[k] for k in base))
    dist = build_tool.build(name, tmp_path, run_tests=False, variant=variant)
    assert json.loads((dist / "parameters.json").read_text())["variant"] == variant
    tests = grading.autograder_tests(build_tool.autograder_zip(dist), tmp_path / "tests")
    solution = dist / "autograder" / f"{STEMS[name]}.ipynb"
    scores = grading.grade_overrides(solution, tests, "")
    assert scores["total"] == scores["possible"] > 0
    env = grading.run_cells(grading.notebook_cells(built[name] / "autograder" / f"{STEMS[name]}.ipynb"))
    copied = grading.grade_overrides(solution, tests, f"{answer} = {float(env[answer])!r}\n")
    assert copied[question] < scores[question]
