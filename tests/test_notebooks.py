"""Every source notebook, executed headless where the real browser does not execute it.

In CI the browser test (`test_browser.py`) executes each notebook once and checks it; these
tests then skip, saying so. Without Chromium (or with ``-m "not browser"``) they execute the
notebook in a fresh kernel and apply the same checks (`notebook_run`): no cell raised or wrote
to stderr, every ``# NBVAL_CHECK_OUTPUT`` cell printed what the committed notebook shows, and
the kernel attempted no network connection.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

import notebook_run
from mi_tutor.notebooks import execute_notebook, source_notebooks

SOURCES = source_notebooks()
KERNEL_ENV = {"MI_TUTOR_STRICT": "1", "MI_TUTOR_MODEL": "smollm2-135m"}
#: seconds one cell may take (notebook 01's live training is the longest, ~40 s quiet)
CELL_TIMEOUT = 900


def execute_guarded(path: Path, netlog: Path) -> nbformat.NotebookNode:
    """Run `path` top to bottom in a fresh kernel under the network guard; keep going past an
    error so that every problem is reported, and return the executed notebook."""
    return execute_notebook(path, timeout=CELL_TIMEOUT, env={**KERNEL_ENV, **notebook_run.guarded_env(netlog)},
                            allow_errors=True)


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_notebook_runs_headless_and_matches_its_checked_outputs(path, browser_coverage, tmp_path):
    if path.name in browser_coverage["source"]:
        pytest.skip("executed once, in the real browser (test_browser.py), which applies the same checks")
    netlog = tmp_path / "attempts.log"
    run = execute_guarded(path, netlog)
    committed = nbformat.read(str(path), as_version=4)
    outputs = [c.get("outputs", []) for c in run.cells]
    tags = [list(c.get("metadata", {}).get("tags", [])) for c in run.cells]
    problems = notebook_run.run_problems(outputs, tags)
    problems += notebook_run.compare_checked_outputs(committed, outputs)
    problems += [f"network attempt: {a}" for a in notebook_run.attempts(netlog)]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
