"""Offline and no telemetry: with every network connection refused and recorded, the offline
model loads and `auto` loads it without probing the network. Every notebook the suite executes
also runs its kernel under this guard and must attempt no connection at all (not
circuitsvis's ping, not the hub, not wandb): see `notebook_run` and `test_browser.py`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import notebook_run

from mi_tutor.notebooks import merged_env

attempts = notebook_run.attempts


def guarded_env(log: Path) -> dict:
    """This process's environment with the guard on, HF_HUB_OFFLINE unset (the code must be
    offline by itself, not by this flag) and no model pinned."""
    return merged_env({**notebook_run.guarded_env(log), "MI_TUTOR_MODEL": None})


def run_py(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_the_guard_refuses_and_records(tmp_path):
    log = tmp_path / "net.log"
    r = run_py("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org', timeout=2)\n"
               "except Exception as e:\n    print(type(e).__name__)", guarded_env(log))
    assert "URLError" in r.stdout or "gaierror" in r.stdout, r.stdout + r.stderr
    assert any("example.org" in a for a in attempts(log))


def test_offline_model_loads_with_no_connection_attempt(tmp_path):
    log = tmp_path / "net.log"
    r = run_py("from mi_tutor import setup; setup(quiet=True)\n"
               "from mi_tutor.models import load_lm; m = load_lm('smollm2-135m')\n"
               "import torch; from mi_tutor.plots import attention_view\n"
               # circuitsvis pings google.com on every render unless mi_tutor stops it
               "html = attention_view(['a', 'b'], torch.eye(2)[None])._repr_html_()\n"
               "print('layers', m.cfg.n_layers, 'circuitsvis html', len(html) > 1000)", guarded_env(log))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "layers 30 circuitsvis html True" in r.stdout
    assert attempts(log) == [], attempts(log)
    assert r.stderr.strip() == "", f"loading printed to stderr: {r.stderr[-500:]}"


def test_auto_mode_loads_the_tested_model_without_probing_the_network(tmp_path):
    log = tmp_path / "net.log"
    r = run_py("from mi_tutor.models import load_lm; load_lm('auto')", guarded_env(log))
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [l for l in r.stdout.splitlines() if l.startswith("[mi_tutor]")]
    assert "smollm2-135m" in line and "tested on" in line
    # auto no longer depends on the network, so it does not even probe the hub
    assert attempts(log) == [], attempts(log)
