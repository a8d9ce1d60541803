"""Comparing a learner's result with the reference: types first, then shapes, then values.

Every function here returns None when the values agree, else one sentence saying what
differs (where, by how much). None of them raises on odd input: a learner's result can be
anything (a string, a meta tensor, a generator), and the check must still answer in a line.

Types are strict where the task names one: if the reference returns a float32 torch
tensor, a numpy array, a list, a float64 or a complex tensor is refused with a sentence
that says how to convert. Python numbers are accepted where the reference returns a float
(any real number, including a 0-d real tensor), but not strings, booleans or complex numbers.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch


def _tensor_type_problem(got: Any, want: torch.Tensor, where: str) -> str | None:
    if not isinstance(got, torch.Tensor):
        if isinstance(got, np.ndarray):
            return f"{where} is a numpy array; the task asks for a torch.Tensor (torch.as_tensor(...) converts it)"
        if want.dim() == 0 and isinstance(got, numbers.Number) and not isinstance(got, bool):
            return (f"{where} is a Python {type(got).__name__}; the task asks for a scalar torch.Tensor "
                    f"(do not call .item() or float())")
        return f"{where} is a {type(got).__name__}, expected a torch.Tensor"
    if got.device.type == "meta":
        return f"{where} is a meta tensor (it has a shape but no values): compute it from the inputs"
    if got.is_complex() and not want.is_complex():
        return f"{where} is a complex tensor ({got.dtype}); the task asks for a real {want.dtype} tensor"
    if want.dtype == torch.bool:
        if got.dtype != torch.bool:
            return f"{where} has dtype {got.dtype}; the task asks for a boolean tensor"
        return None
    if not want.is_floating_point():  # integer results: indices, counts
        if got.is_floating_point() or got.dtype == torch.bool:
            return f"{where} has dtype {got.dtype}; the task asks for integers (indices): a torch.long tensor"
        return None
    if not got.is_floating_point():
        return f"{where} has dtype {got.dtype}; the task asks for a {want.dtype} tensor (floating point)"
    if got.dtype != want.dtype:
        return (f"{where} has dtype {got.dtype}; the task asks for {want.dtype} (like the inputs): "
                f"avoid .double()/.half(), or convert with .to({want.dtype})")
    return None


def _array_type_problem(got: Any, want: np.ndarray, where: str) -> str | None:
    if not isinstance(got, np.ndarray):
        if isinstance(got, torch.Tensor):
            return f"{where} is a torch.Tensor; the task asks for a numpy array (.detach().numpy() converts it)"
        return f"{where} is a {type(got).__name__}, expected a numpy array"
    if got.dtype.kind == "c" and want.dtype.kind != "c":
        return f"{where} is a complex array; the task asks for a real {want.dtype} array"
    if want.dtype.kind == "f":
        if got.dtype.kind not in "f":
            return f"{where} has dtype {got.dtype}; the task asks for a {want.dtype} array"
        if got.dtype != want.dtype:
            return f"{where} has dtype {got.dtype}; the task asks for {want.dtype}: use .astype(np.{want.dtype})"
    elif want.dtype.kind in "iu" and got.dtype.kind not in "iu":
        return f"{where} has dtype {got.dtype}; the task asks for an integer array"
    return None


def _index(flat: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    return " at index [" + ", ".join(str(int(i)) for i in np.unravel_index(flat, shape)) + "]"


def _value_problem(g: np.ndarray, w: np.ndarray, rtol: float, atol: float, where: str) -> str | None:
    if g.shape != w.shape:
        return f"{where} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
    if w.dtype.kind in "biu":
        bad = g != w
        if not bad.any():
            return None
        first = int(np.flatnonzero(bad)[0])
        return (f"{where} has the wrong values (expected integers){_index(first, w.shape)}: "
                f"{g.flat[first]} instead of {w.flat[first]} ({int(bad.sum())} of {w.size} entries differ)")
    g = g.astype(float)
    w = w.astype(float)
    if np.isnan(g).any() and not np.isnan(w).any():
        first = int(np.flatnonzero(np.isnan(g))[0])
        return f"{where} contains NaN{_index(first, w.shape)} (a division by zero, or log of 0?)"
    if np.isinf(g).any() and not np.isinf(w).any():
        first = int(np.flatnonzero(np.isinf(g))[0])
        return f"{where} contains inf{_index(first, w.shape)}"
    close = np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    if close.all():
        return None
    err = np.where(close, 0.0, np.abs(np.nan_to_num(g - w, nan=np.inf)))
    worst = int(np.argmax(err))
    n_bad = int((~close).sum())
    return (f"{where} has the right shape but wrong values (largest difference {err.flat[worst]:.3g}"
            f"{_index(worst, w.shape)}: {g.flat[worst]:.6g} instead of {w.flat[worst]:.6g}; "
            f"{n_bad} of {w.size} entries differ)")


def _real_number(got: Any) -> float | None:
    """`got` as a float if it is one real number (Python, numpy or a 1-element real tensor), else None."""
    if isinstance(got, (bool, np.bool_, str, bytes)):
        return None
    if isinstance(got, torch.Tensor):
        if got.numel() != 1 or got.is_complex() or got.device.type == "meta" or got.dtype == torch.bool:
            return None
        return float(got.detach().cpu().reshape(()).item())
    if isinstance(got, np.ndarray):
        if got.size != 1 or got.dtype.kind not in "iuf":
            return None
        return float(got.reshape(()))
    if isinstance(got, numbers.Real):
        return float(got)
    return None


def compare_values(got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-5, where: str = "the result") -> str | None:
    """None if `got` matches `want` (recursively, within tolerance), else a sentence saying how it differs."""
    if got is None and want is not None:
        return f"{where} is None: did the function forget to `return` it?"
    if isinstance(want, torch.Tensor):
        problem = _tensor_type_problem(got, want, where)
        if problem:
            return problem
        g = got.detach().cpu()
        w = want.detach().cpu()
        g = g.double().numpy() if g.is_floating_point() else g.numpy()
        w = w.double().numpy() if w.is_floating_point() else w.numpy()
        return _value_problem(g, w, rtol, atol, where)
    if isinstance(want, np.ndarray):
        return _array_type_problem(got, want, where) or _value_problem(np.asarray(got), want, rtol, atol, where)
    if isinstance(want, (bool, np.bool_, str, type(None))):
        return None if (type(got) is type(want) or isinstance(want, np.bool_)) and got == want \
            else f"{where} is {_short(got)}, expected {want!r}"
    if isinstance(want, (numbers.Real, np.floating, np.integer)):
        g = _real_number(got)
        if g is None:
            return f"{where} is {_short(got)}; the task asks for one real number (a float)"
        w = float(want)
        if math.isnan(g) and not math.isnan(w):
            return f"{where} is NaN (a division by zero?)"
        if math.isnan(w) and math.isnan(g):
            return None
        if not math.isclose(g, w, rel_tol=rtol, abs_tol=atol):
            return f"{where} is {g:.6g}, expected {w:.6g} (off by {abs(g - w):.3g})"
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
            return f"{where} is a {type(got).__name__}, expected a {type(want).__name__} of {len(want)} items"
        if len(got) != len(want):
            return f"{where} has {len(got)} items, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            msg = compare_values(g, w, rtol, atol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    try:
        return None if bool(got == want) else f"{where} is {_short(got)}, expected {want!r}"
    except Exception:
        return f"{where} is {_short(got)}, expected {want!r}"


def _short(x: Any) -> str:
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {type(x).__name__} of shape {tuple(x.shape)}"
    try:
        text = repr(x)
    except Exception:
        text = f"a {type(x).__name__}"
    return text if len(text) <= 60 and not text.startswith("<") else f"a {type(x).__name__}"


def same_inputs(before: Any, after: Any) -> bool:
    """True if `after` still equals `before` exactly (NaN equal to NaN): used to detect in-place changes."""
    try:
        if isinstance(before, torch.Tensor):
            if not isinstance(after, torch.Tensor) or after.shape != before.shape or after.dtype != before.dtype:
                return False
            if before.device.type == "meta":
                return True
            eq = after == before
            if before.is_floating_point() or before.is_complex():
                eq = eq | (torch.isnan(after) & torch.isnan(before))
            return bool(eq.all())
        if isinstance(before, np.ndarray):
            return isinstance(after, np.ndarray) and after.shape == before.shape and \
                bool(np.array_equal(after, before, equal_nan=before.dtype.kind in "fc"))
        if isinstance(before, dict):
            return isinstance(after, dict) and set(after) == set(before) and all(same_inputs(before[k], after[k]) for k in before)
        if isinstance(before, (list, tuple)):
            return isinstance(after, (list, tuple)) and len(after) == len(before) and \
                all(same_inputs(b, a) for b, a in zip(before, after))
        return bool(before == after)
    except Exception:
        return False


def is_trivial(x: Any) -> bool:
    """True if `x` holds no information: all zeros (a tensor/array, or each item of a tuple)."""
    try:
        if isinstance(x, torch.Tensor):
            return x.device.type != "meta" and x.numel() > 0 and bool((x == 0).all())
        if isinstance(x, np.ndarray):
            return x.size > 0 and bool((x == 0).all())
        if isinstance(x, (list, tuple)) and x:
            return all(is_trivial(i) for i in x)
        if isinstance(x, numbers.Real) and not isinstance(x, bool):
            return float(x) == 0.0
    except Exception:
        return False
    return False
