"""Running a learner's function safely: a time limit, and finding who raised NotImplementedError.

The time limit is a signal-based alarm (``SIGALRM``) when we are in the main thread of a
POSIX process (a Jupyter kernel runs cells there), and a trace-function deadline elsewhere
(Windows, or a check called from a worker thread). Neither starts a thread, so nothing is
left running when the limit trips.

Why 10 seconds: every case of every exercise is tiny (at most a few thousand numbers);
the references take milliseconds and a pure-Python triple loop over the largest case takes
well under a second on a slow Colab CPU. Ten seconds is a >10x margin for a slow laptop
and for torch's first-call overhead, yet short enough that an infinite loop ends the cell
quickly. ``MI_TUTOR_CHECK_TIMEOUT`` (seconds) overrides it.

Limits: the alarm interrupts Python code and sleeps, but a single long C call (one huge torch
op) finishes first; the trace fallback only sees Python lines, so a ``time.sleep`` there runs out.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds a learner's function may run on one input before the check stops it.
DEFAULT_TIMEOUT = 10.0
TIMEOUT_ENV = "MI_TUTOR_CHECK_TIMEOUT"


class CheckTimeout(BaseException):
    """Raised inside the learner's function when it runs past the limit.

    A BaseException, so that a learner's ``except Exception:`` cannot swallow it.
    """


def timeout_seconds() -> float:
    """The per-call limit: ``MI_TUTOR_CHECK_TIMEOUT`` if it is a positive number, else 10 s."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value < 1e6 else DEFAULT_TIMEOUT


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `CheckTimeout` in the running code once `seconds` have passed."""
    if _can_use_alarm():
        def on_alarm(signum, frame):
            raise CheckTimeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        started = time.monotonic()
        outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer > 0:  # someone else's alarm (e.g. pytest-timeout) was pending: put it back
                signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3), interval)
        return
    deadline = time.monotonic() + seconds
    old_trace = sys.gettrace()

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise CheckTimeout()
        return tracer

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(old_trace)


def call_with_limit(fn: Callable, args: tuple, kwargs: dict, seconds: float | None = None):
    """``fn(*args, **kwargs)`` under `time_limit` (raises `CheckTimeout` when it trips)."""
    with time_limit(seconds if seconds is not None else timeout_seconds()):
        return fn(*args, **kwargs)


_LIBRARY_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep,
                    os.sep + "lib" + os.sep + "python")


def is_library_file(filename: str) -> bool:
    """True for code installed as a package (torch, numpy, ...), False for notebook/learner code."""
    return any(m in filename for m in _LIBRARY_MARKERS) and "mi_tutor" not in filename
