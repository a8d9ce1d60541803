"""Student notebooks: generated from the sources, in sync, free of solutions, and friendly."""
from __future__ import annotations

import os

import nbformat
import pytest

from mi_tutor.notebooks import BEGIN, END, find_exercises, render_student, source_notebooks, student_path

SOURCES = source_notebooks()
IDS = [p.name for p in SOURCES]


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_student_version_is_in_sync(src):
    dst = student_path(src)
    assert dst.exists(), f"{dst} is missing: run `mi-tutor student`"
    assert dst.read_text() == render_student(src), f"{dst} is stale: run `mi-tutor student`"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_student_version_has_no_solution_text(src):
    nb = nbformat.read(str(student_path(src)), as_version=4)
    solutions = [e.solution_source for e in find_exercises(src)]
    for cell in nb.cells:
        assert BEGIN not in cell.source and END not in cell.source
        if cell.cell_type == "code":
            assert not cell.outputs, "student notebooks ship without outputs"
    # no line of any solution body survives in the student notebook
    text = "\n".join(c.source for c in nb.cells)
    for sol in solutions:
        body = sol.split(BEGIN, 1)[1].split(END, 1)[0]
        for line in body.splitlines():
            line = line.strip()
            if len(line) > 25 and not line.startswith("#"):
                assert line not in text, f"solution line leaked into the student notebook: {line!r}"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_student_notebook_runs_to_its_first_check_and_fails_friendly(src, browser_coverage):
    """Run a student notebook (lax: non-strict checks) up to its first exercise check."""
    from nbclient import NotebookClient

    if student_path(src).name in browser_coverage["student"]:
        pytest.skip("run to its first check once, in the real browser (test_browser.py)")

    nb = nbformat.read(str(student_path(src)), as_version=4)
    first_check = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "check(" in c.source), None)
    if first_check is None:
        pytest.skip("this notebook has no exercise")
    nb.cells = nb.cells[: first_check + 1]
    env = dict(os.environ, MI_TUTOR_STRICT="0", MI_TUTOR_MODEL="smollm2-135m")
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}})
    client.execute(env=env)
    outputs = nb.cells[first_check].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert not any(o.get("output_type") == "error" for o in outputs), "the check raised instead of printing"
    assert "not written yet" in text and "Traceback" not in text, text
