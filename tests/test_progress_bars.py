"""Saved notebooks carry no stale "0%" progress bars; a learner's live run still draws them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

from mi_tutor import notebooks, training

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"


def bar(text="grokking p=113:   0%|          | 0/1500 [00:00<?, ?it/s]", **extra):
    return nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "x"}, "text/plain": text, **extra})


def test_a_bar_is_recognised_and_an_explorer_is_not():
    assert notebooks.is_progress_bar(bar())
    assert notebooks.is_progress_bar(bar("  0%|          | 0/9 [00:00<?, ?it/s]"))
    assert notebooks.is_progress_bar(nbformat.v4.new_output("stream", name="stderr",
                                                            text="SAE:  40%|####      | 4/10 [00:01<00:01, 3.1it/s]\r"))
    assert not notebooks.is_progress_bar(bar(**{"image/png": "iVBOR"}))          # an Explorer's static PNG
    assert not notebooks.is_progress_bar(nbformat.v4.new_output("stream", name="stdout", text="accuracy 50%|done\n"))
    assert not notebooks.is_progress_bar(nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"}))


def test_slim_outputs_drops_bars_and_keeps_everything_else():
    nb = nbformat.v4.new_notebook()
    keep = nbformat.v4.new_output("stream", name="stdout", text="step 10: loss 0.3\n")
    nb.cells = [nbformat.v4.new_code_cell("train()")]
    nb.cells[0].outputs = [bar(), keep]
    notebooks.slim_outputs(nb)
    assert nb.cells[0].outputs == [keep]


def test_committed_notebooks_carry_no_progress_bars():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "strip_progress_bars.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f"run `python scripts/strip_progress_bars.py`: {r.stdout}{r.stderr}"


def _train_stderr(monkeypatch, capsys, value):
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    training.train(lambda s: 0.0, n_steps=3, desc="demo")
    return capsys.readouterr().err


def test_the_training_bar_is_hidden_only_when_outputs_are_saved(monkeypatch, capsys):
    assert "demo:" in _train_stderr(monkeypatch, capsys, None)      # live run: a bar
    assert _train_stderr(monkeypatch, capsys, "1") == ""           # `mi-tutor execute`: none
    assert "demo:" in _train_stderr(monkeypatch, capsys, "0")


def test_execute_runs_the_kernel_with_bars_disabled(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(notebooks, "execute_notebook", lambda path, timeout, env: seen.update(env) or nbformat.v4.new_notebook())
    src = tmp_path / "notebooks" / "98_demo.ipynb"
    src.parent.mkdir()
    nbformat.write(nbformat.v4.new_notebook(), str(src))
    notebooks.execute_and_save(src)
    assert seen["TQDM_DISABLE"] == "1"
