"""The mi-tutor command: doctor reports the set-up; student regenerates student notebooks."""
from __future__ import annotations

import subprocess
import sys

import nbformat

from mi_tutor import cli, notebooks


def test_doctor_reports_versions_platform_cache_and_models(capsys):
    report = cli.doctor(check_hub=False)
    out = capsys.readouterr().out
    for key in ("torch", "transformer-lens", "platform", "cache_dir", "smollm2-135m", "gpt2", "hub_reachable"):
        assert key in report and key in out
    assert report["torch"].startswith("2.13.0")
    assert report["smollm2-135m"].startswith("available")


def test_student_command_writes_student_notebooks(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\n"),
                nbformat.v4.new_code_cell('check("f", f)')]
    nbformat.write(nb, str(tmp_path / "notebooks" / "98_demo.ipynb"))
    monkeypatch.setattr(notebooks, "repo_root", lambda: tmp_path)
    assert cli.main(["student"]) == 0
    student = (tmp_path / "notebooks" / "student" / "98_demo.ipynb").read_text()
    assert "return 42" not in student and "NotImplementedError" in student


def test_cli_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "mi_tutor.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "doctor" in r.stdout and "student" in r.stdout
