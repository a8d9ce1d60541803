"""Helpers for the real-browser test (`tests/test_browser.py`).

Three pieces:

- `JupyterLabServer`: starts ``jupyter lab`` on 127.0.0.1 on a free port with a random token,
  waits until it answers, and stops it *and every process it spawned* (kernels) by process id.
  Its settings turn off autosave (a test must never rewrite a committed notebook), news and
  update checks, and notebook windowing (so every cell is in the page).
- `launch_chromium`: headless Chromium from Debian's ``chromium`` package, driven by
  Playwright's Python package. Requests to anything but the local server are refused.
- `LabNotebook`: what a learner does in JupyterLab (open a notebook, Run All, move a slider),
  plus reads of what they would see (outputs, errors, widget status lines).

Nothing here downloads anything; ``scripts/install_browser.sh`` installs Chromium and Playwright.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

import notebook_run  # tests/ is on sys.path (conftest.py and test_browser.py put it there)
from mi_tutor.notebooks import merged_env

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = Path(os.environ.get("MI_TUTOR_CHROMIUM", "/usr/bin/chromium"))
#: the launch flags the issue asks for (+ a few that keep a fresh profile quiet and offline)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
]
REQUIRE_ENV = "MI_TUTOR_REQUIRE_BROWSER"

#: code that marks a notebook as one with widgets
#: (`Explorer(`, `timeline_explorer(`, `bb.mlp_explorer(`; not a static `plot_..._explorer(`)
WIDGET_CODE_RE = re.compile(r"\b(?!plot_)\w*[Ee]xplorer\s*\(|ipywidgets|mi_tutor\.widgets|\binteract(ive)?\s*\(")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# ----------------------------------------------------------------------------------------
# What is available, and which notebooks to test
# ----------------------------------------------------------------------------------------


def browser_requirements() -> str | None:
    """None if the browser test can run here, else the reason it cannot."""
    missing = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (Debian package `chromium`)")
    try:
        import playwright.sync_api  # noqa: F401
    except Exception:
        missing.append("the `playwright` Python package")
    if shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is None:
        missing.append("JupyterLab (`pip install -e .[lab]`)")
    if not missing:
        return None
    return "needs " + " and ".join(missing) + ": run scripts/install_browser.sh"


def browser_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "False")


def code_cells(path: Path) -> list[str]:
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def saved_widget_views(path: Path) -> int:
    """How many widget views the notebook's committed outputs hold."""
    nb = nbformat.read(str(path), as_version=4)
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if WIDGET_MIME in o.get("data", {})
    )


def saved_explorers(path: Path) -> int:
    """How many mi_tutor explorers the notebook's committed outputs hold (an Explorer's bundle
    says "interactive explorer" in its text/plain). Other widget views, such as tqdm bars with
    leave=False, disappear in a live frontend, so they are not counted."""
    nb = nbformat.read(str(path), as_version=4)
    n = 0
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            data = o.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            n += WIDGET_MIME in data and "interactive explorer" in text
    return n


def uses_widgets(path: Path) -> bool:
    """A notebook 'has widgets' if its code builds one (Explorer(...), an `*explorer*(...)`
    helper, ipywidgets, interact) or its committed outputs hold a widget view, or its
    metadata says so (``"mi_tutor": {"widgets": true}``)."""
    nb = nbformat.read(str(path), as_version=4)
    flag = nb.metadata.get("mi_tutor", {}).get("widgets")
    if flag is not None:
        return bool(flag)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return bool(WIDGET_CODE_RE.search(code)) or saved_widget_views(path) > 0


def widget_notebooks(root: Path = NOTEBOOKS) -> list[Path]:
    return [p for p in sorted(root.glob("[0-9][0-9]_*.ipynb")) if uses_widgets(p)]


def student_notebooks(root: Path = NOTEBOOKS) -> list[Path]:
    return sorted((root / "student").glob("[0-9][0-9]_*.ipynb"))


def first_check_cell(path: Path) -> int | None:
    """Index (among all cells) of the first ``check(...)`` code cell, or None."""
    nb = nbformat.read(str(path), as_version=4)
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and re.search(r"\bcheck\(", c.source)), None)


def artifacts_dir(name: str) -> Path:
    base = Path(os.environ.get("MI_TUTOR_ARTIFACTS", REPO / "artifacts")) / "browser" / name
    base.mkdir(parents=True, exist_ok=True)
    return base


