"""Bad input to check(), hints() and the timing/interrupt machinery: always one clear line, never a
raw traceback, never a hang, never a silent pass.

Parametrised over every exercise, so this file alone tries well over a hundred bad inputs; each
runs on the checks' tiny fresh inputs (no language model).
"""
from __future__ import annotations

import threading

import pytest
import torch

from mi_tutor import exercises
from mi_tutor.exercises import check, hints, run_check

NAMES = sorted(exercises.REGISTRY)


def _one_clear_failure(result, kind=None):
    assert not result.passed
    assert "Traceback" not in result.message
    assert result.message.startswith(("✘", "`")), result.message
    assert len(result.message.splitlines()) <= 3, result.message
    if kind is not None:
        assert result.kind == kind, result.message


def _meta_result(*args, **kwargs):
    return torch.empty(3, device="meta")


def _exits(*args, **kwargs):
    raise SystemExit(0)


def _interrupts(*args, **kwargs):
    raise KeyboardInterrupt


def _returns_none(*args, **kwargs):
    return None


def _returns_text(*args, **kwargs):
    return "0.5"


class _Nasty:
    """A result whose every comparison raises."""

    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    def __float__(self):
        raise RuntimeError("no converting me")

    __hash__ = object.__hash__


def _returns_nasty(*args, **kwargs):
    return _Nasty()


def _raises_value_error(*args, **kwargs):
    raise ValueError("shapes do not line up\nsecond line")


def _generator(*args, **kwargs):
    yield 1


