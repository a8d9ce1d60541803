"""One execution per notebook serves every notebook test, and this module checks what it printed.

The suite runs each source notebook once: in the real browser when Chromium is there
(`test_browser.py`, which also drives the widgets), otherwise headless
(`test_notebooks.py`). Either way the same checks apply to the outputs of that run:

- no cell raised (cells tagged ``raises-exception`` may) and none wrote to stderr;
- every cell marked ``# NBVAL_CHECK_OUTPUT`` printed what the committed notebook shows,
  after the substitutions in ``tests/nbval_sanitize.cfg`` (times, addresses, digits past
  the third decimal). The comparison follows nbval's ``--nbval-lax`` rules, which this
  suite used before: streams are merged by name, images and widget model ids are skipped,
  every other text field is compared;
- the kernel attempted no network connection (``tests/netguard`` refuses and records them).

`browser_coverage` tells a headless test whether the browser test runs the same notebook
in this session, so that no notebook is executed twice.
"""
from __future__ import annotations

import difflib
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import nbformat

HERE = Path(__file__).resolve().parent
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
SANITIZE_FILE = HERE / "nbval_sanitize.cfg"
GUARD = HERE / "netguard"

#: output fields that are never compared (as nbval: metadata, counts, images, widget ids)
SKIP = frozenset({
    "metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
    "transient", "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg",
})

_CARRIAGE = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)
_BACKSPACE = re.compile("[^\n]\x08")  # a character, then a backspace that deletes it


def load_sanitizers(path: Path = SANITIZE_FILE) -> list[tuple[re.Pattern, str]]:
    """The ``regex:`` / ``replace:`` pairs of an nbval sanitize file, in order."""
    pairs: list[tuple[re.Pattern, str]] = []
    regex = None
    for line in path.read_text().splitlines():
        if line.startswith("regex:"):
            regex = line[len("regex:"):].strip()
        elif line.startswith("replace:") and regex is not None:
            pairs.append((re.compile(regex), line[len("replace:"):].strip()))
            regex = None
    return pairs


def _text(value: Any) -> Any:
    return "".join(value) if isinstance(value, list) else value


def coalesce_streams(outputs: Iterable[dict]) -> list[dict]:
    """Merge stream outputs of the same name into the first one, then apply backspaces and
    carriage returns (a front end may have merged some of them already; merging is idempotent)."""
    merged: list[dict] = []
    streams: dict[str, dict] = {}
    for out in outputs:
        out = dict(out)
        if out.get("output_type") == "stream":
            out["text"] = _text(out.get("text", ""))
            name = out.get("name", "stdout")
            if name in streams:
                streams[name]["text"] += out["text"]
                continue
            streams[name] = out
        merged.append(out)
    for out in streams.values():
        text = out["text"]
        while True:
            shorter = _BACKSPACE.sub("", text)
            if len(shorter) == len(text):
                break
            text = shorter
        out["text"] = _CARRIAGE.sub("", text)
    return merged


def flatten(outputs: Iterable[dict], sanitizers: list[tuple[re.Pattern, str]]) -> dict[str, list]:
    """Field -> values over a cell's outputs (streams keyed by their name), sanitized."""

    def clean(value: Any) -> Any:
        value = _text(value)
        if isinstance(value, str):
            for regex, replace in sanitizers:
                value = regex.sub(replace, value)
        return value

    fields: dict[str, list] = defaultdict(list)
    for out in coalesce_streams(outputs):
        if out.get("output_type") == "stream":
            fields[f"stream:{out.get('name', 'stdout')}"].append(clean(out["text"]))
            continue
        for key, value in out.items():
            if key in SKIP:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP:
                        fields[mime].append(clean(data))
            else:
                fields[key].append(clean(value))
    return dict(fields)


