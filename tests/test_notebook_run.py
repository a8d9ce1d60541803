"""The notebook checks that every execution of a notebook goes through (`notebook_run`)."""
from __future__ import annotations

from types import SimpleNamespace

import nbformat
import pytest

import notebook_run as nr


def _nb(*cells: tuple[str, list[dict]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for source, outputs in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        nb.cells.append(cell)
    return nb


def out(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def fig(png: str = "AAAA", plain: str = "<Figure size 640x480 with 1 Axes>") -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {"image/png": png, "text/plain": plain}}


CHECKED = "# NBVAL_CHECK_OUTPUT\nprint(x)"


def test_the_same_outputs_match():
    nb = _nb((CHECKED, [out("LD 3.392\n"), fig()]))
    assert nr.compare_checked_outputs(nb, [c.outputs for c in nb.cells]) == []


def test_a_changed_number_is_reported_with_its_cell_and_a_diff():
    nb = _nb(("x = 1", []), (CHECKED, [out("mean LD 3.39\nIO > S 100%\n")]))
    problems = nr.compare_checked_outputs(nb, [[], [out("mean LD 3.41\nIO > S 100%\n")]])
    assert len(problems) == 1
    assert problems[0].startswith("cell 1 (print(x))") and "-mean LD 3.39" in problems[0] and "+mean LD 3.41" in problems[0]


def test_unchecked_cells_and_images_are_not_compared():
    nb = _nb(("print(y)", [out("anything\n")]), (CHECKED, [fig(png="AAAA")]))
    assert nr.compare_checked_outputs(nb, [[out("something else\n")], [fig(png="BBBB")]]) == []


def test_times_addresses_and_digits_past_the_third_decimal_are_sanitized():
    nb = _nb((CHECKED, [out("took 12.5 s at 0x7f00aa, r = 0.123456\n")]))
    assert nr.compare_checked_outputs(nb, [[out("took 3 s at 0x55bb01, r = 0.123499\n")]]) == []
    assert nr.compare_checked_outputs(nb, [[out("took 3 s at 0x55bb01, r = 0.124\n")]]) != []


def test_streams_split_or_merged_compare_equal_and_carriage_returns_apply():
    nb = _nb((CHECKED, [out("a\n"), fig(), out("b\n"), out("oops", "stderr")]))
    merged = [out("a\nb\n"), fig(), out("oops", "stderr")]
    assert nr.compare_checked_outputs(nb, [merged]) == []
    assert nr.coalesce_streams([out("10%\r"), out("100%\ndone\n")])[0]["text"] == "100%\ndone\n"
    assert nr.coalesce_streams([out("abc\x08\x08d\n")])[0]["text"] == "ad\n"


def test_a_missing_or_extra_output_is_reported():
    nb = _nb((CHECKED, [out("a\n"), fig()]))
    assert "missing ['image/png', 'text/plain']" not in " ".join(nr.compare_checked_outputs(nb, [[out("a\n")]]))
    assert "missing ['text/plain']" in nr.compare_checked_outputs(nb, [[out("a\n")]])[0]
    assert "unexpected ['stream:stderr']" in nr.compare_checked_outputs(nb, [[out("a\n"), fig(), out("w", "stderr")]])[0]
    assert "2 text/plain output(s), committed 1" in nr.compare_checked_outputs(nb, [[out("a\n"), fig(), fig()]])[0]


def test_a_different_cell_count_is_reported():
    nb = _nb((CHECKED, [out("a\n")]))
    assert "2 cells" in nr.compare_checked_outputs(nb, [[], []])[0]


def test_run_problems_lists_errors_and_stderr_but_allows_tagged_cells():
    err = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    found = nr.run_problems([[err], [err], [out("warn", "stderr")], [out("ok\n")]], [[], ["raises-exception"], [], []])
    assert found == ["cell 0: error ValueError: bad", "cell 2: stderr: warn"]
    err["traceback"] = ["\x1b[31mValueError\x1b[0m", "at line 3"]
    assert nr.run_problems([[err]], [[]], tracebacks=True) == ["cell 0: error ValueError: bad\nValueError\nat line 3"]


def test_sanitizers_are_read_in_order_from_the_config():
    pairs = nr.load_sanitizers()
    assert [p.pattern for p, _ in pairs][:2] == ["0x[0-9a-fA-F]+", "/[^\\s'\"]*/ipykernel_\\d+/\\d+\\.py"]
    assert len(pairs) == 5


def test_guarded_env_unsets_the_offline_flag_and_adds_the_guard(tmp_path):
    env = nr.guarded_env(tmp_path / "log", {"PYTHONPATH": "/x"})
    assert env["HF_HUB_OFFLINE"] is None and env["PYTHONPATH"].endswith(":/x")
    assert env["PYTHONPATH"].startswith(str(nr.GUARD)) and env["MI_TUTOR_NETGUARD_LOG"] == str(tmp_path / "log")


@pytest.mark.parametrize("ready", [True, False])
def test_browser_coverage_names_the_notebooks_the_selected_browser_tests_run(ready):
    def item(name, path):
        return SimpleNamespace(originalname=name, callspec=SimpleNamespace(params={"path": path}))

    items = [item(nr.SOURCE_TEST, "/r/notebooks/03_ioi.ipynb"), item(nr.STUDENT_TEST, "/r/notebooks/student/01_grokking.ipynb"),
             item("test_something_else", "/r/notebooks/04_successor_heads.ipynb"), SimpleNamespace(originalname="t")]
    got = nr.browser_coverage(items, ready)
    if ready:
        assert got == {"source": {"03_ioi.ipynb"}, "student": {"01_grokking.ipynb"}}
    else:
        assert got == {"source": set(), "student": set()}
