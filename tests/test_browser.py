"""The notebooks in a real browser: JupyterLab + headless Chromium, driven the way a learner would.

This is where the suite executes each source notebook, once (`notebook_run` explains why one
run serves every check). For every source notebook: open it in JupyterLab, Run All, and assert
that no cell raised or wrote to stderr, that every ``# NBVAL_CHECK_OUTPUT`` cell printed what
the committed notebook shows, and that the kernel attempted no network connection (the guard
in ``tests/netguard`` refuses and records them; ``HF_HUB_OFFLINE`` is unset for the kernels).
Then, where the notebook has widgets, move one control of every explorer (a slider by
keyboard, a dropdown, a text box) and assert that (a) the explorer's figure and status line
change and (b) the kernel saw the new value (`mi_tutor.widgets.LAST_VALUES`, read by a cell
the test adds). Screenshots of each explorer before and after are saved under
``artifacts/browser/<notebook>/``.

For every student notebook: open it, run up to its first ``check(...)`` cell, and assert that
the check printed the friendly "not written yet" message, with no traceback anywhere.

A fixture notebook (written to a temporary folder) runs through the same code path, so the
harness is tested even before any real notebook has widgets. Deliberately broken fixtures
prove the harness rejects errors, stderr, a changed checked output and a kernel's network
attempt.

Needs Debian's ``chromium`` and the ``playwright`` Python package (``scripts/install_browser.sh``).
Without them the tests skip, unless ``MI_TUTOR_REQUIRE_BROWSER=1`` (CI), where they fail.
Timeouts: ``MI_TUTOR_BROWSER_TIMEOUT`` seconds per notebook run (default 1500).
Deselect with ``-m "not browser"``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_support as bs  # noqa: E402
import notebook_run  # noqa: E402

from mi_tutor.notebooks import source_notebooks  # noqa: E402

pytestmark = pytest.mark.browser

RUN_TIMEOUT = float(os.environ.get("MI_TUTOR_BROWSER_TIMEOUT", "1500"))
#: seconds an explorer gets to redraw after a control moved
REDRAW_TIMEOUT = 120.0
#: at most this many explorers are moved per notebook (each costs a redraw + a probe cell)
MAX_EXPLORERS = 8
#: kernels of the notebooks under test: offline model; the source notebooks check strictly
SOURCE_ENV = {"MI_TUTOR_STRICT": "1", "MI_TUTOR_MODEL": "smollm2-135m", "HF_HUB_OFFLINE": "1"}
STUDENT_ENV = {"MI_TUTOR_STRICT": "0", "MI_TUTOR_MODEL": "smollm2-135m", "HF_HUB_OFFLINE": "1"}

TIMINGS: dict[str, dict] = {}


# ----------------------------------------------------------------------------------------
# Fixtures: availability, the browser, the servers (all stopped by finalizers)
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_ready() -> None:
    reason = bs.browser_requirements()
    if reason:
        if bs.browser_required():
            pytest.fail(f"{bs.REQUIRE_ENV} is set, but the browser test {reason}", pytrace=False)
        pytest.skip(f"browser test skipped: {reason} (set {bs.REQUIRE_ENV}=1 to make this a failure)")


@pytest.fixture(scope="session")
def chromium(browser_ready, request):
    browser = bs.Chromium()
    request.addfinalizer(browser.close)
    return browser


def _start_lab(request, root: Path, env: dict, tmp_path_factory) -> bs.JupyterLabServer:
    """A lab server whose kernels run under the network guard (log: ``server.netlog``)."""
    netlog = tmp_path_factory.mktemp("netguard") / "attempts.log"
    full = dict(env)
    full.update(notebook_run.guarded_env(netlog))
    server = bs.JupyterLabServer(root, env=full)
    server.netlog = netlog
    request.addfinalizer(server.stop)  # registered first: runs even if start() fails half-way
    server.start()
    return server


@pytest.fixture(scope="session")
def fixture_course(browser_ready, tmp_path_factory) -> Path:
    """The fixture notebooks, the source one executed and saved with outputs like a real one."""
    from mi_tutor.notebooks import execute_notebook

    root = tmp_path_factory.mktemp("browser_course")
    src, _student = bs.write_fixture_course(root)
    nbformat.write(execute_notebook(src, timeout=300, env=SOURCE_ENV), str(src))
    bs.write_broken_notebook(root)
    bs.write_mismatch_notebook(root)
    return root


@pytest.fixture(scope="session")
def fixture_lab(fixture_course, request, tmp_path_factory) -> bs.JupyterLabServer:
    # the fixture's check passes in the source and fails (friendly) in the student version
    return _start_lab(request, fixture_course, STUDENT_ENV, tmp_path_factory)


@pytest.fixture(scope="session")
def sources_lab(browser_ready, request, tmp_path_factory) -> bs.JupyterLabServer:
    return _start_lab(request, bs.NOTEBOOKS, SOURCE_ENV, tmp_path_factory)


@pytest.fixture(scope="session")
def students_lab(browser_ready, request, tmp_path_factory) -> bs.JupyterLabServer:
    return _start_lab(request, bs.NOTEBOOKS, STUDENT_ENV, tmp_path_factory)


# ----------------------------------------------------------------------------------------
# What the tests do
# ----------------------------------------------------------------------------------------


def _say(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[browser] {text}", flush=True)


def _record(name: str, **values) -> None:
    """Add one notebook's timings to artifacts/browser/timings.json (workers share the file)."""
    import fcntl

    TIMINGS.setdefault(name, {}).update(values, finished=time.time(), worker=os.environ.get("PYTEST_XDIST_WORKER", "main"))
    out = bs.artifacts_dir("") / "timings.json"
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = json.loads(out.read_text()) if out.exists() else {}
        except ValueError:
            old = {}
        old.update(TIMINGS)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        tmp.replace(out)


