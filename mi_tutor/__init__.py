"""mi_tutor: the instruments behind a notebook course in mechanistic interpretability.

Every notebook starts with::

    from mi_tutor import setup; env = setup()

and then uses the modules it needs (`models`, `training`, `exercises`, `widgets`, ...).
The top-level names below are imported lazily so that ``import mi_tutor`` stays fast.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .env import pin_cpu_kernels, setup

pin_cpu_kernels()  # before anything imports torch: the same numbers on every x86 CPU (env.KERNELS)

__version__ = "0.1.0"
#: Where the course lives (used by the Colab install line and badges).
REPO_URL = "https://github.com/mi-tutor/mi_tutor"

_LAZY = {
    "check": ("mi_tutor.exercises", "check"),
    "hints": ("mi_tutor.exercises", "hints"),
    "load_lm": ("mi_tutor.models", "load_lm"),
    "Explorer": ("mi_tutor.widgets", "Explorer"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'mi_tutor' has no attribute {name!r}")


__all__ = ["setup", "check", "hints", "load_lm", "Explorer", "__version__", "REPO_URL"]