BAD_FUNCTIONS = {
    "meta": (_meta_result, None), "exit": (_exits, "error"), "ctrl-c": (_interrupts, "interrupted"),
    "none": (_returns_none, "type"), "text": (_returns_text, "type"), "nasty": (_returns_nasty, None),
    "raises": (_raises_value_error, "error"), "generator": (_generator, "type"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FUNCTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_a_bad_learner_function_gets_one_line(name, bad):
    fn, kind = BAD_FUNCTIONS[bad]
    result = run_check(name, fn)
    _one_clear_failure(result, kind)
    if bad == "ctrl-c":
        assert "interrupted" in result.message
    if bad == "exit":
        assert "SystemExit" in result.message


def _typo(name: str) -> str:
    return name[:-2] + name[-1] if len(name) > 4 else name + "x"


@pytest.mark.parametrize("name", NAMES)
def test_a_misspelled_exercise_name_suggests_the_right_one(name):
    result = run_check(_typo(name), exercises.REGISTRY[name].reference)
    _one_clear_failure(result, "usage")
    assert f"Did you mean {name!r}?" in result.message


@pytest.mark.parametrize("args", [
    (None, lambda: 0), (42, lambda: 0), ("", lambda: 0), ("no_such_exercise_at_all_zzz", lambda: 0),
    ("least_squares", None), ("least_squares", "least_squares"), ("least_squares", 3),
], ids=["none-name", "int-name", "empty-name", "unknown", "fn-none", "fn-string", "fn-int"])
def test_check_called_wrongly_gets_one_line(args):
    _one_clear_failure(run_check(*args), "usage")


def test_swapped_arguments_are_explained():
    result = run_check(exercises.REGISTRY["least_squares"].reference, "least_squares")
    _one_clear_failure(result, "usage")
    assert "takes the exercise's NAME first" in result.message


@pytest.mark.parametrize("level", [-1, 1.5, "2", None, True, [0]])
def test_a_bad_hint_level_gets_one_line(level):
    result = run_check("least_squares", exercises.REGISTRY["least_squares"].reference, level)
    _one_clear_failure(result, "usage")
    assert "hint_level must be a whole number" in result.message


def test_a_large_hint_level_shows_the_last_hint():
    ex = exercises.REGISTRY["least_squares"]
    result = run_check("least_squares", lambda x, y: ex.reference(x, y) + 1, 99)
    assert ex.hints[-1] in result.message


@pytest.mark.parametrize("args", [("leas_squares",), (None,), (3,), ("least_squares", 0), ("least_squares", 9),
                                  ("least_squares", "1"), ("least_squares", -2)])
def test_hints_never_raise(args, capsys):
    hints(*args)
    out = capsys.readouterr().out
    assert out.startswith("✘ hints:") and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_hints_prints_one_or_all(capsys):
    hints("least_squares", 2)
    assert capsys.readouterr().out.startswith("Hint 2: ")
    hints("least_squares")
    assert len(capsys.readouterr().out.strip().splitlines()) == len(exercises.REGISTRY["least_squares"].hints)


@pytest.mark.parametrize("name", NAMES[::6])
def test_an_endless_loop_is_stopped(name, monkeypatch):
    monkeypatch.setenv("MI_TUTOR_CHECK_TIMEOUT", "0.3")

    def forever(*args, **kwargs):
        while True:
            try:
                pass
            except Exception:  # a learner's catch-all must not swallow the limit
                pass
    result = run_check(name, forever)
    _one_clear_failure(result, "timeout")
    assert "stopped after 0.3 s" in result.message


def test_the_time_limit_works_outside_the_main_thread(monkeypatch):
    """Where no alarm signal can be used (a worker thread, Windows), a trace-based deadline stops the loop."""
    monkeypatch.setenv("MI_TUTOR_CHECK_TIMEOUT", "0.3")
    box = {}

    def forever(x, y):
        n = 0
        while True:
            n += 1

    worker = threading.Thread(target=lambda: box.setdefault("r", run_check("least_squares", forever)))
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    _one_clear_failure(box["r"], "timeout")


def test_no_alarm_is_left_behind(monkeypatch):
    import signal

    monkeypatch.setenv("MI_TUTOR_CHECK_TIMEOUT", "0.3")
    before = signal.getsignal(signal.SIGALRM)
    run_check("least_squares", exercises.REGISTRY["least_squares"].reference)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_outer_alarm_is_put_back(monkeypatch):
    import signal

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 60)
        run_check("least_squares", exercises.REGISTRY["least_squares"].reference)
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < remaining <= 60 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_solution_calling_an_unfinished_earlier_exercise_names_that_function():
    def fourier_basis_mine(p):
        raise NotImplementedError()

    def frequency_shares(W, p):
        b = fourier_basis_mine(p)
        return b

    result = run_check("frequency_shares", frequency_shares)
    _one_clear_failure(result, "dependency")
    assert not result.not_implemented
    assert "`fourier_basis_mine`, which is not written yet" in result.message


def test_the_stub_itself_is_not_written_yet():
    def least_squares(x, y):
        raise NotImplementedError()
    result = run_check("least_squares", least_squares)
    assert result.not_implemented and "not written yet" in result.message


def test_a_library_not_implemented_error_is_an_error_not_a_stub():
    result = run_check("mean_ablate_unit", lambda hidden, unit: hidden.to("meta").clone()[:, unit].mean().item())
    _one_clear_failure(result)
    assert not result.not_implemented


def test_check_prints_one_line_and_raises_only_in_strict_mode(monkeypatch, capsys):
    monkeypatch.delenv("MI_TUTOR_STRICT", raising=False)
    check("leas_squares", print)
    assert capsys.readouterr().out.startswith("✘ leas_squares: no exercise called")
    monkeypatch.setenv("MI_TUTOR_STRICT", "1")
    with pytest.raises(exercises.ExerciseFailed):
        check("least_squares", _returns_none)


def test_an_interrupt_prints_its_line_then_stops_the_run_like_any_interrupted_cell(capsys, monkeypatch):
    from mi_tutor.exercises import check

    monkeypatch.delenv("MI_TUTOR_STRICT", raising=False)
    with pytest.raises(KeyboardInterrupt):
        check(NAMES[0], _interrupts)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "interrupted (Ctrl-C)" in out and "Traceback" not in out
