"""The one pattern every exercise check follows.

An `Exercise` knows:

- `reference`: the correct function (the lesson's own implementation);
- `cases(rng)`: fresh inputs, different from anything the notebook shows;
- `edge_cases()`: optional fixed inputs that separate right from almost-right (e.g. all-negative
  logits). They are checked too; the success line counts only the fresh random inputs, so that
  the notebooks' saved outputs ("correct on 3 fresh inputs") stay valid;
- `mistakes`: typical wrong implementations, each with a sentence naming the mistake;
- `hints`: shown, one at a time, when a check fails.

`check(name, fn)` runs the learner's `fn` and the reference on every case and compares them.
It prints one line on success; on failure it prints what differs, the likely mistake and a
hint. A mistake is named only when the learner's output equals that mistake's output on
every input. The learner's function runs on the original inputs, which are compared
afterwards: a function that changes its input in place is told so. It runs under a time
limit (`limits`). `check()` and `hints()` never dump a traceback, whatever they are given.
When ``MI_TUTOR_STRICT=1`` (the test suite running the source notebooks), a failure raises
`ExerciseFailed` instead, so a wrong reference solution breaks CI.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..env import strict_checks
from .compare import compare_values, is_trivial, same_inputs
from .limits import CheckTimeout, call_with_limit, is_library_file, timeout_seconds

Case = tuple[tuple, dict]

__all__ = [
    "REGISTRY",
    "Case",
    "CheckResult",
    "Exercise",
    "ExerciseFailed",
    "Mistake",
    "check",
    "compare_values",
    "describe_inputs",
    "hints",
    "register",
    "run_check",
]


class ExerciseFailed(AssertionError):
    """Raised by `check` in strict mode (the test suite)."""


@dataclass
class Mistake:
    """A typical wrong implementation and the sentence that names it."""

    description: str
    implementation: Callable[..., Any]


@dataclass
class Exercise:
    """An exercise's check: reference, fresh inputs, known mistakes and hints."""

    name: str
    notebook: str
    reference: Callable[..., Any]
    cases: Callable[[np.random.Generator], list[Case]]
    hints: list[str]
    mistakes: list[Mistake] = field(default_factory=list)
    rtol: float = 1e-4
    atol: float = 1e-5
    #: optional custom comparison: returns None when `got` is acceptable, else what is wrong
    compare: Callable[[Any, Any], str | None] | None = None
    seed: int = 12345
    #: fixed inputs that separate right from almost-right; checked after the fresh ones
    edge_cases: Callable[[], list[Case]] | None = None
    #: True when the task asks for a NEW tensor (a copy): the in-place message says so
    returns_copy: bool = False

    def fresh_cases(self) -> list[Case]:
        return self.cases(np.random.default_rng(self.seed))

    def all_cases(self) -> list[Case]:
        return self.fresh_cases() + (list(self.edge_cases()) if self.edge_cases is not None else [])

    def differ(self, got: Any, want: Any) -> str | None:
        if self.compare is not None:
            return self.compare(got, want)
        return compare_values(got, want, self.rtol, self.atol)

    def arg_names(self) -> list[str]:
        try:
            return [p.name for p in inspect.signature(self.reference).parameters.values()]
        except (TypeError, ValueError):
            return []


@dataclass
class CheckResult:
    """The outcome of a check: `passed`, and the message a learner sees.

    `kind` says what happened: "pass", "not_implemented", "dependency" (an earlier exercise the
    function calls is unfinished), "error", "timeout", "interrupted", "mutation", "type",
    "wrong" or "usage" (check() itself was called wrongly).
    """

    name: str
    passed: bool
    message: str
    mistake: str | None = None
    not_implemented: bool = False
    kind: str = "pass"

    def __bool__(self) -> bool:
        return self.passed


REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    """Add an exercise to the registry (names are unique across the series)."""
    if ex.name in REGISTRY and REGISTRY[ex.name] is not ex:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    REGISTRY[ex.name] = ex
    return ex


