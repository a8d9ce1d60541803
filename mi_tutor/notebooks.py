"""Tools for the notebooks themselves: student versions, execution, and exercise discovery.

Conventions (checked by tests):

- Source notebooks are ``notebooks/NN_topic.ipynb``; student versions are generated into
  ``notebooks/student/NN_topic.ipynb`` by `write_student_notebooks` (``mi-tutor student``).
- An exercise is a code cell whose solution sits between nbgrader's markers
  ``### BEGIN SOLUTION`` and ``### END SOLUTION``, followed by a code cell that calls
  ``check("name", function)``. The solution cell is self-contained (its own imports), so
  tests can run it alone.
- The student version replaces each solution region with ``raise NotImplementedError()``
  and clears every output.
"""
from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
CHECK_RE = re.compile(r"""check\(\s*["']([\w.\-]+)["']\s*,\s*([A-Za-z_]\w*)""")
STUDENT_DIR = "student"
STUDENT_BANNER = (
    "> **Student version.** Generated from `../{name}` by `mi-tutor student`; do not edit it by hand. "
    "Exercise solutions are replaced by `raise NotImplementedError()`: write your own, then run the "
    "`check(...)` cell below each one. Cells after an exercise use `mi_tutor`'s own implementation, "
    "so the rest of the notebook runs even before you finish."
)


def repo_root() -> Path:
    """The repository root (the folder holding ``notebooks/``), found from this file."""
    return Path(__file__).resolve().parent.parent


def source_notebooks(root: Path | None = None) -> list[Path]:
    """The numbered source notebooks, in order."""
    root = root or repo_root()
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def stub_solution(source: str) -> str:
    """Replace every BEGIN/END SOLUTION region with a stub at the region's indentation."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION'")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f"{indent}raise NotImplementedError()")
            continue
        if stripped.startswith(END):
            if not inside:
                raise ValueError("'### END SOLUTION' without a BEGIN")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without an END")
    return "\n".join(out)


def make_student(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student version of a source notebook: solutions stubbed, outputs cleared."""
    student = copy.deepcopy(nb)
    for cell in student.cells:
        if cell.cell_type == "code":
            if BEGIN in cell.source:
                cell.source = stub_solution(cell.source)
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.pop("id", None)
    banner = nbformat.v4.new_markdown_cell(STUDENT_BANNER.format(name=name))
    banner.pop("id", None)  # nbformat >= 5.1 gives new cells a random id; keep the file stable
    banner.metadata["tags"] = ["student-banner"]
    student.cells.insert(0, banner)
    student.metadata.pop("widgets", None)
    student.nbformat_minor = 4  # no cell ids: keeps the generated file stable
    return student


#: One numbered hint block of a notebook: the text comes from the exercise's ``hints`` (one source).
HINT_RE = re.compile(r"<details><summary>Hint \d+</summary>.*?</details>\n?", re.S)


def hint_markdown(name: str) -> str:
    """The ``<details>`` blocks of exercise `name`'s hints, as its notebook shows them (and ``hints(name)`` prints)."""
    from .exercises import REGISTRY

    return "\n".join(f"<details><summary>Hint {i}</summary>\n\n{h}\n</details>"
                     for i, h in enumerate(REGISTRY[name].hints, 1))


def sync_hints(nb: nbformat.NotebookNode) -> int:
    """Rewrite the hint blocks after each ``check("name", fn)`` cell from the exercise's own hints.

    The hints live once, in `mi_tutor.exercises`; the markdown cell right after a check cell
    shows them (the first numbered block's place gets all of them; other text stays). Returns
    how many cells changed.
    """
    changed = 0
    cells = nb.cells
    for i, cell in enumerate(cells[:-1]):
        m = CHECK_RE.search(cell.source) if cell.cell_type == "code" else None
        nxt = cells[i + 1]
        if m is None or nxt.cell_type != "markdown" or not HINT_RE.search(nxt.source):
            continue
        first = HINT_RE.search(nxt.source)
        rest = HINT_RE.sub("", nxt.source[first.end():])
        new = nxt.source[:first.start()] + hint_markdown(m.group(1)) + ("\n\n" + rest.lstrip("\n") if rest.strip() else "")
        if new != nxt.source:
            nxt.source = new
            changed += 1
    return changed


def hints_in_sync(path: Path) -> bool:
    """Whether `path`'s hint cells show exactly its exercises' hints."""
    nb = nbformat.read(str(path), as_version=4)
    return sync_hints(nb) == 0


def student_path(src: Path) -> Path:
    return src.parent / STUDENT_DIR / src.name


def render_student(src: Path) -> str:
    """The exact text the student version of `src` should have (used by the sync test)."""
    nb = nbformat.read(str(src), as_version=4)
    return nbformat.writes(make_student(nb, src.name)) + "\n"


