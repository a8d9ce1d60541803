"""One small training loop for every toy model in the course.

`train(step_fn, n_steps, ...)` calls `step_fn(step)` (which does one optimiser step and returns
the training loss), every `eval_every` steps calls `eval_fn(step)` (which returns a dict of
named metrics), and records everything in a `History`. A tqdm bar shows progress; with
`live=True` a matplotlib figure is redrawn in place while training runs, and it stays as a
static figure afterwards (which is also what a headless run and a PDF export see).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch


@dataclass
class History:
    """What a training run recorded: `steps[i]` is the step at which `metrics[name][i]` was taken."""

    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: bool = False

    def log(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(int(step))
        for name, value in values.items():
            series = self.metrics.setdefault(name, [])
            # keep series aligned with steps even if a metric appears late
            while len(series) < len(self.steps) - 1:
                series.append(math.nan)
            series.append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        return self.metrics[name]

    def last(self, name: str) -> float:
        return self.metrics[name][-1]

    def first_step_where(self, name: str, predicate: Callable[[float], bool]) -> int | None:
        """The first recorded step at which `predicate(metric)` holds, or None."""
        for step, value in zip(self.steps, self.metrics.get(name, [])):
            if predicate(value):
                return step
        return None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "metrics": self.metrics, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(steps=list(d["steps"]), metrics={k: list(v) for k, v in d["metrics"].items()},
                   seconds=float(d.get("seconds", 0.0)))


def plot_history(
    history: History,
    panels: Sequence[Sequence[str]] | None = None,
    logy: Sequence[bool] | None = None,
    title: str | None = None,
    ax=None,
    marks: dict[str, float] | None = None,
):
    """Plot recorded metrics, one panel per group of names (e.g. [["train_loss", "test_loss"], ["test_acc"]]).

    `marks` draws labelled vertical lines (e.g. phase boundaries).
    """
    import matplotlib.pyplot as plt

    panels = panels or [list(history.metrics)]
    logy = logy or [False] * len(panels)
    if ax is None:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
        axes = axes[0]
    else:
        axes = [ax] if len(panels) == 1 else ax
        fig = axes[0].figure
    for a, names, log in zip(axes, panels, logy):
        for name in names:
            if name in history.metrics:
                a.plot(history.steps[: len(history.metrics[name])], history.metrics[name], label=name)
        if log:
            a.set_yscale("log")
        a.set_xlabel("step")
        a.legend(fontsize=8)
        for label, x in (marks or {}).items():
            a.axvline(x, color="grey", ls="--", lw=0.8)
            a.text(x, a.get_ylim()[1], label, fontsize=7, rotation=90, va="top", ha="right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LivePlot:
    """Redraws a `plot_history` figure in one notebook output while training runs.

    Outside IPython (scripts, tests) it does nothing until `close()`, which returns the figure.
    """

    def __init__(self, panels: Sequence[Sequence[str]], logy: Sequence[bool] | None = None, title: str | None = None):
        self.panels, self.logy, self.title = panels, logy, title
        self.handle = None
        try:
            from IPython import get_ipython

            self.active = get_ipython() is not None
        except Exception:
            self.active = False

    def update(self, history: History) -> None:
        if not self.active or not history.steps:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = plot_history(history, self.panels, self.logy, self.title)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)

    def close(self, history: History):
        """Draw the final figure (static from now on) and return it."""
        import matplotlib.pyplot as plt

        fig = plot_history(history, self.panels, self.logy, self.title)
        if self.active:
            from IPython.display import display

            if self.handle is None:
                display(fig)
            else:
                self.handle.update(fig)
            plt.close(fig)
        return fig


def train(
    step_fn: Callable[[int], float],
    n_steps: int,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 50,
    live: LivePlot | None = None,
    live_every: int | None = None,
    stop_when: Callable[[History], bool] | None = None,
    desc: str = "training",
    progress: bool = True,
    history: History | None = None,
    start_step: int = 0,
) -> History:
    """Run `step_fn` for `n_steps` steps and record metrics.

    Args:
        step_fn: does one optimisation step at step `s`, returns the training loss.
        n_steps: how many steps.
        eval_fn: returns a dict of metrics; called at step 0, every `eval_every` steps, and at the end.
        live: a `LivePlot` to redraw every `live_every` steps (default: every 4th evaluation).
        stop_when: called after each evaluation; stop early if it returns True.
        progress: show a tqdm bar (a widget in notebooks; hidden when TQDM_DISABLE is set, as `mi-tutor execute` does).
        history, start_step: continue an earlier run.
    """
    from tqdm.auto import tqdm

    history = history or History()
    live_every = live_every or eval_every * 4
    t0 = time.perf_counter()
    # TQDM_DISABLE=1 (set by `mi-tutor execute` when outputs are saved for committing) hides the
    # bar; tqdm itself only honours it when `disable` is not passed, as it is here.
    hidden = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    bar = tqdm(range(start_step, start_step + n_steps), desc=desc, disable=not progress or hidden, leave=False,
               mininterval=0.5)
    last_loss = float("nan")
    for step in bar:
        if eval_fn is not None and (step - start_step) % eval_every == 0:
            values = {"train_loss_step": last_loss} if step > start_step else {}
            values.update(eval_fn(step))
            history.log(step, values)
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(values.items())[:3]}, refresh=False)
            if live is not None and (step - start_step) % live_every == 0:
                live.update(history)
            if stop_when is not None and stop_when(history):
                history.stopped_early = True
                break
        last_loss = float(step_fn(step))
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"training loss became {last_loss} at step {step}: lower the learning rate")
    else:
        if eval_fn is not None:
            end = start_step + n_steps
            values = {"train_loss_step": last_loss}
            values.update(eval_fn(end))
            history.log(end, values)
    bar.close()
    history.seconds += time.perf_counter() - t0
    return history


def batched(items: Iterable, size: int):
    """Yield lists of up to `size` items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `logits[..., classes]` against integer `labels`."""
    return (logits.argmax(-1) == labels).float().mean().item()


__all__ = ["History", "train", "LivePlot", "plot_history", "batched", "accuracy"]
