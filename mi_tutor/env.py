"""Where the course runs, and the few global settings every notebook needs.

`setup()` is the one line each notebook starts with. It:

- detects the platform (Colab, Binder or a local machine);
- turns telemetry off (wandb, Hugging Face) and keeps progress bars off stderr;
- stops circuitsvis from pinging google.com on every render;
- seeds Python, NumPy and torch;
- prints one line saying what it found.

Nothing here touches the network.
"""
from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Environment variables that keep third-party libraries quiet and offline by default.
QUIET_ENV = {
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "WANDB_SILENT": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DO_NOT_TRACK": "1",
}

#: Environment variable that makes exercise checks raise instead of print (set by the test suite).
STRICT_ENV = "MI_TUTOR_STRICT"


def quiet_environment() -> None:
    """Set the telemetry/progress-bar variables (without overriding a user's own choice)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    try:  # transformers logs "Loading weights" bars and advisories to stderr
        import transformers  # noqa: F401  (cheap: lazy module)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported by doctor()
        pass


def platform_name() -> str:
    """Return "colab", "binder" or "local"."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("BINDER_SERVICE_HOST") or os.environ.get("BINDER_REQUEST") or os.environ.get("BINDER_LAUNCH_HOST"):
        return "binder"
    return "local"


def cache_dir() -> Path:
    """The per-user cache (dequantised model weights live here). Override with MI_TUTOR_CACHE."""
    override = os.environ.get("MI_TUTOR_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mi_tutor", appauthor=False))


def strict_checks() -> bool:
    """True when exercise checks must raise (the test suite runs the source notebooks)."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "False")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch, and make torch deterministic on the CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def keep_circuitsvis_offline() -> None:
    """circuitsvis checks google.com (1 s timeout) on every render; make it use its bundled JS.

    Set MI_TUTOR_CIRCUITSVIS_CDN=1 to let it load the (smaller) CDN version instead.
    """
    if os.environ.get("MI_TUTOR_CIRCUITSVIS_CDN") == "1":
        return
    try:
        import circuitsvis.utils.render as render
    except Exception:  # pragma: no cover
        return
    render.internet_on = lambda: False


#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _glibc():
    """The C library if it is glibc (Linux), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc serve blocks >= `threshold_bytes` by mmap, so freeing a tensor returns its memory.

    By default glibc raises its mmap threshold (up to 32 MB) after the first large free, and
    later tensors of a few MB then live on a heap that is rarely given back: the process's
    resident memory only grows. `models.load_lm` calls this (a language model's activations
    are blocks of several MB). Measured: 0.78 GB -> 0.52 GB resident after a bridge forward over
    12,769 inputs; the price is page faults on every large allocation, which made notebook 01's
    small-model training loop ~60% slower, so `setup()` does not call it.
    Does nothing (returns False) where the C library is not glibc (macOS, Windows).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) \
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))


def trim_memory() -> bool:
    """Give memory that freed tensors left on glibc's heap back to the system (``malloc_trim``).

    Cheap (milliseconds) and safe to call between cells. A training loop allocates and
    frees the same few MB every step; glibc keeps them, and the next cell's peak then sits
    on top. Measured on notebook 01's live run: resident memory after training 0.71 GB,
    0.51 GB after this call. `setup()` calls it after every notebook cell. Returns False where the C library is not glibc.
    """
    import gc

    gc.collect()
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def _trim_after_each_cell() -> None:
    """In IPython/Jupyter, call `trim_memory` after every cell (once per kernel).

    Without it, what one cell freed stays on glibc's heap and the next cell's peak stacks
    on top. Measured on notebook 01 (nbval, quiet machine): peak 1.08 GB without, 1.04 GB with
    (before its all-pairs forward was chunked).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to hook
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "_mi_tutor_trims", False):
        return
    shell.events.register("post_run_cell", lambda *_: trim_memory())
    shell._mi_tutor_trims = True


def usable_cores() -> int:
    """CPU cores this process may use: the container's CPU quota if there is one (Binder,
    Docker), else the CPUs it is allowed to run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class Environment:
    """What `setup()` found."""

    platform: str
    torch_version: str
    threads: int
    cache: Path
    model_pin: str | None
    seed: int

    def __str__(self) -> str:
        pin = self.model_pin or "auto"
        return (
            f"mi_tutor ready: {self.platform}, torch {self.torch_version} on CPU x{self.threads}, "
            f"seed {self.seed}, language model: {pin}"
        )


def setup(seed: int = 0, *, threads: int | None = 1, quiet: bool = False) -> Environment:
    """Prepare a notebook: quiet, offline-by-default, seeded, one torch thread. Prints one line.

    Args:
        seed: seed for Python, NumPy and torch.
        threads: torch CPU threads (default 1; None keeps torch's default). One thread makes
            every number identical on every machine: torch's results depend on the thread
            count (measured: notebook 06's seeded toy reaches 0.89 "add" accuracy on one
            thread, 1.0 on two). It is also faster for the course's small models, and it
            cannot oversubscribe the shared cores of Binder or Colab.
        quiet: if True, print nothing.
    """
    quiet_environment()
    keep_circuitsvis_offline()
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)

    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (6.4, 3.6)})
    except Exception:  # pragma: no cover
        pass
    _trim_after_each_cell()
    env = Environment(
        platform=platform_name(),
        torch_version=torch.__version__.split("+")[0],
        threads=torch.get_num_threads(),
        cache=cache_dir(),
        model_pin=os.environ.get("MI_TUTOR_MODEL") or None,
        seed=seed,
    )
    if not quiet:
        print(env)
    return env