def write_student_notebooks(root: Path | None = None) -> list[Path]:
    """Bring each source notebook's hint cells in line with its exercises' hints (`sync_hints`),
    then regenerate every student notebook; returns the paths written."""
    written = []
    for src in source_notebooks(root):
        nb = nbformat.read(str(src), as_version=4)
        if sync_hints(nb):
            nbformat.write(nb, str(src))
        dst = student_path(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(render_student(src))
        written.append(dst)
    return written


@dataclass
class ExerciseCell:
    """One exercise found in a notebook."""

    notebook: Path
    check_name: str
    function_name: str
    solution_source: str
    cell_index: int


def find_exercises(path: Path) -> list[ExerciseCell]:
    """Pair each solution cell with the ``check("name", fn)`` call in the next code cell."""
    nb = nbformat.read(str(path), as_version=4)
    found = []
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type != "code" or BEGIN not in cell.source:
            continue
        nxt = next((c for c in cells[i + 1 :] if c.cell_type == "code"), None)
        m = CHECK_RE.search(nxt.source) if nxt is not None else None
        if m is None:
            raise ValueError(f"{path.name}: solution cell {i} is not followed by a check(\"name\", fn) cell")
        found.append(ExerciseCell(path, m.group(1), m.group(2), cell.source, i))
    return found


def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a cell defines."""
    tree = ast.parse(source)
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]


def run_cell_source(source: str) -> dict:
    """Execute a self-contained cell (IPython magics dropped) and return its namespace."""
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    ns: dict = {"__name__": "__exercise__"}
    exec(compile("\n".join(lines), "<exercise cell>", "exec"), ns)
    return ns


# ------------------------------------------------------------------------------
# Executing notebooks (to commit their outputs) and keeping committed files small
# ------------------------------------------------------------------------------

HEAVY_MIME = ("application/vnd.jupyter.widget-view+json",)


def _is_circuitsvis(output: dict) -> bool:
    html = output.get("data", {}).get("text/html", "")
    if isinstance(html, list):
        html = "".join(html)
    return "circuits-vis" in html or "CircuitsVis" in html


#: tqdm's text form: "desc:  37%|###7      | 111/300 [00:01<00:02, 90.1it/s]"
PROGRESS_RE = re.compile(r"^.*\d+%\|.*\|\s*\d+/\d+\s*\[[^\]]*\]\s*$", re.S)


def is_progress_bar(output: dict) -> bool:
    """True for a saved tqdm bar (a widget view whose text form is a bar, or bar text on stderr)."""
    if output.get("output_type") in ("display_data", "execute_result"):
        data = output.get("data", {})
        if set(data) - {"application/vnd.jupyter.widget-view+json", "text/plain"}:
            return False  # an Explorer carries a PNG: keep it
        text = data.get("text/plain", "")
    elif output.get("output_type") == "stream" and output.get("name") == "stderr":
        text = output.get("text", "")
    else:
        return False
    text = "".join(text) if isinstance(text, list) else text
    return bool(text) and all(PROGRESS_RE.match(line) for line in text.replace("\r", "\n").splitlines() if line.strip())


def strip_progress_bars(nb: nbformat.NotebookNode) -> int:
    """Drop saved progress bars (a stale "0%" in every static view); returns how many."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            kept = [o for o in cell.get("outputs", []) if not is_progress_bar(o)]
            n += len(cell.outputs) - len(kept)
            cell.outputs = kept
    return n


def slim_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop outputs that bloat committed notebooks or never reproduce.

    circuitsvis inlines a 1.3 MB JS bundle per view (offline) and random div ids; those
    outputs are replaced by a short note. Widget views stay (they are tiny) but their
    saved widget state is dropped. Progress bars are dropped (`execute_and_save` also runs
    the kernel with TQDM_DISABLE=1, so they are not drawn in the first place).
    """
    strip_progress_bars(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result") and _is_circuitsvis(out):
                kept.append(nbformat.v4.new_output(
                    "display_data",
                    data={"text/plain": "[interactive circuitsvis view: run the cell to see it]"},
                ))
                continue
            kept.append(out)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return nb


def merged_env(changes: dict[str, str | None] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with `changes` applied; a None value removes a variable."""
    import os

    env = dict(os.environ if base is None else base)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def execute_notebook(path: Path, timeout: int = 1200, env: dict[str, str | None] | None = None,
                     allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a fresh kernel (cwd = its folder) and return it.

    `env` changes the kernel's environment (None removes a variable); with `allow_errors`
    the run goes on past a failing cell, so that every problem can be reported."""
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=merged_env(env))  # keyword arguments reach the kernel manager's start_kernel
    return nb


def execute_and_save(path: Path, timeout: int = 1200) -> Path:
    """Execute a source notebook, slim its outputs, write it back, regenerate its student version."""
    # TQDM_DISABLE: saved outputs carry no progress bars (a learner's live run still draws them).
    nb = execute_notebook(path, timeout=timeout,
                          env={"MI_TUTOR_STRICT": "1", "MI_TUTOR_MODEL": "smollm2-135m", "TQDM_DISABLE": "1"})
    slim_outputs(nb)
    nbformat.write(nb, str(path))
    dst = student_path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(render_student(path))
    return path