def describe_inputs(args: tuple, kwargs: dict) -> str:
    """A short description of a case's inputs (shapes, not values)."""

    def one(x: Any) -> str:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return f"{type(x).__name__}{tuple(x.shape)}"
        if isinstance(x, (int, float, str, bool)):
            return repr(x)
        if isinstance(x, (list, tuple)):
            return f"{type(x).__name__} of {len(x)}"
        return type(x).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------------------
# Finding the exercise (misspelled names get a suggestion)
# --------------------------------------------------------------------------------------


def _lookup(name: Any) -> tuple[Exercise | None, str | None]:
    """The exercise called `name`, or (None, a one-line message saying what to do)."""
    if callable(name) and not isinstance(name, str):
        return None, ("check() takes the exercise's NAME first, then your function: "
                      "check(\"exercise_name\", your_function)")
    if not isinstance(name, str):
        return None, f"the exercise name must be a string such as \"least_squares\", not a {type(name).__name__}"
    if name in REGISTRY:
        return REGISTRY[name], None
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in REGISTRY:
        return REGISTRY[key], None
    close = difflib.get_close_matches(key, list(REGISTRY), n=1, cutoff=0.5)
    if close:
        return None, f"no exercise called {name!r}. Did you mean {close[0]!r}?"
    return None, f"no exercise called {name!r}. Known exercises: {', '.join(sorted(REGISTRY))}."


def _usage(name: Any, text: str) -> CheckResult:
    label = name if isinstance(name, str) else "check"
    return CheckResult(str(label), False, f"✘ {label}: {text}", kind="usage")


# --------------------------------------------------------------------------------------
# Running a check
# --------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    try:
        text = str(e).strip()
    except Exception:
        text = ""
    return text.splitlines()[0][:200] if text else ""


def _learner_frames(fn: Callable, tb: Any) -> list[Any]:
    """The code objects of the traceback from `fn`'s own frame inwards (all frames if `fn` has no code)."""
    codes = []
    while tb is not None:
        codes.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    own = getattr(fn, "__code__", None)
    if own is not None and own in codes:
        return codes[codes.index(own):]
    return codes


def _not_implemented(ex: Exercise, fn: Callable, e: NotImplementedError, where: str) -> CheckResult:
    """A stub ("not written yet"), an unfinished earlier exercise it calls, or a library limitation."""
    name = ex.name
    codes = _learner_frames(fn, e.__traceback__)
    innermost = codes[-1] if codes else None
    if innermost is not None and is_library_file(innermost.co_filename):
        msg = _first_line(e)
        return _failure(ex, f"your function raised NotImplementedError inside `{innermost.co_name}`"
                            + (f": {msg}" if msg else "") + f" on inputs {where}", None, 0, "error")
    own = getattr(fn, "__code__", None)
    called = [c for c in codes[1:] if not c.co_name.startswith("<") and not is_library_file(c.co_filename)
              and "mi_tutor" not in c.co_filename] if own is not None and codes and codes[0] is own else []
    if not called:
        return CheckResult(
            name, False,
            f"`{name}` is not written yet: replace `raise NotImplementedError()` with your code, then run this cell again.",
            not_implemented=True, kind="not_implemented",
        )
    func = called[-1].co_name
    return CheckResult(
        name, False,
        f"✘ {name}: your function calls `{func}`, which is not written yet (it raises NotImplementedError): "
        f"finish `{func}` first (run its cell), or use mi_tutor's own version.",
        kind="dependency",
    )