def _diff(expected: Any, got: Any, limit: int = 40) -> str:
    exp = str(expected).splitlines(keepends=False)
    new = str(got).splitlines(keepends=False)
    lines = list(difflib.unified_diff(exp, new, "committed", "this run", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)


def checked_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells whose outputs are compared."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and CHECK_MARK in c.source]


def compare_checked_outputs(committed: nbformat.NotebookNode, outputs_by_cell: list[list[dict]],
                            sanitizers: list[tuple[re.Pattern, str]] | None = None) -> list[str]:
    """Differences between the committed outputs of every checked cell and this run's.

    Args:
        committed: the notebook as it is in the repository.
        outputs_by_cell: this run's outputs, one list per cell, in the same cell order.
        sanitizers: substitutions applied to both sides (default: ``nbval_sanitize.cfg``).

    Returns:
        One readable paragraph per differing cell (empty when everything matches).
    """
    sanitizers = load_sanitizers() if sanitizers is None else sanitizers
    if len(outputs_by_cell) != len(committed.cells):
        return [f"the run has {len(outputs_by_cell)} cells, the committed notebook {len(committed.cells)}"]
    problems = []
    for i in checked_cells(committed):
        want = flatten(committed.cells[i].outputs, sanitizers)
        got = flatten(outputs_by_cell[i], sanitizers)
        first = committed.cells[i].source.replace(CHECK_MARK, "").strip().splitlines()
        where = f"cell {i} ({first[0][:60] if first else ''})"
        if set(want) != set(got):
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            problems.append(f"{where}: output fields differ: missing {missing}, unexpected {extra}")
            continue
        for key in want:
            if len(want[key]) != len(got[key]):
                problems.append(f"{where}: {len(got[key])} {key} output(s), committed {len(want[key])}")
                break
            for a, b in zip(want[key], got[key]):
                if a != b:
                    problems.append(f"{where}: {key} differs from the committed output:\n{_diff(a, b)}")
                    break
            else:
                continue
            break
    return problems


def run_problems(outputs_by_cell: list[list[dict]], tags_by_cell: list[list[str]], tracebacks: bool = False) -> list[str]:
    """Errors (outside cells tagged ``raises-exception``) and stderr text, one line each
    (with `tracebacks`, each error also carries the end of its traceback)."""
    found = []
    for i, (outputs, tags) in enumerate(zip(outputs_by_cell, tags_by_cell)):
        for out in outputs:
            kind = out.get("output_type")
            if kind == "error" and "raises-exception" not in tags:
                tb = "\n" + re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out.get("traceback", [])))[-1500:] if tracebacks else ""
                found.append(f"cell {i}: error {out.get('ename')}: {out.get('evalue')}{tb}")
            elif kind == "stream" and out.get("name") == "stderr":
                found.append(f"cell {i}: stderr: {_text(out.get('text', ''))[:800]}")
    return found


# ----------------------------------------------------------------------------------------
# The network guard, for kernels
# ----------------------------------------------------------------------------------------


def guarded_env(log: Path, env: dict[str, str] | None = None) -> dict[str, str | None]:
    """Environment additions that put the network guard into a process and its children.

    ``HF_HUB_OFFLINE`` is removed (value None): the notebooks must be offline by themselves,
    not because of that flag."""
    base = (env or os.environ).get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(GUARD), base) if p),
            "MI_TUTOR_NETGUARD_LOG": str(log), "HF_HUB_OFFLINE": None}


def attempts(log: Path, since: int = 0) -> list[str]:
    """Connection attempts recorded in `log` after its first `since` lines."""
    return log.read_text().splitlines()[since:] if log.exists() else []


# ----------------------------------------------------------------------------------------
# Which notebooks the browser test executes in this session
# ----------------------------------------------------------------------------------------

SOURCE_TEST = "test_notebook_runs_in_the_browser"
STUDENT_TEST = "test_student_notebook_first_check_fails_friendly_in_the_browser"


def item_notebook(item: Any) -> Path | None:
    """The notebook a parametrised test item runs or reads (its ``path`` or ``src`` parameter), if any."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    path = params.get("path", params.get("src"))
    return Path(path) if path is not None and str(path).endswith(".ipynb") else None


def browser_coverage(items: Iterable[Any], browser_ready: bool) -> dict[str, set[str]]:
    """Names of the source and student notebooks that selected browser tests will execute.

    Empty when the browser is unavailable (those tests then skip, so the headless tests run)."""
    covered: dict[str, set[str]] = {"source": set(), "student": set()}
    if not browser_ready:
        return covered
    for item in items:
        name, path = getattr(item, "originalname", ""), item_notebook(item)
        if path is None:
            continue
        if name == SOURCE_TEST:
            covered["source"].add(path.name)
        elif name == STUDENT_TEST:
            covered["student"].add(path.name)
    return covered
