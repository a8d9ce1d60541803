"""The training loop, the exercise-check pattern, the student generator, widgets and setup."""
from __future__ import annotations

import math
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch

from mi_tutor import env as mt_env
from mi_tutor import notebooks as nbt
from mi_tutor.exercises import core
from mi_tutor.training import History, LivePlot, accuracy, batched, plot_history, train


# ---------------------------------------------------------------- training
def test_train_records_history_and_learns():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)

    def step(_s):
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    h = train(step, 100, eval_fn=lambda s: {"w0": w[0].item()}, eval_every=10, progress=False)
    assert h.steps == list(range(0, 100, 10)) + [100]
    assert abs(h.last("w0") - 1.0) < 1e-2
    assert h.first_step_where("w0", lambda v: v > 0.5) is not None
    assert History.from_dict(h.to_dict()).metrics == h.metrics


def test_train_stops_early_and_continues():
    h = train(lambda s: 1.0, 50, eval_fn=lambda s: {"s": s}, eval_every=5, stop_when=lambda h: h.last("s") >= 20,
              progress=False)
    assert h.stopped_early and h.steps[-1] == 20
    h2 = train(lambda s: 1.0, 10, eval_fn=lambda s: {"s": s}, eval_every=5, progress=False, history=h, start_step=21)
    assert h2.steps[-1] == 31


def test_train_refuses_nan_loss():
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(lambda s: float("nan"), 5, progress=False)


def test_history_pads_late_metrics():
    h = History()
    h.log(0, {"a": 1})
    h.log(1, {"a": 2, "b": 3})
    assert math.isnan(h["b"][0]) and h["b"][1] == 3


def test_plot_history_and_liveplot_outside_ipython():
    h = History()
    for s in range(5):
        h.log(s, {"loss": 1 / (s + 1), "acc": s / 5})
    fig = plot_history(h, [["loss"], ["acc"]], logy=[True, False], marks={"grok": 3})
    assert len(fig.axes) == 2
    live = LivePlot([["loss"]])
    live.update(h)  # no IPython: does nothing, no error
    assert live.close(h) is not None


def test_small_helpers():
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])) == 0.5


# ---------------------------------------------------------------- exercise checks
def _square(x):
    return x ** 2


@pytest.fixture()
def square_exercise():
    ex = core.Exercise(
        name="_test_square", notebook="test", reference=_square,
        cases=lambda rng: [((torch.tensor(rng.normal(size=4)),), {}) for _ in range(3)],
        hints=["multiply x by itself"],
        mistakes=[core.Mistake("you doubled instead of squaring", lambda x: 2 * x)],
    )
    core.REGISTRY[ex.name] = ex
    yield ex
    core.REGISTRY.pop(ex.name, None)


def test_check_passes_reference_and_prints_one_line(square_exercise, capsys, monkeypatch):
    monkeypatch.delenv(mt_env.STRICT_ENV, raising=False)
    assert core.check("_test_square", lambda x: x * x) is None  # a bare check(...) cell shows only the verdict
    assert capsys.readouterr().out.strip() == "✔ _test_square: correct on 3 fresh inputs."


def test_check_names_the_mistake_and_gives_a_hint(square_exercise):
    r = core.run_check("_test_square", lambda x: 2 * x)
    assert not r.passed and r.mistake == "you doubled instead of squaring"
    assert "Hint: multiply x by itself" in r.message


def test_check_reports_shape_errors_and_exceptions_without_traceback(square_exercise):
    r = core.run_check("_test_square", lambda x: (x ** 2)[:2])
    assert "shape (2,), expected (4,)" in r.message and r.mistake is None
    r = core.run_check("_test_square", lambda x: x.nonexistent())
    assert "raised AttributeError" in r.message and "Traceback" not in r.message
    r = core.run_check("_test_square", lambda x: (_ for _ in ()).throw(NotImplementedError()))
    assert r.not_implemented and "not written yet" in r.message


def test_check_inputs_are_not_shared_with_the_reference(square_exercise):
    def mutating(x):
        x.mul_(0)  # a learner mutating its input must not corrupt the reference's copy
        return x
    r = core.run_check("_test_square", mutating)
    assert not r.passed


def test_strict_mode_raises(square_exercise, monkeypatch):
    monkeypatch.setenv(mt_env.STRICT_ENV, "1")
    with pytest.raises(core.ExerciseFailed, match="_test_square"):
        core.check("_test_square", lambda x: 2 * x)


def test_unknown_exercise_lists_known_ones(square_exercise):
    r = core.run_check("no_such_exercise_zzz", _square)  # one line, not a KeyError traceback
    assert not r.passed and r.kind == "usage" and "_test_square" in r.message


