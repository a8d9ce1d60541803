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


def test_benchmark_table_says_which_budgets_are_met():
    from mi_tutor import bench

    results = {"machine": "x", "loadavg_start": "0.1", "date": "d",
               "notebooks": {"00_a": {"wall_s": 30.0, "cpu_s": 25.0, "peak_rss_gb": 0.5, "error": None},
                             "03_b": {"wall_s": 200.0, "cpu_s": 150.0, "peak_rss_gb": 1.0, "error": None},
                             "04_c": {"wall_s": 10.0, "cpu_s": 9.0, "peak_rss_gb": 1.6, "error": None},
                             "06_d": {"error": "CellExecutionError: boom"}},
               "patching": {"1": {"threads": 1, "tokens": 15, "heads": 270, "transformer_lens_s": 60.0,
                                  "growing_batch_s": 6.0, "fast_llama_s": 4.0, "attribution_s": 0.5,
                                  "speedup_growing_batch": 10.0, "speedup_fast_llama": 15.0, "speedup_attribution": 120.0,
                                  "max_abs_diff_exact": 1e-5, "attribution_correlation": 0.9}}}
    md = bench.to_markdown(results)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| notebook")}
    cells = lambda name: [c.strip() for c in rows[name].strip(" |").split("|")]  # noqa: E731
    assert cells("notebook 00_a")[6] == "met" and cells("notebook 00_a")[7:] == ["-", "-"]
    assert "MISSED" in rows["notebook 03_b"]          # 200 s > 180 s
    assert "MISSED" in rows["notebook 04_c"]          # 1.6 GB > 1.5 GB
    assert "ERROR" in rows["notebook 06_d"]
    assert "| 1 | 60.0 | 6.0 | 4.0 | 0.50 | 10.0x | 15.0x | 120x |" in md
    # beside a busy process: the ratio to the quiet run, and the suite's parts
    results["notebooks_beside_busy"] = {"00_a": {"wall_s": 45.0, "error": None}, "03_b": {"error": "boom"}}
    results["suite"] = {"quiet": {"wall_s": 1500.0, "exit_status": 0, "pytest": "433 passed",
                                  "recorded": {"workers": 2, "loadavg_end": "1.0",
                                               "parts": {"unit tests": {"seconds": 300.0, "tests": 400}}}}}
    md2 = bench.to_markdown(results)
    rows = {line.split("|")[1].strip(): line for line in md2.splitlines() if line.startswith("| notebook")}
    assert cells("notebook 00_a")[7:] == ["45.0", "1.50x"] and cells("notebook 03_b")[7:] == ["ERROR", "-"]
    assert "The suite as CI runs it (quiet): 25.0 min wall" in md2 and "| unit tests | 300 | 400 |" in md2
    del results["notebooks_beside_busy"], results["suite"]
    # the floor, with the matmul throughput the reproducibility pin gives up (or "-" where not measured)
    results["patching"]["1"].update(fast_llama_gflop=300.0, matmul_peak_gflops=100.0, floor_s=3.0)
    assert "| 1 | 300 | 100 | 3.0 | 4.0 | 75% | 20.0x | - |" in bench.to_markdown(results)
    results["patching"]["1"]["matmul_peak_unpinned_gflops"] = 155.0
    md3 = bench.to_markdown(results)
    assert "| 1 | 300 | 100 | 3.0 | 4.0 | 75% | 20.0x | 155 |" in md3 and "MKL_CBWR=AVX2,STRICT" in md3
    for key in ("fast_llama_gflop", "matmul_peak_gflops", "floor_s", "matmul_peak_unpinned_gflops"):
        del results["patching"]["1"][key]
    # a results file from before the fast engine existed still renders
    del results["patching"]["1"]["fast_llama_s"], results["patching"]["1"]["speedup_fast_llama"]
    assert "| 1 | 60.0 | 6.0 | - | 0.50 | 10.0x | - | 120x |" in bench.to_markdown(results)