def _load_note() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def _check_offline(chromium: bs.Chromium, since: int, relpath: str, result: dict) -> None:
    """Everything the page needs must come from the local server (the browser refuses the rest):
    markdown images such as the Colab badge are only listed, anything else fails the test."""
    result["refused_requests"] = sorted({url for _kind, url in chromium.blocked[since:]})
    bad = chromium.phoned_home(since)
    assert not bad, f"{relpath}: the page tried to load from the network (refused): {bad[:5]}"


def _wait_for_redraw(box, before: bs.ExplorerView, timeout: float) -> bs.ExplorerView:
    """Poll until the explorer's status line and figure both differ from `before`."""
    deadline = time.monotonic() + timeout
    now = bs.read_explorer(box)
    while time.monotonic() < deadline:
        now = bs.read_explorer(box)
        if now.status != before.status and now.image and now.image != before.image:
            return now
        time.sleep(0.25)
    return now


def check_run(nb: bs.LabNotebook, server: bs.JupyterLabServer, path: Path, net_since: int) -> list[str]:
    """What the run in the page did wrong: its checked outputs against the committed notebook,
    and the kernel's network attempts (empty when all is well)."""
    committed = nbformat.read(str(path), as_version=4)
    cells = nb.state()["cells"]
    found = notebook_run.compare_checked_outputs(committed, [c["outputs"] for c in cells])
    found += [f"network attempt: {a}" for a in notebook_run.attempts(server.netlog, net_since)]
    return found


