"""``mi-tutor grade SUBMISSIONS...``: run students' notebooks headless and grade every exercise.

For each submitted notebook (a file, or every ``*.ipynb`` in a folder):

1. find the source notebook it was made from (the student banner names it, else the file
   name contains ``NN_topic``; ``--reference`` overrides), and from it the exercises and
   their ``check(...)`` cells;
2. report any check cell that is missing or edited (a submission could print a fake "✔");
3. execute the notebook in a fresh kernel in a *separate process* with a per-notebook time
   limit (errors in cells do not stop it; a hang or a crashed kernel is reported, not fatal);
4. grade each exercise by calling `run_check` on the student's final function in the kernel
   (an appended grading cell), independent of what the notebook's own cells printed. If the
   notebook did not get that far, the verdicts its ``check()`` calls logged are used.

Writes a CSV (student file, exercise, pass/fail, one-line reason) and prints a summary table.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .notebooks import find_exercises, source_notebooks

#: Seconds a whole submission may run (the course's heaviest notebook takes ~3 min on a laptop).
DEFAULT_TIMEOUT = 900
LOG_ENV = "MI_TUTOR_GRADE_LOG"
_BANNER_RE = re.compile(r"Generated from `\.\./([^`]+\.ipynb)`")
_MARK = "MI_TUTOR_GRADE_RESULT "


@dataclass
class Expected:
    """One exercise of the reference notebook: its check name, function name and check cell."""

    check_name: str
    function_name: str
    check_source: str


@dataclass
class Row:
    """One line of the CSV."""

    student_file: str
    exercise: str
    status: str  # "pass", "fail" or "error" (a notebook-level problem)
    reason: str


@dataclass
class Outcome:
    """What grading one submission found."""

    path: Path
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def expected_exercises(reference: Path) -> list[Expected]:
    """The exercises of a source notebook, each with the exact source of its check cell."""
    nb = nbformat.read(str(reference), as_version=4)
    out = []
    for ex in find_exercises(reference):
        cell = next(c for c in nb.cells[ex.cell_index + 1:] if c.cell_type == "code")
        out.append(Expected(ex.check_name, ex.function_name, cell.source.strip()))
    return out


def find_reference(submission: Path, nb: nbformat.NotebookNode, explicit: Path | None = None) -> Path | None:
    """The source notebook a submission was generated from, or None."""
    if explicit is not None:
        return explicit
    known = {p.name: p for p in source_notebooks()}
    for cell in nb.cells[:3]:
        m = _BANNER_RE.search(cell.source) if cell.cell_type == "markdown" else None
        if m and m.group(1) in known:
            return known[m.group(1)]
    for name, path in known.items():
        if name[:-6] in submission.name:
            return path
    return None


def edited_checks(nb: nbformat.NotebookNode, expected: list[Expected]) -> list[str]:
    """Names of the exercises whose check cell is missing or differs from the reference's."""
    sources = {c.source.strip() for c in nb.cells if c.cell_type == "code"}
    return [e.check_name for e in expected if e.check_source not in sources]


def _grading_cell(expected: list[Expected]) -> str:
    pairs = [(e.check_name, e.function_name) for e in expected]
    return (
        "import json as _j\n"
        "from mi_tutor.exercises import run_check as _rc\n"
        f"for _name, _fn in {pairs!r}:\n"
        "    _f = globals().get(_fn)\n"
        "    _r = _rc(_name, _f) if _f is not None else None\n"
        "    _ok = _r is not None\n"
        "    _d = {'exercise': _name, 'passed': _ok and _r.passed,\n"
        "          'reason': (_r.message.splitlines()[0] if _ok else f'`{_fn}` is not defined'),\n"
        "          'kind': (_r.kind if _ok else 'missing')}\n"
        f"    print({_MARK!r} + _j.dumps(_d))\n"
    )


