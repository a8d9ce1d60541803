"""`mi-tutor grade` on generated submissions of a small fixture notebook (two quick exercises, no model).

Submissions: the solution (all pass), the student version (all "not written yet"), one typical mistake per
exercise (named), one that hangs, one whose check cell was edited to print a fake verdict, one whose kernel
dies, one unreadable file. All graded in one run, which must finish and write one CSV.
"""
from __future__ import annotations

import csv
import os

import nbformat
import pytest

from mi_tutor.cli import main
from mi_tutor.notebooks import make_student

SOLUTION_LS = ("import numpy as np\n\ndef least_squares(x, y):\n    ### BEGIN SOLUTION\n"
               "    X = np.column_stack([np.ones(len(x)), x])\n    return np.linalg.lstsq(X, y, rcond=None)[0]\n"
               "    ### END SOLUTION")
SOLUTION_MU = ("def mean_ablate_unit(hidden, unit):\n    ### BEGIN SOLUTION\n    out = hidden.clone()\n"
               "    out[:, unit] = hidden[:, unit].mean()\n    return out\n    ### END SOLUTION")
CHECK_LS = 'check("least_squares", least_squares)'
CHECK_MU = 'check("mean_ablate_unit", mean_ablate_unit)'
MISTAKE_LS = "import numpy as np\n\ndef least_squares(x, y):\n    return np.linalg.lstsq(x, y, rcond=None)[0]"
MISTAKE_MU = "def mean_ablate_unit(hidden, unit):\n    hidden[:, unit] = hidden[:, unit].mean()\n    return hidden"
TIMEOUT = 40