def move_explorers(nb: bs.LabNotebook, page, path: Path, relpath: str, art: Path, result: dict) -> list[dict]:
    """Move one control of every explorer (at most MAX_EXPLORERS); assert the page and the
    kernel both follow. Returns what was moved."""
    boxes = nb.explorers()
    n = boxes.count()
    saved = bs.saved_explorers(path)
    views = nb.widget_views()
    result.update(explorers=n, widget_views=views, saved_explorers=saved)
    assert n >= 1, (f"{relpath} uses widgets but shows no mi_tutor explorer after Run All "
                    f"({views} widget views): build widgets with mi_tutor.widgets.Explorer")
    assert n >= saved, (f"{relpath}: the committed notebook shows {saved} explorers, "
                        f"but the browser rendered only {n}")

    moved = []
    for i in range(min(n, MAX_EXPLORERS)):
        box = boxes.nth(i)
        box.scroll_into_view_if_needed()
        before = bs.read_explorer(box)
        assert before.image, f"{relpath}: explorer {i} ({before.title!r}) shows no figure"
        box.screenshot(path=str(art / f"explorer{i}-before.png"))
        t0 = time.monotonic()
        action = bs.move_one_control(page, box)
        after = _wait_for_redraw(box, before, REDRAW_TIMEOUT)
        redraw = time.monotonic() - t0
        box.screenshot(path=str(art / f"explorer{i}-after.png"))
        what = f"{relpath}: explorer {i} ({before.title or 'untitled'}), {action}"
        # (a) the output it drives changed
        assert after.status != before.status, f"{what}: the status line did not change: {after.status!r}"
        assert after.image != before.image, f"{what}: the figure did not change"
        shown = bs.parse_status(after.status)
        assert shown and shown != bs.parse_status(before.status), f"{what}: status {after.status!r}"
        # (b) the kernel rendered the new value
        probe = bs.parse_probe(nb.add_cell_and_run(bs.KERNEL_PROBE))
        if after.title:
            assert after.title in probe, f"{what}: the kernel has no LAST_VALUES[{after.title!r}]: {probe}"
            assert probe[after.title] == shown, f"{what}: the page shows {shown}, the kernel last rendered {probe[after.title]}"
        else:
            assert shown in probe.values(), f"{what}: the page shows {shown}; the kernel's LAST_VALUES: {probe}"
        moved.append({"explorer": before.title or i, "action": action, "before": before.status,
                      "after": after.status, "redraw_s": round(redraw, 2)})
    problems = nb.problems()
    assert not problems, f"{relpath}: moving the widgets produced error/stderr output:\n" + "\n".join(problems)
    return moved


def exercise_source_notebook(server: bs.JupyterLabServer, chromium: bs.Chromium, path: Path, capsys) -> dict:
    """Open `path` in JupyterLab, Run All, check its outputs, move one control of every
    explorer; assert it all works."""
    relpath = path.relative_to(server.root_dir).as_posix()
    label = path.stem
    art = bs.artifacts_dir(label)
    for old in art.glob("*.png"):
        old.unlink()
    since = len(chromium.blocked)
    net_since = len(notebook_run.attempts(server.netlog))
    page = chromium.new_page()
    result: dict = {"notebook": relpath}
    try:
        t_open = time.monotonic()
        nb = bs.LabNotebook(page, server, relpath).open()
        result["open_s"] = round(time.monotonic() - t_open, 1)
        nb.focus_notebook()
        nb.clear_all_outputs()  # every output checked below comes from this run
        result["run_all_s"] = round(nb.run_all(timeout=RUN_TIMEOUT), 1)
        result["load"] = _load_note()
        problems = nb.problems()
        assert not problems, f"{relpath}: Run All produced error/stderr output:\n" + "\n".join(problems)
        never = nb.never_ran()
        assert not never, f"{relpath}: Run All left code cells {never} unexecuted"
        wrong = check_run(nb, server, path, net_since)
        result["checked_cells"] = len(notebook_run.checked_cells(nbformat.read(str(path), as_version=4)))
        assert not wrong, f"{relpath}: the run in the browser differs from the committed notebook:\n" + "\n".join(wrong)
        result["moved"] = move_explorers(nb, page, path, relpath, art, result) if bs.uses_widgets(path) else []
    except BaseException:
        try:
            page.screenshot(path=str(art / "failure.png"))
        except Exception:
            pass
        raise
    finally:
        page.close()
        server.shutdown_kernels()
        _say(capsys, f"{relpath}: screenshots in {art}")
    _check_offline(chromium, since, relpath, result)
    assert not page.writes, f"{relpath}: JupyterLab wrote to the notebook folder: {page.writes}"
    _record(f"source:{relpath}", **{k: v for k, v in result.items() if k != "notebook"})
    _say(capsys, f"{relpath}: opened in {result['open_s']} s, Run All {result['run_all_s']} s "
                 f"({result['load']}), {result['checked_cells']} checked cell(s) equal, "
                 f"{result.get('explorers', 0)} explorer(s) moved: "
                 + "; ".join(f"{m['explorer']}: {m['before']} -> {m['after']} ({m['redraw_s']} s)" for m in result["moved"]))
    return result


