"""Shared fixtures and the suite's scheduling. Unit tests run offline, on the CPU, with seeds fixed.

Scheduling (``./run.sh test`` runs the suite on two pytest-xdist workers, ``--dist loadgroup``):
every test module is one group, so its module-scoped fixtures are built once; every notebook
execution (a source notebook in the browser or headless, a student notebook up to its first
check) is a group of its own, and those go first, longest first, so the two workers finish
together. The longest-first order comes from the committed benchmark (``benchmarks/results.json``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")  # as `import mi_tutor` does, before any test imports torch
os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")  # and MKL its reproducible AVX2 branch (env.MKL_KERNELS)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import notebook_run  # noqa: E402

COVERAGE = pytest.StashKey[dict]()
BENCHMARK = HERE.parent / "benchmarks" / "results.json"


@pytest.fixture(scope="session")
def smollm2():
    """The offline pretrained LM, loaded once per test session."""
    from mi_tutor.models import load_lm

    return load_lm("smollm2-135m", verbose=False)


@pytest.fixture(scope="session")
def gpt2_arch():
    """A randomly initialised GPT-2-architecture bridge (tests the GPT-2 code path offline)."""
    from mi_tutor.models import random_gpt2

    return random_gpt2()


@pytest.fixture(scope="session")
def browser_coverage(request) -> dict[str, set[str]]:
    """Which notebooks the selected browser tests execute in this session (see notebook_run)."""
    return request.config.stash.get(COVERAGE, {"source": set(), "student": set()})


def _notebook_seconds() -> dict[str, float]:
    try:
        rows = json.loads(BENCHMARK.read_text())["notebooks"]
        return {name: float(r.get("wall_s") or 0.0) for name, r in rows.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _notebook_of(item) -> str | None:
    path = notebook_run.item_notebook(item)
    return None if path is None else path.stem


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group items for xdist (a module, or one notebook execution) and put the notebook
    executions first, longest first."""
    seconds = _notebook_seconds()

    def cost(item) -> float:
        nb = _notebook_of(item)
        return -1.0 if nb is None else seconds.get(nb, 60.0)

    for item in items:
        nb = _notebook_of(item)
        module = getattr(getattr(item, "module", None), "__name__", None) or item.nodeid.split("::")[0]
        group = f"{module}:{nb}" if nb else module
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=cost, reverse=True)  # stable: modules keep their order


def pytest_collection_finish(session):
    import browser_support as bs

    ready = bs.browser_requirements() is None
    session.config.stash[COVERAGE] = notebook_run.browser_coverage(session.items, ready)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the browser test's timings (the workers' own prints are not shown under xdist)."""
    import browser_support as bs

    path = bs.artifacts_dir("") / "timings.json"
    started = getattr(config, "_mi_tutor_started", None)
    if not path.exists() or started is None or path.stat().st_mtime < started:
        return
    try:
        rows = json.loads(path.read_text())
    except ValueError:
        return
    fresh = {k: v for k, v in rows.items() if v.get("finished", 0) >= started}
    if not fresh:
        return
    terminalreporter.section("notebook executions in the real browser (artifacts/browser/timings.json)")
    for name, row in sorted(fresh.items()):
        parts = [f"{k}={row[k]}" for k in ("run_all_s", "run_to_check_s", "open_s", "load") if k in row]
        moved = "; ".join(f"{m['explorer']}: {m['before']} -> {m['after']} ({m['redraw_s']} s)" for m in row.get("moved", []))
        terminalreporter.write_line(f"{name}: " + ", ".join(parts) + (f"; moved {moved}" if moved else ""))


def pytest_configure(config):
    import time

    config._mi_tutor_started = time.time() - 1


# ----------------------------------------------------------------------------------------
# The suite's parts: where its time goes (artifacts/suite.json, read by `mi-tutor bench`;
# written only when $MI_TUTOR_SUITE_RECORD names the file, as `./run.sh test` does)
# ----------------------------------------------------------------------------------------

_PARTS: dict[str, dict[str, float]] = {}
#: set by `./run.sh test` (artifacts/suite.json): only a run of the suite records its parts
SUITE_RECORD_ENV = "MI_TUTOR_SUITE_RECORD"


def _part(nodeid: str) -> str:
    if "test_browser.py::test_student_notebook" in nodeid:
        return "student notebooks, in the browser"
    if "test_browser.py::test_notebook_runs" in nodeid:
        return "source notebooks, in the browser"
    if "test_browser.py" in nodeid:
        return "browser harness (fixtures)"
    if "test_notebooks.py" in nodeid:
        return "source notebooks, headless"
    if "test_student_notebooks.py::test_student_notebook_runs" in nodeid:
        return "student notebooks, headless"
    return "unit tests"


def pytest_runtest_logreport(report):
    """Add up test time by part (called in the controller for every worker's reports)."""
    if getattr(report, "skipped", False) and report.when == "call":
        return
    row = _PARTS.setdefault(_part(report.nodeid), {"seconds": 0.0, "tests": 0})
    row["seconds"] += float(getattr(report, "duration", 0.0) or 0.0)
    if report.when == "call":
        row["tests"] += 1


def pytest_sessionfinish(session, exitstatus):
    import time

    record = os.environ.get(SUITE_RECORD_ENV)
    if not record or os.environ.get("PYTEST_XDIST_WORKER") or not _PARTS:
        return
    started = getattr(session.config, "_mi_tutor_started", time.time())
    out = Path(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = getattr(session.config.option, "numprocesses", None) or 0
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": round(time.time() - started, 1),
        "workers": workers, "exit_status": int(exitstatus),
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "parts": {k: {"seconds": round(v["seconds"], 1), "tests": v["tests"]} for k, v in sorted(_PARTS.items())},
    }, indent=1) + "\n")
