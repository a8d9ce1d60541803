"""run.sh repairs a broken virtual environment instead of staying stuck (bash level, seconds).

The failure it guards against: on Debian/Ubuntu/WSL without python3-venv, `python3 -m venv`
fails but leaves `.venv/bin/python` without pip, and every later run died with
"No module named pip" until the user deleted `.venv` by hand.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_SH = ROOT / "run.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="run.sh needs bash")


def ensure_venv(venv: Path, **env) -> subprocess.CompletedProcess:
    """Source run.sh (defines its functions, runs nothing) and call its ensure_venv."""
    full = dict(os.environ, MI_TUTOR_VENV=str(venv), **env)
    return subprocess.run(["bash", "-c", f'source "{RUN_SH}" && ensure_venv'],
                          capture_output=True, text=True, env=full, timeout=300)


def has_pip(venv: Path) -> bool:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


def test_a_venv_without_pip_is_detected_and_rebuilt(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert (venv / "bin" / "python").exists() and not has_pip(venv)   # the half-made state

    r = ensure_venv(venv, MI_TUTOR_PYTHON=sys.executable)

    assert r.returncode == 0, r.stdout + r.stderr
    assert "is broken" in r.stdout and "rebuilding" in r.stdout
    assert has_pip(venv)


def test_a_python_without_the_venv_module_gets_told_which_package_to_install(tmp_path):
    # Emulate Debian's python3 without python3-venv: `-m venv` leaves a pip-less venv and fails.
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then\n'
        f'  "{sys.executable}" -m venv --without-pip "$3"\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    fake.chmod(0o755)
    venv = tmp_path / "venv"

    r = ensure_venv(venv, MI_TUTOR_PYTHON=str(fake))

    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    minor = "%d.%d" % sys.version_info[:2]
    if shutil.which("apt-get"):
        assert f"sudo apt install python{minor}-venv" in r.stderr, r.stderr
    else:
        assert "no ensurepip/venv module" in r.stderr, r.stderr
    assert not venv.exists(), "the half-made venv must not be left behind"


def test_a_folder_that_is_not_a_venv_is_never_deleted(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "precious.txt").write_text("user data")

    r = ensure_venv(venv, MI_TUTOR_PYTHON=sys.executable)

    assert r.returncode == 1 and "is not a virtual environment" in r.stderr
    assert (venv / "precious.txt").exists()


def test_the_setup_stamp_covers_the_lock():
    # A changed constraints.txt must trigger a reinstall, like a changed pyproject.toml.
    text = RUN_SH.read_text()
    setup = text[text.index("setup() {"):]
    assert "cat pyproject.toml run.sh constraints.txt" in setup.split("\n}\n")[0]


def constraints_on(tmp_path: Path, system: str, machine: str) -> subprocess.CompletedProcess:
    """run.sh's constraints_for_platform under a fake `uname` (macOS cannot be run here)."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir(exist_ok=True)
    uname = fakebin / "uname"
    uname.write_text(f'#!/usr/bin/env bash\nif [ "${{1:-}}" = -m ]; then echo {machine}; else echo {system}; fi\n')
    uname.chmod(0o755)
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    env = dict(os.environ, MI_TUTOR_VENV=str(venv), PATH=f"{fakebin}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", f'source "{RUN_SH}" && constraints_for_platform'],
                          capture_output=True, text=True, env=env, timeout=60)


def test_linux_installs_the_lock_as_is(tmp_path):
    r = constraints_on(tmp_path, "Linux", "x86_64")
    assert r.returncode == 0 and r.stdout.strip() == str(ROOT / "constraints.txt")


def test_apple_silicon_drops_only_the_torch_pin(tmp_path):
    r = constraints_on(tmp_path, "Darwin", "arm64")
    assert r.returncode == 0, r.stderr
    lock = (ROOT / "constraints.txt").read_text().splitlines()
    mac = Path(r.stdout.strip()).read_text().splitlines()
    assert [l for l in lock if l not in mac] == ["torch==2.13.0"]


def test_intel_macs_are_refused_in_one_line(tmp_path):
    r = constraints_on(tmp_path, "Darwin", "x86_64")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Intel Macs are not supported" in r.stderr and "Colab" in r.stderr
