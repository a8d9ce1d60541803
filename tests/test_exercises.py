"""Every exercise check passes on the notebook's solution and fails on its stub and on typical mistakes."""
from __future__ import annotations

import pytest

from mi_tutor import exercises
from mi_tutor.notebooks import defined_functions, find_exercises, run_cell_source, source_notebooks, stub_solution

EXERCISES = [ex for nb in source_notebooks() for ex in find_exercises(nb)]
IDS = [f"{e.notebook.name}:{e.check_name}" for e in EXERCISES]


def test_every_check_in_a_notebook_is_registered_and_vice_versa():
    in_notebooks = {e.check_name for e in EXERCISES}
    registered = set(exercises.REGISTRY)
    assert in_notebooks <= registered, f"checks called but not registered: {in_notebooks - registered}"
    assert registered <= in_notebooks, f"registered but used by no notebook: {registered - in_notebooks}"


@pytest.mark.parametrize("ex", EXERCISES, ids=IDS)
def test_solution_passes(ex):
    assert ex.function_name in defined_functions(ex.solution_source), (
        "the check cell names a function the solution cell does not define")
    ns = run_cell_source(ex.solution_source)
    result = exercises.run_check(ex.check_name, ns[ex.function_name])
    assert result.passed, result.message


@pytest.mark.parametrize("ex", EXERCISES, ids=IDS)
def test_stub_fails_with_not_written_message(ex):
    ns = run_cell_source(stub_solution(ex.solution_source))
    result = exercises.run_check(ex.check_name, ns[ex.function_name])
    assert not result.passed
    assert result.not_implemented, result.message
    assert "not written yet" in result.message and "Traceback" not in result.message


@pytest.mark.parametrize("name", sorted(exercises.REGISTRY))
def test_registered_exercise_is_complete(name):
    ex = exercises.REGISTRY[name]
    assert ex.hints, "an exercise needs hints"
    assert ex.mistakes, "an exercise needs at least one typical mistake"
    assert len(ex.fresh_cases()) >= 2, "check on at least two fresh inputs"
    assert exercises.run_check(name, ex.reference).passed


@pytest.mark.parametrize("name", sorted(exercises.REGISTRY))
def test_typical_mistakes_fail_and_are_named(name):
    ex = exercises.REGISTRY[name]
    for mistake in ex.mistakes:
        result = exercises.run_check(name, mistake.implementation)
        assert not result.passed, f"the check accepts the mistake: {mistake.description}"
        assert result.mistake == mistake.description, (
            f"the check failed but did not name the mistake {mistake.description!r}: {result.message}")
        assert "Hint:" in result.message