def _run_learner(ex: Exercise, fn: Callable, args: tuple, kwargs: dict, hint_level: int) -> tuple[Any, CheckResult | None]:
    """Call `fn` on `args` (the originals) under the time limit; (result, None) or (None, failure)."""
    where = describe_inputs(args, kwargs)
    try:
        return call_with_limit(fn, args, kwargs), None
    except CheckTimeout:
        return None, _failure(ex, f"your function was stopped after {timeout_seconds():g} s on inputs {where} "
                                  f"(an endless loop? set MI_TUTOR_CHECK_TIMEOUT to allow more)", None, hint_level, "timeout")
    except KeyboardInterrupt:
        return None, CheckResult(ex.name, False, f"✘ {ex.name}: interrupted (Ctrl-C) while your function ran on "
                                                 f"inputs {where}; the check did not finish. Run the cell again.",
                                 kind="interrupted")
    except SystemExit:
        return None, _failure(ex, f"your function called exit() (SystemExit) on inputs {where}: "
                                  f"return a value instead", None, hint_level, "error")
    except NotImplementedError as e:
        return None, _not_implemented(ex, fn, e, where)
    except RecursionError:
        return None, _failure(ex, f"your function recursed too deeply (RecursionError) on inputs {where}",
                              None, hint_level, "error")
    except BaseException as e:  # the learner's bug: say what and where, without a traceback
        msg = _first_line(e)
        text = f"your function raised {type(e).__name__}" + (f": {msg}" if msg else "")
        return None, _failure(ex, f"{text} on inputs {where}", None, hint_level, "error")


def _safe_differ(ex: Exercise, got: Any, want: Any) -> str | None:
    try:
        return ex.differ(got, want)
    except Exception as e:  # noqa: BLE001 - a comparison must answer, never raise
        return f"the result could not be compared with the expected one ({type(e).__name__}: {_first_line(e)})"


def _changed_input(ex: Exercise, before: Case, after: Case) -> str | None:
    """The name of the first input the learner's function changed, or None."""
    names = ex.arg_names()
    (args_b, kw_b), (args_a, kw_a) = before, after
    for i, (b, a) in enumerate(zip(args_b, args_a)):
        if not same_inputs(b, a):
            return names[i] if i < len(names) else f"argument {i + 1}"
    for k in kw_b:
        if not same_inputs(kw_b[k], kw_a.get(k)):
            return k
    return None


def _matching_mistake(ex: Exercise, cases: list[Case], outputs: list[Any]) -> str | None:
    """The mistake whose output equals the learner's on EVERY case (and is not all zeros)."""
    for m in ex.mistakes:
        try:
            outs = [m.implementation(*copy.deepcopy(a), **copy.deepcopy(k)) for a, k in cases]
        except Exception:
            continue
        if all(is_trivial(o) for o in outs):
            continue  # an all-zero output names nothing in particular
        if all(_safe_differ(ex, g, o) is None for g, o in zip(outputs, outs)):
            return m.description
    return None


def _pick_hint(ex: Exercise, problem: str, hint_level: int, kind: str) -> str | None:
    if not ex.hints:
        return None
    if hint_level == 0:
        words = {"mutation": ("clone", "copy"), "shape": ("shape",)}.get(
            "shape" if " shape " in problem and kind == "wrong" else kind, ())
        for h in ex.hints:
            if any(w in h for w in words):
                return h
    return ex.hints[min(hint_level, len(ex.hints) - 1)]


def _failure(ex: Exercise, problem: str, mistake: str | None, hint_level: int, kind: str = "wrong") -> CheckResult:
    lines = [f"✘ {ex.name}: {problem}."]
    if mistake:
        lines.append(f"  Likely mistake: {mistake}")
    hint = _pick_hint(ex, problem, hint_level, kind)
    if hint:
        lines.append(f"  Hint: {hint}")
    return CheckResult(ex.name, False, "\n".join(lines), mistake=mistake, kind=kind)


def _valid_level(level: Any) -> bool:
    return isinstance(level, (int, np.integer)) and not isinstance(level, bool) and int(level) >= 0