@pytest.mark.parametrize("got,want,needle", [
    (torch.zeros(3), torch.zeros(3), None),
    ([1.0, 2.0], torch.tensor([1.0, 2.0]), "is a list, expected a torch.Tensor"),  # types are strict (issue 21)
    (np.zeros((2, 2)), torch.zeros(2, 3), "numpy array; the task asks for a torch.Tensor"),
    (torch.zeros(2, 2), torch.zeros(2, 3), "shape (2, 2), expected (2, 3)"),
    ("x", torch.zeros(2), "expected a torch.Tensor"),
    (1.0, 1.5, "is 1, expected 1.5"),
    ({"a": 1.0}, {"a": 1.0, "b": 2.0}, "keys"),
    ((1, 2), (1, 2, 3), "has 2 items, expected 3"),
    (torch.tensor([float("nan")]), torch.tensor([1.0]), "NaN"),
])
def test_compare_values(got, want, needle):
    msg = core.compare_values(got, want)
    assert (msg is None) if needle is None else (needle in msg)


# ---------------------------------------------------------------- student generator
SOLUTION_CELL = '''import torch

def double(x):
    """Twice x."""
    ### BEGIN SOLUTION
    y = x + x
    return y
    ### END SOLUTION
'''


def _toy_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 99 · Test"),
        nbformat.v4.new_code_cell(SOLUTION_CELL),
        nbformat.v4.new_code_cell('check("double", double)'),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    return nb


def test_stub_replaces_solution_at_its_indentation():
    out = nbt.stub_solution(SOLUTION_CELL)
    assert "y = x + x" not in out and "BEGIN SOLUTION" not in out
    assert "    raise NotImplementedError()" in out and '"""Twice x."""' in out
    ns = nbt.run_cell_source(out)
    with pytest.raises(NotImplementedError):
        ns["double"](1)


@pytest.mark.parametrize("bad", ["### BEGIN SOLUTION\nx", "### END SOLUTION", "### BEGIN SOLUTION\n### BEGIN SOLUTION"])
def test_malformed_solution_markers_are_errors(bad):
    with pytest.raises(ValueError):
        nbt.stub_solution(bad)


def test_make_student_clears_outputs_and_adds_banner(tmp_path):
    student = nbt.make_student(_toy_notebook(), "99_test.ipynb")
    assert "Student version" in student.cells[0].source
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    assert "y = x + x" not in nbformat.writes(student)


def test_find_exercises_pairs_solution_with_check(tmp_path):
    p = tmp_path / "99_test.ipynb"
    nbformat.write(_toy_notebook(), str(p))
    (ex,) = nbt.find_exercises(p)
    assert (ex.check_name, ex.function_name) == ("double", "double")
    assert nbt.defined_functions(ex.solution_source) == ["double"]


def test_solution_without_check_cell_is_an_error(tmp_path):
    nb = _toy_notebook()
    nb.cells = nb.cells[:2]
    p = tmp_path / "99_test.ipynb"
    nbformat.write(nb, str(p))
    with pytest.raises(ValueError, match="not followed by a check"):
        nbt.find_exercises(p)


def test_slim_outputs_drops_circuitsvis_bundles():
    nb = _toy_notebook()
    nb.cells[2].outputs = [nbformat.v4.new_output("display_data", data={"text/html": "<div id='circuits-vis-1'>" + "x" * 10000})]
    nbt.slim_outputs(nb)
    (out,) = nb.cells[2].outputs
    assert "text/html" not in out["data"] and "circuitsvis" in out["data"]["text/plain"]


