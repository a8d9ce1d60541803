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

import contextlib
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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

#: torch's kernel set on x86. Its AVX-512 kernels round differently from its AVX2 ones, and a
#: long training run amplifies the last bit: on an AVX-512 machine notebook 01's twin-trap
#: accuracy came out 0.36 instead of 0.33 and notebook 02's steepest loss fall 1.57 instead
#: of 1.60 nats (measured). Every x86 CPU of the last decade has AVX2, so asking for it gives
#: the same numbers on every one of them (ARM machines run other kernels and may differ).
KERNELS_ENV, KERNELS = "ATEN_CPU_CAPABILITY", "avx2"

#: The same for Intel MKL, which does torch's matrix products and linear algebra on x86 and
#: picks its own code path per CPU: with ATen pinned but MKL free, an AVX-512 Xeon named
#: another head in notebook 02 (L1H0 for L1H1) and grokked notebook 01 ten steps earlier
#: than the machine the outputs were made on (measured). MKL's conditional numerical
#: reproducibility mode on its AVX2 branch gives the same results on every CPU with AVX2;
#: its STRICT form also makes the matrix products independent of the thread count (measured:
#: without STRICT, 300 steps of notebook 01's training on two threads ended with other weights
#: than on one; with it, bitwise the same weights, in two thirds of the time).
MKL_ENV, MKL_KERNELS = "MKL_CBWR", "AVX2,STRICT"


def _x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def pin_cpu_kernels() -> None:
    """Ask torch and MKL for their AVX2 kernels on x86 (see `KERNELS`, `MKL_KERNELS`), unless the
    user chose a kernel set. Effective only before torch runs its first operation; `import
    mi_tutor` does it."""
    if _x86():
        os.environ.setdefault(KERNELS_ENV, KERNELS)
        os.environ.setdefault(MKL_ENV, MKL_KERNELS)


def cpu_kernels_note() -> str | None:
    """One line when torch runs other x86 kernels than the committed outputs were made with, else None."""
    if not _x86():
        return None
    import torch

    running = torch.backends.cpu.get_cpu_capability()
    if running.upper() == KERNELS.upper() or running.upper() in ("DEFAULT", "NO AVX"):
        return None
    return (f"[mi_tutor] note: torch runs its {running} kernels, so numbers can differ from the saved outputs in the "
            f"last digits. For identical numbers, restart the kernel and run the setup cell before anything imports torch "
            f"(or set {KERNELS_ENV}={KERNELS}).")


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


_returned_from: int | None = None  # the threshold `return_freed_memory` set, if it did
_reuse_depth = 0  # how many `reuse_freed_memory` blocks are open


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
    global _returned_from
    libc = _glibc()
    ok = libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) \
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
    _returned_from = threshold_bytes if ok else _returned_from
    return ok


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside this block, glibc keeps freed blocks (up to 32 MB) for the next allocation; on leaving,
    `return_freed_memory`'s threshold is back and the freed memory goes back to the system.

    For loops of large same-sized products (the fast patching engine): with blocks from mmap,
    every new output paid page faults on first touch. Measured on all-heads patching of SmolLM2 at
    one thread: 4.14 s -> 3.82 s, bitwise the same effects. Nested blocks leave it to the outermost.
    Does nothing if `return_freed_memory` was not called (glibc's own dynamic threshold already
    reuses) or the C library is not glibc.
    """
    global _reuse_depth
    libc = _glibc() if _returned_from is not None and not _reuse_depth else None
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _reuse_depth += 1
    try:
        yield
    finally:
        _reuse_depth -= 1
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _returned_from)
            libc.mallopt(_M_TRIM_THRESHOLD, _returned_from)
            libc.malloc_trim(0)


def trim_memory(collect: bool = True) -> bool:
    """Give memory that freed tensors left on glibc's heap back to the system (``malloc_trim``).

    Cheap (milliseconds) and safe to call between cells. A training loop allocates and
    frees the same few MB every step; glibc keeps them, and the next cell's peak then sits
    on top. Measured on notebook 01's live run: resident memory after training 0.71 GB,
    0.51 GB after this call. `setup()` calls it after every notebook cell. Inside a loop that
    makes a block of a few MB per step and keeps a few numbers from it, pass ``collect=False``
    (no garbage collection: the tensors are already freed). Returns False where the C library is not glibc.
    """
    import gc

    if collect:
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


THREADS_ENV = "MI_TUTOR_THREADS"


def _busy_cores(sample_s: float) -> float | None:
    """Cores kept busy by all processes over `sample_s` seconds, from /proc/stat (Linux);
    None where that cannot be read. This process sleeps while sampling, so it counts ~0."""
    def read() -> tuple[int, int]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields[:8]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return sum(ticks), idle

    try:
        total0, idle0 = read()
        time.sleep(sample_s)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return None
    cpus = os.cpu_count() or 1
    return cpus * (1.0 - (idle1 - idle0) / elapsed)


def available_cores(limit: int | None = None, sample_s: float = 0.3) -> int:
    """Cores this process can actually get now: `usable_cores()` (quota, affinity) less the
    cores other processes keep busy, at least 1 and at most `limit`.

    A second torch thread on a core that a neighbour already keeps busy makes both slower
    (measured: notebook 01 took 8.5x its quiet time at load 4-5 on two cores), so callers
    that would use several threads ask this first. ``MI_TUTOR_THREADS`` overrides it.
    Busy cores come from /proc/stat over `sample_s` seconds, else from the 1-minute load
    average (macOS); results must not depend on the answer (callers use deterministic kernels).
    """
    pinned = os.environ.get(THREADS_ENV, "").strip()
    if pinned:
        try:
            n = int(pinned)
            if n < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={pinned!r}: set it to a whole number of threads >= 1, or unset it") from None
        return n if limit is None else min(n, limit)
    cores = usable_cores()
    if cores > 1:
        busy = _busy_cores(sample_s)
        if busy is None:
            try:
                busy = os.getloadavg()[0]
            except (OSError, AttributeError):
                busy = 0.0
        cores = max(1, min(cores, int(cores - busy + 0.5)))
    return cores if limit is None else max(1, min(cores, limit))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored afterwards): tiny models train faster
    that way, and a batch-sized sum reduced on one thread does not depend on the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
            count (measured once: notebook 06's seeded toy reached 0.89 "add" accuracy on one
            thread, 1.0 on two; before the MKL pin, SmolLM2's batched all-heads patching
            differed by up to 3e-5 in 261 of 270 head effects, and under the pin without
            STRICT notebook 01's training did; ``mi-tutor bench`` records the patching
            case). Code that has been shown thread-invariant asks for more (notebook 01's
            training takes `available_cores`). It is
            also faster for the course's small models, and it cannot oversubscribe the shared
            cores of Binder or Colab.
        quiet: if True, print nothing.
    """
    quiet_environment()
    keep_circuitsvis_offline()
    pin_cpu_kernels()
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
        note = cpu_kernels_note()
        if note:
            print(note)
    return env