def _run(name: Any, fn: Any, hint_level: Any) -> CheckResult:
    ex, problem = _lookup(name)
    if ex is None:
        return _usage(name, problem or "unknown exercise")
    if not _valid_level(hint_level):
        return _usage(ex.name, f"hint_level must be a whole number from 0 to {len(ex.hints) - 1}, not {hint_level!r}.")
    hint_level = int(hint_level)
    if not callable(fn):
        return CheckResult(ex.name, False, f"`{ex.name}`: expected a function, got a {type(fn).__name__}.", kind="usage")
    cases = ex.all_cases()
    n_fresh = len(ex.fresh_cases())
    outputs = []
    for args, kwargs in cases:
        mine = copy.deepcopy((args, kwargs))  # the learner's function gets these; `args` stay pristine
        got, failed = _run_learner(ex, fn, mine[0], mine[1], hint_level)
        if failed is not None:
            return failed
        changed = _changed_input(ex, (args, kwargs), mine)
        if changed is not None:
            ask = ("the task asks for a new tensor: copy first" if ex.returns_copy
                   else "leave the inputs as they are: work on a copy")
            desc = f"your function changed its input `{changed}` in place"
            return _failure(ex, f"{desc} (on inputs {describe_inputs(args, kwargs)}); {ask} "
                                f"(e.g. {changed}.clone()) and change the copy", desc, hint_level, "mutation")
        outputs.append(got)
    for (args, kwargs), got in zip(cases, outputs):
        want = ex.reference(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        problem = _safe_differ(ex, got, want)
        if problem:
            kind = "type" if any(w in problem for w in (" the task asks for ", "expected a", " is None: ")) else "wrong"
            mistake = _matching_mistake(ex, cases, outputs)
            return _failure(ex, f"on inputs {describe_inputs(args, kwargs)}, {problem}", mistake, hint_level, kind)
    return CheckResult(ex.name, True, f"✔ {ex.name}: correct on {n_fresh} fresh inputs.")


def run_check(name: str, fn: Callable[..., Any], hint_level: int = 0) -> CheckResult:
    """Run the check for exercise `name` on `fn` and return the result (prints nothing, never raises)."""
    try:
        return _run(name, fn, hint_level)
    except KeyboardInterrupt:
        label = name if isinstance(name, str) else "check"
        return CheckResult(str(label), False, f"✘ {label}: interrupted (Ctrl-C); the check did not finish. "
                                              f"Run the cell again.", kind="interrupted")
    except BaseException as e:  # noqa: BLE001 - a bug of the check itself: still one line
        label = name if isinstance(name, str) else "check"
        return CheckResult(str(label), False, f"✘ {label}: the check itself failed ({type(e).__name__}: "
                                              f"{_first_line(e)}); please report this to the course.", kind="error")


def check(name: str, fn: Callable[..., Any], hint_level: int = 0) -> None:
    """Check a learner's implementation of exercise `name`; print the verdict (one line on success).

    In strict mode (``MI_TUTOR_STRICT=1``, set by the test suite) a failure raises
    `ExerciseFailed`; otherwise it only prints, so a learner never sees a traceback. The one
    exception is an interrupt (the stop button, Ctrl-C): after its line, KeyboardInterrupt is
    raised again, so that Run All stops there as it does for any interrupted cell.
    Returns None so that a bare ``check(...)`` cell shows only the verdict; use `run_check`
    for the `CheckResult`.
    """
    result = run_check(name, fn, hint_level)
    _log_for_grading(result)
    if not result.passed and strict_checks():
        raise ExerciseFailed(result.message)
    print(result.message)
    if result.kind == "interrupted":
        # the learner pressed stop: after the one line, stop as Jupyter does, so that a
        # Run All halts here instead of going on to the next (perhaps long) cells
        raise KeyboardInterrupt from None


def _log_for_grading(result: CheckResult) -> None:
    """Append the verdict to $MI_TUTOR_GRADE_LOG (set by ``mi-tutor grade``); silent if it cannot."""
    path = os.environ.get("MI_TUTOR_GRADE_LOG")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": result.name, "passed": result.passed, "kind": result.kind,
                                "reason": result.message.splitlines()[0]}) + "\n")
    except OSError:
        pass


def hints(name: str, level: int | None = None) -> None:
    """Print every hint of exercise `name` (or only hint number `level`, counting from 1)."""
    ex, problem = _lookup(name)
    if ex is None:
        print(f"✘ hints: {problem}")
        return
    if level is None:
        for i, h in enumerate(ex.hints, 1):
            print(f"Hint {i}: {h}")
        return
    if not _valid_level(level) or not 1 <= int(level) <= len(ex.hints):
        print(f"✘ hints: {ex.name} has hints 1 to {len(ex.hints)}; hints({ex.name!r}) prints them all.")
        return
    print(f"Hint {int(level)}: {ex.hints[int(level) - 1]}")