# ---------------------------------------------------------------- widgets and setup
def test_explorer_redraws_and_carries_a_static_png():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mi_tutor.widgets import LAST_VALUES, Explorer, dropdown, slider

    calls = []

    def plot(a, kind):
        calls.append((a, kind))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, a])
        ax.set_title(kind)
        return fig

    ex = Explorer(plot, {"a": slider(1, 0, 5), "kind": dropdown(["x", "y"])}, title="test explorer")
    bundle = ex._repr_mimebundle_()
    assert set(bundle) == {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"}
    png_before = bundle["image/png"]
    ex.set(a=4)
    assert calls[-1] == (4, "x") and LAST_VALUES["test explorer"] == {"a": 4, "kind": "x"}
    assert ex._repr_mimebundle_()["image/png"] != png_before
    assert "a=4" in ex.status.value


def test_setup_is_quiet_seeded_and_offline(capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    env = mt_env.setup(seed=7)
    line = capsys.readouterr().out.strip()
    assert line.startswith("mi_tutor ready:") and "seed 7" in line
    import os
    assert os.environ["WANDB_MODE"] == "disabled"
    a = torch.rand(3)
    mt_env.setup(seed=7, quiet=True)
    assert torch.equal(a, torch.rand(3))
    assert torch.get_num_threads() == 1 and env.threads == 1  # identical numbers on every machine
    import circuitsvis.utils.render as render
    assert render.internet_on() is False
    assert env.platform in ("local", "colab", "binder")


@pytest.mark.parametrize("var,value,expected", [("COLAB_RELEASE_TAG", "x", "colab"), ("BINDER_SERVICE_HOST", "x", "binder")])
def test_platform_detection(monkeypatch, var, value, expected):
    monkeypatch.setenv(var, value)
    assert mt_env.platform_name() == expected


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MI_TUTOR_CACHE", str(tmp_path))
    assert mt_env.cache_dir() == tmp_path


def test_attention_view_with_and_without_head_names():
    from mi_tutor.plots import attention_view

    pats = torch.softmax(torch.randn(2, 4, 4), -1)
    for names in (None, ["L0H0", "L0H1"]):
        html = attention_view(["a", "b", "c", "d"], pats, head_names=names)._repr_html_()
        assert "circuits-vis" in html


_HEAP_MB = r"""
def heap_mb():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return (hi - lo) >> 20
    return 0
"""  # the size of glibc's main heap, in MB (shared by the fragments below)

_FRAGMENT = _HEAP_MB + r"""
import sys, torch
from mi_tutor.env import return_freed_memory
on = sys.argv[1] == "on" and return_freed_memory()
warm = torch.ones(1 << 20); del warm       # one 4 MB free: by default glibc raises its mmap threshold to 4 MB
before = heap_mb()
keep = [torch.ones(1 << 19) for _ in range(20)]  # twenty 2 MB blocks
print(on, heap_mb() - before)               # MB they added to the heap (which is rarely given back)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_return_freed_memory_gives_freed_tensor_memory_back():
    heap = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, check=True).stdout
        on, mb = out.split()
        heap[mode] = (on == "True", int(mb))
    assert heap["on"][0], "return_freed_memory() could not set glibc's thresholds"
    assert heap["on"][1] < 8, (f"2 MB tensors should be mapped on their own (freed = returned), but the heap grew "
                               f"{heap['on'][1]} MB")
    assert heap["off"][1] >= 30, f"control: by default glibc should put them on the heap, which grew only {heap['off'][1]} MB"


_REUSE = _HEAP_MB + r"""
import torch
from mi_tutor.env import return_freed_memory, reuse_freed_memory
assert return_freed_memory(1 << 20)
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10
heap0, rss0 = heap_mb(), rss_mb()
with reuse_freed_memory():
    with reuse_freed_memory():                # nested: the outer block decides
        keep = [torch.ones(1 << 19) for _ in range(20)]  # twenty 2 MB blocks
    inside = heap_mb() - heap0
    del keep
returned = rss_mb() - rss0                    # resident memory once the block is left
heap1 = heap_mb()
keep = [torch.ones(1 << 19) for _ in range(20)]  # after the block: mapped on their own again
print(inside, returned, heap_mb() - heap1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_reuse_freed_memory_keeps_blocks_on_the_heap_inside_and_gives_them_back_after():
    out = subprocess.run([sys.executable, "-c", _REUSE], capture_output=True, text=True, check=True).stdout
    inside, returned, after = (int(x) for x in out.split())
    assert inside >= 30, f"inside the block 2 MB tensors should come from the heap, which grew only {inside} MB"
    assert returned < 8, f"leaving the block should give the freed heap back, but {returned} MB stayed resident"
    assert after < 8, f"after the block the 1 MB threshold should be back, but the heap grew {after} MB"


_CELLS = r"""
import torch
from IPython.core.interactiveshell import InteractiveShell
from mi_tutor import setup
shell = InteractiveShell.instance()
setup(quiet=True); setup(quiet=True)        # a notebook may call setup() twice
ours = [f for f in shell.events.callbacks["post_run_cell"] if "trim_memory" in getattr(getattr(f, "__code__", None),
                                                                                       "co_names", ())]
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) >> 10
ok = shell.run_cell("import torch; warm = torch.ones(1 << 20); del warm").success  # glibc's mmap threshold -> 4 MB
# 100 x 2 MB on the heap, each followed by a small tensor that stays: freeing the big ones leaves holes
ok = ok and shell.run_cell("pins, keep = [], []\n"
                           "for _ in range(100): keep.append(torch.ones(1 << 19)); pins.append(torch.ones(1 << 12))\n"
                           "del keep").success
print(ok, len(ours), rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_setup_gives_memory_back_after_every_cell():
    """After a cell frees 200 MB of 2 MB tensors, resident memory drops again (malloc_trim hook)."""
    out = subprocess.run([sys.executable, "-c", _CELLS], capture_output=True, text=True, check=True).stdout.split()
    ok, hooks, rss_after = out[-3] == "True", int(out[-2]), int(out[-1])
    assert ok, "the test cells did not run"
    assert hooks == 1, f"setup() should register its post-cell hook exactly once, found {hooks}"
    base = subprocess.run([sys.executable, "-c", _CELLS.replace('shell.run_cell("pins', '0 and shell.run_cell("pins')],
                          capture_output=True, text=True, check=True).stdout.split()
    assert rss_after - int(base[-1]) < 60, f"the cell's freed 200 MB stayed resident ({rss_after} vs {base[-1]} MB)"