def exercise_student_notebook(server: bs.JupyterLabServer, chromium: bs.Chromium, path: Path, capsys) -> dict:
    """Open a student notebook, run it up to its first check; assert the friendly failure."""
    relpath = path.relative_to(server.root_dir).as_posix()
    index = bs.first_check_cell(path)
    if index is None:
        pytest.skip(f"{relpath} has no exercise check")
    art = bs.artifacts_dir(f"student/{path.stem}")
    since = len(chromium.blocked)
    page = chromium.new_page()
    result: dict = {"first_check_cell": index}
    try:
        nb = bs.LabNotebook(page, server, relpath).open()
        nb.focus_notebook()
        result["run_to_check_s"] = round(nb.run_up_to(index, timeout=RUN_TIMEOUT), 1)
        result["load"] = _load_note()
        cell = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(art / "first-check.png"))
        problems = nb.problems(upto=index)
        assert not problems, f"{relpath}: error/stderr output up to the first check:\n" + "\n".join(problems)
        never = nb.never_ran(upto=index)
        assert not never, f"{relpath}: code cells {never} (before the first check) did not run"
        text = nb.cell_text(index)
        seen = cell.locator(".jp-OutputArea").inner_text()
        assert "not written yet" in text and "not written yet" in seen, (
            f"{relpath}: the first check (cell {index}) did not print the friendly 'not written yet' message: {text!r}")
        assert "Traceback" not in text and "Traceback" not in seen, f"{relpath}: the first check printed a traceback"
        assert "CheckResult(" not in seen, f"{relpath}: the check cell also shows a CheckResult repr: {seen!r}"
    except BaseException:
        try:
            page.screenshot(path=str(art / "failure.png"))
        except Exception:
            pass
        raise
    finally:
        page.close()
        server.shutdown_kernels()
        _say(capsys, f"{relpath}: screenshot in {art}")
    _check_offline(chromium, since, relpath, result)
    assert not page.writes, f"{relpath}: JupyterLab wrote to the notebook folder: {page.writes}"
    _record(f"student:{relpath}", **result)
    _say(capsys, f"{relpath}: ran to its first check (cell {index}) in {result['run_to_check_s']} s ({result['load']})")
    return result


# ----------------------------------------------------------------------------------------
# The harness, on the fixture notebooks
# ----------------------------------------------------------------------------------------


def test_fixture_explorers_work_in_the_browser(fixture_lab, chromium, capsys):
    res = exercise_source_notebook(fixture_lab, chromium, fixture_lab.root_dir / bs.FIXTURE_NAME, capsys)
    assert res["explorers"] == 2 and res["saved_explorers"] == 2 and res["checked_cells"] == 1
    actions = [m["action"] for m in res["moved"]]
    assert actions[0].startswith("slider") and actions[1].startswith("dropdown"), actions
    assert res["moved"][0]["after"] == "showing: k=3"  # ArrowRight: one step up from k=2
    assert res["moved"][1]["after"] == "showing: colour=tab:orange"
    assert not (fixture_lab.root_dir / ".ipynb_checkpoints").exists(), "JupyterLab wrote checkpoints next to the notebook"