def _nb(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# grading fixture")] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _source_cells():
    return ["from mi_tutor.exercises import check", SOLUTION_LS, CHECK_LS, SOLUTION_MU, CHECK_MU]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    ref = root / "fixture.ipynb"
    nbformat.write(_nb(_source_cells()), str(ref))
    subs = root / "submissions"
    subs.mkdir()
    nbformat.write(_nb(_source_cells()), str(subs / "solution.ipynb"))
    nbformat.write(make_student(nbformat.read(str(ref), as_version=4), "fixture.ipynb"), str(subs / "student.ipynb"))
    cells = _source_cells()
    cells[1], cells[3] = MISTAKE_LS, MISTAKE_MU
    nbformat.write(_nb(cells), str(subs / "mistakes.ipynb"))
    cells = _source_cells()
    cells.insert(3, "while True:\n    pass")
    nbformat.write(_nb(cells), str(subs / "hangs.ipynb"))
    student = make_student(nbformat.read(str(ref), as_version=4), "fixture.ipynb")
    for c in student.cells:
        if c.source == CHECK_LS:
            c.source = 'print("✔ least_squares: correct on 3 fresh inputs.")'
    nbformat.write(student, str(subs / "edited.ipynb"))
    cells = _source_cells()
    cells.insert(3, "import os\nos._exit(1)")
    nbformat.write(_nb(cells), str(subs / "crashes.ipynb"))
    (subs / "garbage.ipynb").write_text("this is not a notebook")
    cells = _source_cells()
    cells[1] = "def least_squares(x, y):\n    n = 0\n    while True:\n        n += 1"
    nbformat.write(_nb(cells), str(subs / "loops.ipynb"))
    out = root / "grades.csv"
    old = os.environ.get("MI_TUTOR_CHECK_TIMEOUT")
    os.environ["MI_TUTOR_CHECK_TIMEOUT"] = "2"  # reaches the kernels: the alarm stops the endless function there
    try:
        status = main(["grade", str(subs), "--out", str(out), "--timeout", str(TIMEOUT), "--reference", str(ref)])
    finally:
        os.environ.pop("MI_TUTOR_CHECK_TIMEOUT") if old is None else os.environ.__setitem__("MI_TUTOR_CHECK_TIMEOUT", old)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    return status, {(r["student_file"], r["exercise"]): r for r in rows}, rows


def test_the_run_finishes_and_writes_one_row_per_exercise_and_problem(graded):
    status, by_key, rows = graded
    assert status == 0
    assert list(rows[0]) == ["student_file", "exercise", "status", "reason"]
    files = {r["student_file"] for r in rows}
    assert files == {"solution.ipynb", "student.ipynb", "mistakes.ipynb", "hangs.ipynb", "edited.ipynb",
                     "crashes.ipynb", "garbage.ipynb", "loops.ipynb"}


def test_the_solution_passes_everything(graded):
    _, by_key, rows = graded
    assert by_key[("solution.ipynb", "least_squares")]["status"] == "pass"
    assert by_key[("solution.ipynb", "mean_ablate_unit")]["status"] == "pass"
    assert "correct on 3 fresh inputs" in by_key[("solution.ipynb", "least_squares")]["reason"]
    assert not [r for r in rows if r["student_file"] == "solution.ipynb" and r["exercise"] == "(notebook)"]


def test_the_student_version_is_not_written_yet(graded):
    _, by_key, _ = graded
    for ex in ("least_squares", "mean_ablate_unit"):
        row = by_key[("student.ipynb", ex)]
        assert row["status"] == "fail" and row["reason"] == "not written yet"


def test_typical_mistakes_fail_with_their_name(graded):
    _, by_key, _ = graded
    assert by_key[("mistakes.ipynb", "least_squares")]["status"] == "fail"
    assert "shape (1,), expected (2,)" in by_key[("mistakes.ipynb", "least_squares")]["reason"]
    mu = by_key[("mistakes.ipynb", "mean_ablate_unit")]
    assert mu["status"] == "fail" and "changed its input `hidden` in place" in mu["reason"]


def test_a_hang_is_reported_and_not_fatal(graded):
    _, by_key, _ = graded
    assert by_key[("hangs.ipynb", "(notebook)")]["reason"] == f"timed out after {TIMEOUT:g} s"
    assert by_key[("hangs.ipynb", "mean_ablate_unit")]["status"] == "fail"
    assert "did not finish" in by_key[("hangs.ipynb", "mean_ablate_unit")]["reason"]
    ls = by_key[("hangs.ipynb", "least_squares")]  # checked before the hang: its logged verdict counts
    assert ls["status"] == "pass" and "it did not finish" in ls["reason"]


def test_an_edited_check_cell_is_reported_and_the_fake_verdict_ignored(graded):
    _, by_key, _ = graded
    row = by_key[("edited.ipynb", "least_squares")]
    assert row["status"] == "fail" and "not written yet" in row["reason"] and "check cell edited" in row["reason"]
    assert "check cell of least_squares edited" in by_key[("edited.ipynb", "(notebook)")]["reason"]


def test_a_crash_and_a_garbage_file_are_reported(graded):
    _, by_key, _ = graded
    assert by_key[("crashes.ipynb", "(notebook)")]["status"] == "error"
    assert "crashed" in by_key[("crashes.ipynb", "(notebook)")]["reason"]
    assert by_key[("crashes.ipynb", "least_squares")]["status"] == "pass"  # logged before the crash
    assert "not a readable notebook" in by_key[("garbage.ipynb", "(notebook)")]["reason"]


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    assert main(["grade", str(tmp_path), "--timeout", "0"]) == 2
    assert "--timeout must be a positive number" in capsys.readouterr().out
    assert main(["grade", str(tmp_path), "--reference", str(tmp_path / "nope.ipynb")]) == 2
    assert "no such reference notebook" in capsys.readouterr().out


def test_a_missing_file_an_unknown_notebook_and_a_broken_reference_are_rows(tmp_path):
    from mi_tutor.grade import grade

    unknown = tmp_path / "essay.ipynb"
    nbformat.write(_nb(["print(1)"]), str(unknown))
    out = tmp_path / "g.csv"
    grade([tmp_path / "missing.ipynb", unknown], out, timeout=5, echo=lambda *_: None)
    rows = list(csv.DictReader(out.open()))
    assert [(r["student_file"], r["status"]) for r in rows] == [("missing.ipynb", "error"), ("essay.ipynb", "error")]
    assert "no such file" in rows[0]["reason"] and "--reference" in rows[1]["reason"]
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{}")
    grade([unknown], out, timeout=5, reference=broken, echo=lambda *_: None)
    assert "cannot read the reference" in list(csv.DictReader(out.open()))[0]["reason"]


def test_an_endless_learner_function_is_stopped_inside_the_kernel(graded):
    _, by_key, rows = graded
    row = by_key[("loops.ipynb", "least_squares")]
    assert row["status"] == "fail" and "stopped after 2 s" in row["reason"]
    assert by_key[("loops.ipynb", "mean_ablate_unit")]["status"] == "pass"  # the rest of the notebook ran
    assert not [r for r in rows if r["student_file"] == "loops.ipynb" and r["exercise"] == "(notebook)"]