def test_benchmark_reports_whether_thread_count_changes_the_patching_results():
    from mi_tutor import bench

    runs = {"1": {"fast_values": [0.5, -1.0, 2.0]}, "2": {"fast_values": [0.5, -1.00003, 2.0]}, "4": {"error": "boom"}}
    agree = bench.thread_agreement(runs)["thread_agreement"]
    assert list(agree) == ["2"] and agree["2"]["heads_differing"] == 1 and abs(agree["2"]["max_abs_diff"] - 3e-5) < 1e-9
    md = bench.to_markdown({"machine": "x", "loadavg_start": "0", "date": "d", "notebooks": {},
                            "patching": {"thread_agreement": agree}})
    assert "differs from one thread in 1 of 3 head effects, by at most 3.0e-05" in md and "run on one thread" in md
    same = bench.thread_agreement({"1": {"fast_values": [1.0]}, "2": {"fast_values": [1.0]}})["thread_agreement"]
    assert same["2"]["heads_differing"] == 0
    assert bench.thread_agreement({"2": {"fast_values": [1.0]}}) == {}


def _demo_checkout(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\n"),
                nbformat.v4.new_code_cell('check("f", f)')]
    src = tmp_path / "notebooks" / "98_demo.ipynb"
    nbformat.write(nb, str(src))
    monkeypatch.setattr(notebooks, "repo_root", lambda: tmp_path)
    return src, nb


def test_student_check_exits_nonzero_when_a_student_notebook_is_stale(tmp_path, monkeypatch, capsys):
    src, nb = _demo_checkout(tmp_path, monkeypatch)
    assert cli.main(["student", "--check"]) == 1                    # never generated
    assert "notebooks/student/98_demo.ipynb" in capsys.readouterr().err
    assert not (tmp_path / "notebooks" / "student").exists()        # --check writes nothing
    assert cli.main(["student"]) == 0
    assert cli.main(["student", "--check"]) == 0
    nb.cells[0].source = nb.cells[0].source.replace("42", "43")     # a solution-only edit: students unchanged
    nbformat.write(nb, str(src))
    assert cli.main(["student", "--check"]) == 0
    nb.cells.append(nbformat.v4.new_markdown_cell("New section."))  # edit the source, forget to regenerate
    nbformat.write(nb, str(src))
    capsys.readouterr()
    assert cli.main(["student", "--check"]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "mi-tutor student" in err


def test_student_check_passes_on_this_checkout():
    r = subprocess.run([sys.executable, "-m", "mi_tutor.cli", "student", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_checkout_commands_say_so_when_run_from_an_installed_wheel(tmp_path, monkeypatch, capsys):
    # Installed from a wheel, repo_root() is site-packages: no notebooks/ beside the package.
    monkeypatch.setattr(notebooks, "repo_root", lambda: tmp_path)
    for cmd in (["student"], ["student", "--check"], ["execute"], ["bench"]):
        assert cli.main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert f"mi-tutor {cmd[0]} needs a checkout" in err and "git clone https://github.com/mi-tutor/mi_tutor" in err
        assert len(err.strip().splitlines()) == 1


def test_hint_cells_are_rewritten_from_the_exercises_hints_and_keep_their_other_text():
    from mi_tutor.exercises import REGISTRY

    old = "<details><summary>Hint 1</summary>\n\nold text\n</details>\n<details><summary>Hint 2</summary>\n\nx\n</details>"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('check("least_squares", least_squares)'),
        nbformat.v4.new_markdown_cell("Stuck?\n\n" + old + "\n\n### Next section"),
        nbformat.v4.new_markdown_cell(old),  # not after a check cell: left alone
    ])
    assert notebooks.sync_hints(nb) == 1
    text = nb.cells[1].source
    assert text.startswith("Stuck?\n\n") and text.endswith("</details>\n\n### Next section") and "old text" not in text
    hints = REGISTRY["least_squares"].hints
    assert all(f"<summary>Hint {i}</summary>\n\n{h}\n</details>" in text for i, h in enumerate(hints, 1))
    assert nb.cells[2].source == old
    assert notebooks.sync_hints(nb) == 0  # idempotent