def run_submission(path: Path, expected: list[Expected], out_json: Path, timeout: float) -> None:
    """Child-process entry: execute `path` (errors allowed) plus the grading cell; write the results."""
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_grading_cell(expected)))
    env = dict(os.environ)
    env.pop("MI_TUTOR_STRICT", None)
    client = NotebookClient(nb, timeout=int(timeout), kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    results = []
    for out in nb.cells[-1].get("outputs", []):
        for line in out.get("text", "").splitlines():
            if line.startswith(_MARK):
                results.append(json.loads(line[len(_MARK):]))
    out_json.write_text(json.dumps(results))


def _logged(log: Path) -> dict[str, dict]:
    """The verdicts the notebook's own check() calls logged (the last per exercise)."""
    seen: dict[str, dict] = {}
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                seen[rec["exercise"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
    return seen


def _reason(rec: dict) -> str:
    kind = rec.get("kind")
    if kind == "not_implemented":
        return "not written yet"
    return str(rec.get("reason", "")).lstrip("✘✔ ").strip()


def grade_one(path: Path, timeout: float = DEFAULT_TIMEOUT, reference: Path | None = None) -> Outcome:
    """Grade one submitted notebook (never raises: problems become rows)."""
    t0 = time.perf_counter()
    outcome = Outcome(path)
    label = path.name
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported
        outcome.rows.append(Row(label, "(notebook)", "error", f"not a readable notebook: {type(e).__name__}"))
        return outcome
    ref = find_reference(path, nb, reference)
    if ref is None:
        outcome.rows.append(Row(label, "(notebook)", "error",
                                "cannot tell which course notebook this is: pass --reference SOURCE.ipynb"))
        return outcome
    try:
        expected = expected_exercises(ref)
    except Exception as e:  # noqa: BLE001 - a broken reference is reported per submission
        outcome.rows.append(Row(label, "(notebook)", "error", f"cannot read the reference {ref.name}: {type(e).__name__}"))
        return outcome
    edited = set(edited_checks(nb, expected))
    for name in sorted(edited):
        outcome.problems.append(f"check cell of {name} edited or missing")
    with tempfile.TemporaryDirectory(prefix="mi_tutor_grade_") as tmp:
        out_json, log = Path(tmp) / "results.json", Path(tmp) / "log.jsonl"
        env = dict(os.environ, **{LOG_ENV: str(log)})
        cmd = [sys.executable, "-m", "mi_tutor.grade", "--_one", str(path), str(ref), str(out_json), str(timeout)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout + 15)  # + kernel start-up
            if proc.returncode != 0 and not out_json.exists():
                last = (err or b"").decode(errors="replace").strip().splitlines()
                why = next((l for l in reversed(last) if "Error" in l or "Dead" in l), last[-1] if last else "")
                timed_out = "CellTimeoutError" in why or "TimeoutError" in why
                outcome.problems.append(f"timed out after {timeout:g} s" if timed_out
                                        else f"crashed: {why[:160] or 'the kernel died'}")
        except subprocess.TimeoutExpired:
            _stop(proc)
            outcome.problems.append(f"timed out after {timeout:g} s")
        final = {r["exercise"]: r for r in json.loads(out_json.read_text())} if out_json.exists() else {}
        logged = _logged(log)
    for e in expected:
        rec = final.get(e.check_name)
        note = "; check cell edited" if e.check_name in edited else ""
        if rec is not None:
            outcome.rows.append(Row(label, e.check_name, "pass" if rec["passed"] else "fail", _reason(rec) + note))
        elif e.check_name in logged:
            rec = logged[e.check_name]
            outcome.rows.append(Row(label, e.check_name, "pass" if rec["passed"] else "fail",
                                    _reason(rec) + " (from the notebook's own check; it did not finish)" + note))
        else:
            outcome.rows.append(Row(label, e.check_name, "fail", "not reached: the notebook did not finish" + note))
    for p in outcome.problems:
        outcome.rows.append(Row(label, "(notebook)", "error", p))
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _stop(proc: subprocess.Popen) -> None:
    """Stop a grading child: SIGTERM first (it then shuts its kernel down), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    except ProcessLookupError:
        pass


def collect(submissions: list[Path]) -> list[Path]:
    """Every notebook named, or inside a named folder (checkpoints skipped), in order."""
    found: list[Path] = []
    for s in submissions:
        if s.is_dir():
            found += sorted(p for p in s.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(s)
    return found


def grade(submissions: list[Path], out_csv: Path, timeout: float = DEFAULT_TIMEOUT,
          reference: Path | None = None, echo=print) -> list[Outcome]:
    """Grade every submission, write `out_csv`, print a summary table; returns the outcomes."""
    outcomes = []
    for path in collect(submissions):
        if not path.exists():
            outcomes.append(Outcome(path, [Row(path.name, "(notebook)", "error", "no such file")]))
            continue
        echo(f"grading {path} ...")
        outcomes.append(grade_one(path, timeout, reference))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student_file", "exercise", "status", "reason"])
        for o in outcomes:
            for r in o.rows:
                w.writerow([r.student_file, r.exercise, r.status, r.reason])
    echo(summary(outcomes))
    echo(f"wrote {out_csv}")
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    """A plain-text table: one line per submission (passed / exercises, time, problems)."""
    width = max([len(o.path.name) for o in outcomes] + [10])
    lines = [f"{'submission':<{width}}  passed  seconds  problems"]
    for o in outcomes:
        ex = [r for r in o.rows if r.exercise != "(notebook)"]
        passed = sum(r.status == "pass" for r in ex)
        probs = "; ".join(r.reason for r in o.rows if r.exercise == "(notebook)") or "-"
        lines.append(f"{o.path.name:<{width}}  {passed:>2}/{len(ex):<3}  {o.seconds:>7.1f}  {probs}")
    return "\n".join(lines)


def add_grade_parser(sub) -> None:
    """The ``grade`` sub-command's arguments (called by `mi_tutor.cli`)."""
    g = sub.add_parser("grade", help="grade submitted student notebooks (CSV + summary)")
    g.add_argument("submissions", nargs="+", help="notebooks, or folders of them (one per student)")
    g.add_argument("--out", default="grades.csv", help="the CSV to write (default: grades.csv)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per notebook (default: {DEFAULT_TIMEOUT})")
    g.add_argument("--reference", default=None, help="the source notebook (default: found from each submission)")


def grade_main(args) -> int:
    """Run ``mi-tutor grade``; exit status 0 even if students fail (their failures are in the CSV)."""
    if args.timeout <= 0:
        print("mi-tutor grade: --timeout must be a positive number of seconds")
        return 2
    ref = Path(args.reference) if args.reference else None
    if ref is not None and not ref.exists():
        print(f"mi-tutor grade: no such reference notebook: {ref}")
        return 2
    grade([Path(s) for s in args.submissions], Path(args.out), args.timeout, ref)
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--_one":
    _path, _ref, _out, _timeout = sys.argv[2:6]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # unwinds nbclient, which shuts the kernel down
    run_submission(Path(_path), expected_exercises(Path(_ref)), Path(_out), float(_timeout))
