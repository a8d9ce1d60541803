"""Exercise checks. `check("name", fn)` is what a notebook calls; see `core` for the pattern.

Each notebook's exercises live in their own module (`nb00`, `nb01`, ...), imported here so
that every check is registered as soon as `mi_tutor.exercises` is imported.
"""
from __future__ import annotations

import importlib
import pkgutil

from .core import REGISTRY, CheckResult, Exercise, ExerciseFailed, Mistake, check, compare_values, hints, register, run_check

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name.startswith("nb"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["REGISTRY", "CheckResult", "Exercise", "ExerciseFailed", "Mistake", "check", "compare_values",
           "hints", "register", "run_check"]
