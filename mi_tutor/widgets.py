"""Interactive explorers that also work without widgets.

`Explorer(plot_fn, controls)` wires ipywidgets controls to a plotting function
``plot_fn(**values) -> matplotlib Figure``. It is displayed as a live widget in JupyterLab,
Colab (ipywidgets 7.7) and Binder; and because its display bundle also carries a PNG of
the current state, the same output shows a static figure on GitHub, in a PDF export and
in a headless run, where no widget manager runs.

The plotting functions are ordinary `mi_tutor` functions: every explorer's view can be
made without widgets by calling `plot_fn` directly.
"""
from __future__ import annotations

import base64
import io
from typing import Any, Callable

#: values the explorer last rendered, by explorer title (the browser test reads this)
LAST_VALUES: dict[str, dict[str, Any]] = {}


def figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def slider(value: float, lo: float, hi: float, step: float = 1, description: str = "", integer: bool | None = None):
    """An int or float slider that updates on release (cheap for expensive plots)."""
    import ipywidgets as w

    integer = all(float(x).is_integer() for x in (value, lo, hi, step)) if integer is None else integer
    cls = w.IntSlider if integer else w.FloatSlider
    cast = int if integer else float
    return cls(value=cast(value), min=cast(lo), max=cast(hi), step=cast(step), description=description,
               continuous_update=False, style={"description_width": "initial"})


def dropdown(options, value=None, description: str = ""):
    """A dropdown; `options` is a list of values or of (label, value) pairs."""
    import ipywidgets as w

    opts = list(options)
    if value is None:
        value = opts[0][1] if isinstance(opts[0], tuple) else opts[0]
    return w.Dropdown(options=opts, value=value, description=description, style={"description_width": "initial"})


class Explorer:
    """Controls + a figure that redraws when a control changes.

    Args:
        plot_fn: ``plot_fn(**values)`` returns a matplotlib Figure (or draws on the current one).
        controls: name -> ipywidget (use `slider` / `dropdown`); names are `plot_fn`'s keywords.
        title: shown above the controls; also the key of `LAST_VALUES`.
        fixed: extra keyword arguments passed to `plot_fn` unchanged.
    """

    def __init__(self, plot_fn: Callable[..., Any], controls: dict[str, Any], title: str = "", fixed: dict | None = None):
        import ipywidgets as w

        self.plot_fn = plot_fn
        self.controls = controls
        self.fixed = fixed or {}
        self.title = title or getattr(plot_fn, "__name__", "explorer")
        self.output = w.Output()
        self.status = w.HTML(value="")
        self.renders = 0
        header = [w.HTML(value=f"<b>{self.title}</b>")] if title else []
        self.box = w.VBox(header + [w.HBox(list(controls.values()), layout=w.Layout(flex_flow="row wrap")),
                                    self.status, self.output])
        for ctrl in controls.values():
            ctrl.observe(self._on_change, names="value")
        self._png = self._render()

    @property
    def values(self) -> dict[str, Any]:
        return {name: ctrl.value for name, ctrl in self.controls.items()}

    def _draw(self):
        import matplotlib.pyplot as plt

        fig = self.plot_fn(**self.values, **self.fixed)
        if fig is None:
            fig = plt.gcf()
        return fig

    def _render(self) -> bytes:
        import matplotlib.pyplot as plt
        from IPython.display import Image, display

        fig = self._draw()
        png = figure_png(fig)
        plt.close(fig)
        with self.output:  # show the same PNG as the static fallback (also for figures without axes)
            self.output.clear_output(wait=True)
            display(Image(data=png, format="png"))
        self.renders += 1
        LAST_VALUES[self.title] = dict(self.values)
        shown = ", ".join(f"{k}={v}" for k, v in self.values.items())
        self.status.value = f"<span class='mi-tutor-status'>showing: {shown}</span>"
        return png

    def _on_change(self, _change) -> None:
        self._png = self._render()

    def set(self, **values: Any) -> "Explorer":
        """Set controls programmatically (redraws once per changed control)."""
        for name, value in values.items():
            self.controls[name].value = value
        return self

    def static(self):
        """The current view as a plain matplotlib figure (no widgets)."""
        return self._draw()

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2, "version_minor": 0, "model_id": self.box.model_id,
            },
            "image/png": base64.b64encode(self._png).decode("ascii"),
            "text/plain": f"<{self.title}: interactive explorer; static view of {self.values}>",
        }

    # ipywidgets 7 displays through _ipython_display_; give it our bundle instead.
    def _ipython_display_(self):
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)


__all__ = ["Explorer", "slider", "dropdown", "figure_png", "LAST_VALUES"]
