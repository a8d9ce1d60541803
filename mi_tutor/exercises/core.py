"""The one pattern every exercise check follows.

An `Exercise` knows:

- `reference`: the correct function (the lesson's own implementation);
- `cases(rng)`: fresh inputs, different from anything the notebook shows;
- `mistakes`: typical wrong implementations, each with a sentence naming the mistake;
- `hints`: shown, one at a time, when a check fails.

`check(name, fn)` runs the learner's `fn` and the reference on every case and compares them.
It prints one line on success; on failure it prints what differs, the likely mistake (if
the learner's output matches one of the known mistakes) and a hint. It never dumps a
traceback. When ``MI_TUTOR_STRICT=1`` (the test suite running the source notebooks), a
failure raises `ExerciseFailed` instead, so a wrong reference solution breaks CI.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..env import strict_checks

Case = tuple[tuple, dict]


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

    def fresh_cases(self) -> list[Case]:
        return self.cases(np.random.default_rng(self.seed))

    def differ(self, got: Any, want: Any) -> str | None:
        if self.compare is not None:
            return self.compare(got, want)
        return compare_values(got, want, self.rtol, self.atol)


@dataclass
class CheckResult:
    """The outcome of a check: `passed`, and the message a learner sees."""

    name: str
    passed: bool
    message: str
    mistake: str | None = None
    not_implemented: bool = False

    def __bool__(self) -> bool:
        return self.passed


REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> Exercise:
    """Add an exercise to the registry (names are unique across the series)."""
    if ex.name in REGISTRY and REGISTRY[ex.name] is not ex:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    REGISTRY[ex.name] = ex
    return ex


# --------------------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------------------


def _as_array(x: Any) -> np.ndarray | None:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    return None


def compare_values(got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-5, where: str = "the result") -> str | None:
    """None if `got` matches `want` (recursively, within tolerance), else a sentence saying how it differs."""
    want_arr = _as_array(want)
    if want_arr is not None:
        got_arr = _as_array(got)
        if got_arr is None:
            if isinstance(got, (list, tuple)):
                try:
                    got_arr = np.asarray(got, dtype=float)
                except Exception:
                    got_arr = None
            if got_arr is None:
                kind = "torch.Tensor" if isinstance(want, torch.Tensor) else "numpy array"
                return f"{where} is a {type(got).__name__}, expected a {kind}"
        if got_arr.shape != want_arr.shape:
            return f"{where} has shape {tuple(got_arr.shape)}, expected {tuple(want_arr.shape)}"
        if want_arr.dtype.kind in "biu" and got_arr.dtype.kind not in "biu":
            if not np.allclose(got_arr, want_arr):
                return f"{where} has the wrong values (expected integers)"
            return None
        g = got_arr.astype(float)
        w = want_arr.astype(float)
        if np.isnan(g).any() and not np.isnan(w).any():
            return f"{where} contains NaN"
        if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
            diff = np.nanmax(np.abs(g - w)) if g.size else 0.0
            return f"{where} has the right shape but wrong values (largest difference {diff:.3g})"
        return None
    if isinstance(want, bool) or isinstance(want, (str, type(None))):
        return None if got == want else f"{where} is {got!r}, expected {want!r}"
    if isinstance(want, (int, float, np.floating, np.integer)):
        try:
            g = float(got.item() if hasattr(got, "item") else got)
        except Exception:
            return f"{where} is a {type(got).__name__}, expected a number"
        w = float(want)
        if math.isnan(g) and not math.isnan(w):
            return f"{where} is NaN"
        if not math.isclose(g, w, rel_tol=rtol, abs_tol=atol):
            return f"{where} is {g:.6g}, expected {w:.6g}"
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{where} is a {type(got).__name__}, expected a dict"
        if set(got) != set(want):
            return f"{where} has keys {sorted(map(str, got))}, expected {sorted(map(str, want))}"
        for k in want:
            msg = compare_values(got[k], want[k], rtol, atol, f"{where}[{k!r}]")
            if msg:
                return msg
        return None
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{where} is a {type(got).__name__}, expected a {type(want).__name__}"
        if len(got) != len(want):
            return f"{where} has {len(got)} items, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare_values(g, w, rtol, atol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    return None if got == want else f"{where} is {got!r}, expected {want!r}"


def describe_inputs(args: tuple, kwargs: dict) -> str:
    """A short description of a case's inputs (shapes, not values)."""

    def one(x: Any) -> str:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            return f"{type(x).__name__}{tuple(x.shape)}"
        if isinstance(x, (int, float, str, bool)):
            return repr(x)
        if isinstance(x, (list, tuple)):
            return f"{type(x).__name__} of {len(x)}"
        return type(x).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------------------
# Running a check
# --------------------------------------------------------------------------------------


def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    with torch.no_grad() if not torch.is_grad_enabled() else _nullcontext():
        return fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_check(name: str, fn: Callable[..., Any], hint_level: int = 0) -> CheckResult:
    """Run the check for exercise `name` on `fn` and return the result (prints nothing)."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise KeyError(f"No exercise called {name!r}. Known exercises: {known}.")
    ex = REGISTRY[name]
    if not callable(fn):
        return CheckResult(name, False, f"`{name}`: expected a function, got a {type(fn).__name__}.")
    cases = ex.fresh_cases()
    for i, (args, kwargs) in enumerate(cases):
        want = _call(ex.reference, args, kwargs)
        try:
            got = _call(fn, args, kwargs)
        except NotImplementedError:
            return CheckResult(
                name, False,
                f"`{name}` is not written yet: replace `raise NotImplementedError()` with your code, then run this cell again.",
                not_implemented=True,
            )
        except Exception as e:  # the learner's bug: say what and where, without a traceback
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            text = f"your function raised {type(e).__name__}" + (f": {msg[:200]}" if msg else "")
            return _failure(ex, name, f"{text} on inputs {describe_inputs(args, kwargs)}", None, hint_level)
        problem = ex.differ(got, want)
        if problem:
            mistake = None
            for m in ex.mistakes:
                try:
                    if ex.differ(got, _call(m.implementation, args, kwargs)) is None:
                        mistake = m.description
                        break
                except Exception:
                    continue
            return _failure(ex, name, f"on inputs {describe_inputs(args, kwargs)}, {problem}", mistake, hint_level)
    return CheckResult(name, True, f"✔ {name}: correct on {len(cases)} fresh inputs.")


def _failure(ex: Exercise, name: str, problem: str, mistake: str | None, hint_level: int) -> CheckResult:
    lines = [f"✘ {name}: {problem}."]
    if mistake:
        lines.append(f"  Likely mistake: {mistake}")
    if ex.hints:
        lines.append(f"  Hint: {ex.hints[min(hint_level, len(ex.hints) - 1)]}")
    return CheckResult(name, False, "\n".join(lines), mistake=mistake)


def check(name: str, fn: Callable[..., Any], hint_level: int = 0) -> None:
    """Check a learner's implementation of exercise `name`; print the verdict (one line on success).

    In strict mode (``MI_TUTOR_STRICT=1``, set by the test suite) a failure raises
    `ExerciseFailed`; otherwise it only prints, so a learner never sees a traceback.
    Returns None so that a bare ``check(...)`` cell shows only the verdict; use `run_check`
    for the `CheckResult`.
    """
    result = run_check(name, fn, hint_level)
    if not result.passed and strict_checks():
        raise ExerciseFailed(result.message)
    print(result.message)


def hints(name: str) -> None:
    """Print every hint of exercise `name`."""
    for i, h in enumerate(REGISTRY[name].hints, 1):
        print(f"Hint {i}: {h}")