# ----------------------------------------------------------------------------------------
# JupyterLab
# ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: user settings for the test's JupyterLab (JUPYTERLAB_SETTINGS_DIR)
LAB_SETTINGS = {
    # never write the notebook under test back to disk
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # every cell stays in the DOM, so the test sees every output
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no news feed, no update check
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
}


@dataclass
class JupyterLabServer:
    """``jupyter lab`` serving `root_dir` on 127.0.0.1; use as a context manager or call
    `start` / `stop`. `stop` ends the server and every process it spawned, by pid."""

    root_dir: Path
    env: dict[str, str | None] = field(default_factory=dict)
    startup_timeout: float = 120.0
    port: int = 0
    token: str = ""
    proc: subprocess.Popen | None = None
    #: pid -> create_time of the server and every process it spawned (kernels)
    pids_seen: dict[int, float] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "JupyterLabServer":
        self._tmp = tempfile.TemporaryDirectory(prefix="mi_tutor_lab_")
        tmp = Path(self._tmp.name)
        settings = tmp / "settings"
        for rel, value in LAB_SETTINGS.items():
            f = settings / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        for d in ("config", "runtime", "workspaces", "checkpoints"):
            (tmp / d).mkdir()
        self.port = free_port()
        self.token = secrets.token_hex(24)
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(tmp / "config"),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
        )
        env = merged_env(self.env, base=env)  # a None value removes a variable
        bindir = Path(sys.executable).parent
        cmd = [
            str(bindir / "jupyter"), "lab",
            "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}", "--ServerApp.password=",
            f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            # JupyterLab checkpoints every notebook it opens: keep those out of the repository
            f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}",
        ]
        self.log_path = tmp / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(self.root_dir), env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pids_seen.update({pid: t for pid, t in _descendants().items() if pid == self.proc.pid})
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise RuntimeError(f"jupyter lab did not answer within {self.startup_timeout:.0f} s:\n{tail}") from None
                time.sleep(0.3)
        return self

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """Call the server's REST API with the token."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def lab_url(self, relpath: str) -> str:
        return f"{self.url}/lab/tree/{relpath}?token={self.token}&reset"

    def _children(self) -> dict[int, float]:
        return _descendants(self.proc.pid)

    def shutdown_kernels(self) -> None:
        """Shut down every kernel the server runs (frees the memory of the notebook just tested)."""
        self.pids_seen.update(self._children())
        try:
            for k in self.api("GET", "/api/kernels", timeout=10) or []:
                try:
                    self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
                except Exception:
                    pass
        except Exception:
            pass

    def stop(self) -> None:
        """Stop the server, then end any process it spawned that is still alive, by pid."""
        if self.proc is None:
            return
        self.pids_seen.update(self._children())
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.pids_seen.update(self._children())
            self.proc.send_signal(signal.SIGTERM)  # jupyter server shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid, started in sorted(self.pids_seen.items()):
            if pid != self.proc.pid:
                _kill_pid(pid, started)
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def alive_pids(self) -> list[int]:
        """Pids this server started that still exist (for asserting a clean stop)."""
        import psutil

        out = []
        for pid, started in self.pids_seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - started) < 0.01 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except Exception:
            return ""

    def __enter__(self) -> "JupyterLabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_pid(pid: int, started: float | None = None, grace: float = 5.0) -> None:
    """SIGTERM one pid, then SIGKILL it if it is still there after `grace` seconds.
    `started` (the process's create_time when it was recorded) guards against a reused pid."""
    try:
        import psutil

        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 0.01:
            return  # not the process we started: its pid was reused
        p.terminate()
        try:
            p.wait(timeout=grace)
        except psutil.TimeoutExpired:
            p.kill()
    except Exception:
        pass


# ----------------------------------------------------------------------------------------
# Chromium
# ----------------------------------------------------------------------------------------


class Chromium:
    """Headless Chromium (Debian's) under Playwright, with a fresh profile; local requests only."""

    def __init__(self, viewport=(1400, 1000)):
        from playwright.sync_api import sync_playwright

        before = _descendants()
        self._pw = sync_playwright().start()
        self._profile = tempfile.TemporaryDirectory(prefix="mi_tutor_chromium_")
        #: (resource type, url) of every request refused (anything not on 127.0.0.1)
        self.blocked: list[tuple[str, str]] = []
        self.context = self._pw.chromium.launch_persistent_context(
            self._profile.name,
            executable_path=str(CHROMIUM),
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
            service_workers="block",
        )
        self.context.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"), self._refuse)
        #: the Playwright driver and Chromium processes this object started
        self.pids = {pid: t for pid, t in _descendants().items() if pid not in before}

    def _refuse(self, route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:", "about:")):
            route.continue_()
            return
        self.blocked.append((route.request.resource_type, url))
        route.abort()

    def phoned_home(self, since: int = 0) -> list[str]:
        """Refused requests made since index `since` that are not plain images: scripts, fetches,
        websockets, stylesheets... (a markdown image such as the Colab badge is only listed)."""
        return [f"{kind} {url}" for kind, url in self.blocked[since:] if kind != "image"]

    def new_page(self):
        """A new tab; `page.writes` lists every request it makes that would change a file
        (PUT/PATCH/DELETE on /api/contents: a save, a rename, a delete)."""
        page = self.context.new_page()
        page.set_default_timeout(60_000)
        page.writes = []

        def watch(request) -> None:
            if request.method in ("PUT", "PATCH", "DELETE") and "/api/contents" in request.url:
                page.writes.append(f"{request.method} {request.url.split('?')[0]}")

        page.on("request", watch)
        return page

    def close(self) -> None:
        """Close the browser; then end, by pid, any of its processes still alive."""
        try:
            self.context.close()
        finally:
            try:
                self._pw.stop()
            finally:
                for pid, started in sorted(self.pids.items()):
                    _kill_pid(pid, started, grace=2.0)
                self._profile.cleanup()


def _descendants(pid: int | None = None) -> dict[int, float]:
    """pid -> create_time of every descendant of `pid` (default: this process)."""
    import psutil

    out = {}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                out[p.pid] = p.create_time()
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return out


# ----------------------------------------------------------------------------------------
# A notebook in JupyterLab, as a learner sees it
# ----------------------------------------------------------------------------------------

#: JS: state of the current notebook panel's model (outputs by cell) and its kernel
_JS_STATE = """
() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  if (!w || !w.content || !w.content.model) return null;
  const sc = w.sessionContext;
  const kernel = sc && sc.session && sc.session.kernel;
  const cells = [];
  const model = w.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    const j = c.toJSON();
    cells.push({type: j.cell_type, count: j.execution_count ?? null, outputs: j.outputs || [],
                tags: (j.metadata && j.metadata.tags) || []});
  }
  return {kernel: kernel ? kernel.status : (sc ? sc.kernelDisplayStatus : 'none'),
          ready: !!(sc && sc.isReady), cells};
}
"""


class LabNotebook:
    """One notebook open in JupyterLab in a Playwright page."""

    def __init__(self, page, server: JupyterLabServer, relpath: str):
        self.page = page
        self.server = server
        self.relpath = relpath

    # -- opening ---------------------------------------------------------------------------

    def open(self, timeout: float = 120) -> "LabNotebook":
        page = self.page
        page.goto(self.server.lab_url(self.relpath), wait_until="domcontentloaded", timeout=timeout * 1000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=timeout * 1000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                               "&& window.jupyterapp.shell.currentWidget.content "
                               "&& window.jupyterapp.shell.currentWidget.content.model", timeout=timeout * 1000)
        self._accept_kernel_dialog()
        self.wait_kernel_ready(timeout)
        return self

    def _accept_kernel_dialog(self) -> None:
        """A notebook without kernel metadata asks which kernel to use: take the default."""
        dialog = self.page.locator(".jp-Dialog")
        try:
            dialog.wait_for(state="visible", timeout=3000)
        except Exception:
            return
        self.page.locator(".jp-Dialog .jp-mod-accept").click()

    def state(self) -> dict:
        return self.page.evaluate(_JS_STATE)

    def wait_kernel_ready(self, timeout: float = 120) -> None:
        self.page.wait_for_function(
            "() => { const sc = window.jupyterapp.shell.currentWidget.sessionContext;"
            " return sc && sc.isReady && sc.session && sc.session.kernel && sc.session.kernel.status === 'idle'; }",
            timeout=timeout * 1000,
        )

    # -- commands, the way a learner gives them ----------------------------------------------

    def menu(self, top: str, item: str) -> None:
        """Click ``top > item`` in JupyterLab's menu bar."""
        page = self.page
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{re.escape(top)}$")).click()
        entry = page.locator(".lm-Menu .lm-Menu-item:not(.lm-mod-hidden)").filter(
            has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")))
        entry.first.click()

    def focus_notebook(self) -> None:
        """Command mode on the notebook (Esc), as a learner's keyboard would start."""
        self.page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Escape")

    def clear_all_outputs(self) -> None:
        self.menu("Edit", "Clear Outputs of All Cells")
        self.page.wait_for_function("() => !document.querySelector('.jp-NotebookPanel .jp-OutputArea-output')",
                                    timeout=30_000)

    def run_all(self, timeout: float = 900) -> float:
        """Run > Run All Cells; wait until every cell has run (or one failed) and the kernel is idle.

        Returns the wall time in seconds."""
        t0 = time.monotonic()
        self.menu("Run", "Run All Cells")
        return self._wait_done(t0, timeout)

    def run_up_to(self, index: int, timeout: float = 900) -> float:
        """Run every cell above cell `index` (Run > Run All Above Selected Cell), then cell `index`."""
        self.select_cell(index)
        t0 = time.monotonic()
        if index > 0:
            self.menu("Run", "Run All Above Selected Cell")
            self._wait_done(t0, timeout)
        self.select_cell(index)
        self.page.keyboard.press("Control+Enter")
        return self._wait_done(t0, timeout, cell=index)

    def select_cell(self, index: int) -> None:
        cell = self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(index)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")
        self.page.wait_for_function(
            f"() => window.jupyterapp.shell.currentWidget.content.activeCellIndex === {index}", timeout=10_000)

    def _wait_done(self, t0: float, timeout: float, cell: int | None = None) -> float:
        page = self.page
        # 1. the run has started: some cell is queued/running, or (fast cells) has a count
        page.wait_for_function(
            "() => document.querySelector('.jp-NotebookPanel .jp-InputPrompt') && "
            "[...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
            ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
            timeout=60_000,
        )
        # 2. nothing is queued or running, and the kernel is idle (checked twice, 0.5 s apart)
        js = ("() => { const sc = window.jupyterapp.shell.currentWidget.sessionContext;"
              " const k = sc.session && sc.session.kernel;"
              " const busy = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
              "   .some(p => p.textContent.includes('[*]'));"
              " return !busy && k && k.status === 'idle'; }")
        deadline = t0 + timeout
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            page.wait_for_function(js, timeout=remaining * 1000, polling=250)
            page.wait_for_timeout(500)
            if page.evaluate(js):
                break
        if cell is not None:
            page.wait_for_function(
                f"() => window.jupyterapp.shell.currentWidget.content.model.cells.get({cell}).toJSON().execution_count !== null",
                timeout=30_000)
        return time.monotonic() - t0

    def add_cell_and_run(self, source: str, timeout: float = 120) -> str:
        """Add a code cell at the end (B in command mode), type `source`, run it; return its text output."""
        page = self.page
        n = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").count()
        self.select_cell(n - 1)
        page.keyboard.press("b")
        page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length === {n + 1}")
        page.keyboard.press("Enter")  # edit mode
        page.keyboard.insert_text(source)  # no auto-closed brackets, unlike typing key by key
        t0 = time.monotonic()
        page.keyboard.press("Control+Enter")
        self._wait_done(t0, timeout, cell=n)
        return self.cell_text(n)

    # -- reading what the learner sees ----------------------------------------------------------

    def cell_text(self, index: int) -> str:
        """The text outputs (stream + text/plain) of cell `index`, from the notebook model."""
        st = self.state()
        parts = []
        for o in st["cells"][index]["outputs"]:
            if o.get("output_type") == "stream":
                parts.append(_join(o.get("text", "")))
            elif o.get("output_type") in ("execute_result", "display_data"):
                parts.append(_join(o.get("data", {}).get("text/plain", "")))
            elif o.get("output_type") == "error":
                parts.append("\n".join(o.get("traceback", [])))
        return "".join(parts)

    def problems(self, upto: int | None = None) -> list[str]:
        """Error outputs and stderr text in the notebook (cells 0..upto), plus widgets that
        failed to render, each described in one line."""
        cells = self.state()["cells"][: None if upto is None else upto + 1]
        found = notebook_run.run_problems([c["outputs"] for c in cells], [c.get("tags", []) for c in cells], tracebacks=True)
        # what the page shows: widgets that failed to render, and stderr/errors printed
        # inside widget Output areas (those are not in the notebook model)
        dom = self.page.evaluate(
            "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')]"
            ".filter(e => /Error displaying widget|Error rendering/.test(e.innerText)"
            "   || (e.closest('.widget-output') && e.dataset.mimeType === 'application/vnd.jupyter.stderr'))"
            ".map(e => e.innerText)")
        found += [f"page: {t[:800]}" for t in dom]
        return found

    def never_ran(self, upto: int | None = None) -> list[int]:
        st = self.state()
        cells = st["cells"] if upto is None else st["cells"][: upto + 1]
        return [i for i, c in enumerate(cells) if c["type"] == "code" and c["count"] is None]

    def explorers(self):
        """Locators of the mi_tutor explorers in the page (the VBox holding a status line)."""
        return self.page.locator(".jp-NotebookPanel .widget-vbox").filter(
            has=self.page.locator(":scope > .widget-html .mi-tutor-status"))

    def widget_views(self) -> int:
        """How many cell outputs are widget views (nested widgets not counted)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output')]"
            ".filter(e => !e.parentElement.closest('.jupyter-widgets') && e.querySelector('.jupyter-widgets')).length")


def _join(x) -> str:
    return "".join(x) if isinstance(x, list) else str(x)



# ----------------------------------------------------------------------------------------
# Moving one control of an explorer
# ----------------------------------------------------------------------------------------


@dataclass
class ExplorerView:
    """What one explorer shows: its status line and the bytes of its figure."""

    status: str
    image: str
    title: str


def read_explorer(box) -> ExplorerView:
    status = box.locator(".mi-tutor-status").first.inner_text()
    imgs = box.locator(".widget-output img")
    image = imgs.first.get_attribute("src") if imgs.count() else ""
    header = box.locator(":scope > .widget-html b")
    title = header.first.inner_text() if header.count() else ""
    return ExplorerView(status=status, image=image or "", title=title)


def parse_status(status: str) -> dict[str, str]:
    """'showing: a=1, b=x' -> {'a': '1', 'b': 'x'} (values as the kernel printed them)."""
    body = status.split("showing:", 1)[-1].strip()
    out = {}
    for part in re.split(r",\s*(?=\w+=)", body):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def move_one_control(page, box) -> str:
    """Move the explorer's first slider one step (focus its handle, press an arrow key) or,
    if it has no slider, pick another option of its first dropdown, or else edit its first
    text box (type, press Enter). Returns what was done."""
    handles = box.locator(".widget-slider .noUi-handle, .widget-hslider .noUi-handle")
    if handles.count():
        h = handles.first
        h.scroll_into_view_if_needed()
        now = float(h.get_attribute("aria-valuenow"))
        hi = float(h.get_attribute("aria-valuemax"))
        key = "ArrowRight" if now < hi else "ArrowLeft"
        h.focus()
        page.keyboard.press(key)
        return f"slider: {key} from {now:g}"
    selects = box.locator(".widget-dropdown select")
    if selects.count():
        s = selects.first
        s.scroll_into_view_if_needed()
        options = s.locator("option")
        n = options.count()
        current = s.evaluate("e => e.selectedIndex")
        target = (current + 1) % n
        s.select_option(index=target)
        return f"dropdown: option {current} -> {target}"
    texts = box.locator(".widget-text input")
    if texts.count():  # e.g. a prompt editor: change one word, press Enter (continuous_update=False)
        t = texts.first
        t.scroll_into_view_if_needed()
        old = t.input_value()
        new = old.replace(" a ", " the ", 1) if " a " in old else old + " too"
        t.fill(new)
        t.press("Enter")
        return f"text: {old!r} -> {new!r}"
    raise AssertionError("this explorer has no slider, dropdown or text box to move")


#: a cell that asks the kernel what each explorer last rendered (values str()-ed the way the
#: status line prints them)
KERNEL_PROBE = ("import json as _j, mi_tutor.widgets as _w; print('LAST_VALUES=' + _j.dumps("
                "{t: {k: str(v) for k, v in d.items()} for t, d in _w.LAST_VALUES.items()}, sort_keys=True))")


def parse_probe(text: str) -> dict[str, dict[str, Any]]:
    m = re.search(r"LAST_VALUES=(\{.*\})", text)
    assert m, f"the kernel probe printed no LAST_VALUES: {text!r}"
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------------------
# A tiny fixture course: proves the harness works without the real notebooks
# ----------------------------------------------------------------------------------------

FIXTURE_NAME = "00_browser_fixture.ipynb"
FIXTURE_EXERCISE = "browser_fixture_double"

_FIXTURE_CELLS = [
    ("markdown", "# 00 · Browser fixture\nA tiny notebook made by `tests/browser_support.py`: two explorers and one exercise."),
    ("code", 'from mi_tutor import setup; env = setup()'),
    ("code", '# NBVAL_CHECK_OUTPUT\nimport time\nt0 = time.perf_counter()\nprint("fixture sum:", sum(range(5)))\n'
             'print(f"took {time.perf_counter() - t0:.4f} s")'),
    ("code", '''import numpy as np
import matplotlib.pyplot as plt
from mi_tutor.widgets import Explorer, slider, dropdown


def wave(k):
    """sin(kx): a figure that changes with k."""
    fig, ax = plt.subplots(figsize=(4, 2.2))
    x = np.linspace(0, 2 * np.pi, 400)
    ax.plot(x, np.sin(k * x))
    ax.set_title(f"sin({k}x)")
    return fig


Explorer(wave, {"k": slider(2, 1, 6, 1, "frequency k")}, title="fixture wave")'''),
    ("code", '''def bars(colour):
    """Three bars in one colour."""
    fig, ax = plt.subplots(figsize=(4, 2.2))
    ax.bar(range(3), [1, 3, 2], color=colour)
    ax.set_title(colour)
    return fig


Explorer(bars, {"colour": dropdown(["tab:blue", "tab:orange", "tab:green"], description="colour")}, title="fixture bars")'''),
    ("code", f'''import torch
from mi_tutor.exercises import REGISTRY, Exercise, Mistake, register

if "{FIXTURE_EXERCISE}" not in REGISTRY:  # the fixture registers its own exercise
    register(Exercise(
        name="{FIXTURE_EXERCISE}", notebook="{FIXTURE_NAME}", reference=lambda x: 2 * x,
        cases=lambda rng: [((torch.tensor(rng.normal(size=4)),), {{}}) for _ in range(3)],
        hints=["Multiply every entry by two."],
        mistakes=[Mistake("you added two instead of doubling", lambda x: x + 2)],
    ))'''),
    ("markdown", "**Exercise.** Write `double(x)`: a tensor of the same shape, every entry doubled."),
    ("code", '''def double(x):
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION'''),
    ("code", f'from mi_tutor import check\n\ncheck("{FIXTURE_EXERCISE}", double)'),
    ("code", 'print("after the check")'),
]


def write_fixture_course(root: Path) -> tuple[Path, Path]:
    """Write the fixture source notebook and its student version (made by mi_tutor's own
    generator) under `root`; return their paths."""
    from mi_tutor.notebooks import render_student, student_path

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in _FIXTURE_CELLS:
        nb.cells.append(nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src))
    root.mkdir(parents=True, exist_ok=True)
    src_path = root / FIXTURE_NAME
    nbformat.write(nb, str(src_path))
    dst = student_path(src_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(render_student(src_path))
    return src_path, dst


BROKEN_NAME = "01_browser_broken.ipynb"
MISMATCH_NAME = "02_browser_mismatch.ipynb"


def write_mismatch_notebook(root: Path) -> Path:
    """A notebook whose run must be rejected by the output comparison and the network guard:
    its checked cell's committed output is wrong, and its kernel tries to resolve a host."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    checked = nbformat.v4.new_code_cell('# NBVAL_CHECK_OUTPUT\nprint("two and two make", 2 + 2)')
    checked.outputs = [nbformat.v4.new_output("stream", name="stdout", text="two and two make 5\n")]
    phone = nbformat.v4.new_code_cell('import socket\ntry:\n    socket.getaddrinfo("telemetry.invalid", 443)\n'
                                      'except OSError as e:\n    print("refused:", type(e).__name__)')
    nb.cells = [checked, phone]
    path = root / MISMATCH_NAME
    nbformat.write(nb, str(path))
    return path


def write_broken_notebook(root: Path) -> Path:
    """A notebook the harness must reject: it phones home, writes to stderr, then raises."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('from IPython.display import Javascript\n'
                                  'Javascript("fetch(\'https://telemetry.invalid/ping\').catch(() => 0)")'),
        nbformat.v4.new_code_cell('import sys\nprint("a stray warning", file=sys.stderr)'),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell('print("never reached")'),
    ]
    root.mkdir(parents=True, exist_ok=True)
    path = root / BROKEN_NAME
    nbformat.write(nb, str(path))
    return path