def test_fixture_student_check_fails_friendly(fixture_lab, chromium, capsys):
    student = fixture_lab.root_dir / "student" / bs.FIXTURE_NAME
    res = exercise_student_notebook(fixture_lab, chromium, student, capsys)
    assert res["first_check_cell"] == bs.first_check_cell(student)


def test_harness_rejects_errors_and_stderr(fixture_lab, chromium):
    """The checks above can fail: a notebook that phones home, writes to stderr and raises is caught."""
    since = len(chromium.blocked)
    page = chromium.new_page()
    try:
        nb = bs.LabNotebook(page, fixture_lab, bs.BROKEN_NAME).open()
        nb.focus_notebook()
        nb.run_all(timeout=120)
        problems = nb.problems()
        assert any("stderr" in p and "a stray warning" in p for p in problems), problems
        assert any("ZeroDivisionError" in p for p in problems), problems
        assert nb.never_ran() == [3], "Run All must stop at the failing cell"
        page.wait_for_timeout(500)
        assert any("telemetry.invalid" in r for r in chromium.phoned_home(since)), chromium.blocked[since:]
        assert not page.writes
        nb.focus_notebook()
        page.keyboard.press("Control+s")  # a save is seen (the notebook tests assert there is none)
        deadline = time.monotonic() + 30
        while not page.writes and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert any(w.startswith("PUT ") and w.endswith(bs.BROKEN_NAME) for w in page.writes), page.writes
    finally:
        page.close()
        fixture_lab.shutdown_kernels()


def test_harness_rejects_a_changed_output_and_a_network_attempt(fixture_lab, chromium):
    """The comparison and the kernel's network guard can fail: a checked cell whose committed
    output is wrong, and a kernel that looks up a host, are both reported."""
    net_since = len(notebook_run.attempts(fixture_lab.netlog))
    page = chromium.new_page()
    try:
        nb = bs.LabNotebook(page, fixture_lab, bs.MISMATCH_NAME).open()
        nb.focus_notebook()
        nb.run_all(timeout=120)
        assert nb.problems() == []
        wrong = check_run(nb, fixture_lab, fixture_lab.root_dir / bs.MISMATCH_NAME, net_since)
        assert any(w.startswith("cell 0 ") and "two and two make 4" in w and "make 5" in w for w in wrong), wrong
        assert any("network attempt" in w and "telemetry.invalid" in w for w in wrong), wrong
        assert "refused: gaierror" in nb.cell_text(1)
    finally:
        page.close()
        fixture_lab.shutdown_kernels()


def test_lab_server_stops_every_process_it_started(browser_ready, tmp_path):
    server = bs.JupyterLabServer(tmp_path, env=STUDENT_ENV)
    try:
        server.start()
        kernel = server.api("POST", "/api/kernels", {"name": "python3"})
        deadline = time.monotonic() + 60
        while len(server._children()) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.api("GET", f"/api/kernels/{kernel['id']}")["id"] == kernel["id"]
        server.pids_seen.update(server._children())
        assert len(server.pids_seen) >= 2, "the kernel process was not recorded"
    finally:
        server.stop()
    assert server.alive_pids() == [], f"processes left running: {server.alive_pids()}"


# ----------------------------------------------------------------------------------------
# The real notebooks (whatever exists when the suite runs)
# ----------------------------------------------------------------------------------------


def _params(paths: list[Path], none_reason: str):
    if not paths:
        return [pytest.param(None, marks=pytest.mark.skip(reason=none_reason), id="none")]
    return [pytest.param(p, id=p.name) for p in paths]


@pytest.mark.parametrize("path", _params(source_notebooks(), "no source notebook yet"))
def test_notebook_runs_in_the_browser(path, sources_lab, chromium, capsys):
    exercise_source_notebook(sources_lab, chromium, path, capsys)


@pytest.mark.parametrize("path", _params(bs.student_notebooks(), "no student notebook yet"))
def test_student_notebook_first_check_fails_friendly_in_the_browser(path, students_lab, chromium, capsys):
    exercise_student_notebook(students_lab, chromium, path, capsys)
