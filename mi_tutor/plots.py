"""Generic figures used across the notebooks (topic-specific plots live beside their topic).

All functions return a matplotlib Figure and never call ``plt.show()``; in a notebook the
figure is shown because it is the cell's value (or through ``display``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def finish(fig, tight_layout: bool = False):
    """Close a finished figure and return it, so a notebook shows it once, as the cell's value
    (the inline backend would draw a figure that is still open a second time)."""
    import matplotlib.pyplot as plt

    if tight_layout:
        fig.tight_layout()
    plt.close(fig)
    return fig


def heatmap(
    values,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    center: bool = True,
    cmap: str | None = None,
    annotate: bool = False,
    ax=None,
    figsize: tuple[float, float] | None = None,
    colorbar: bool = True,
):
    """A labelled heatmap; diverging colours centred at 0 when `center`."""
    import matplotlib.pyplot as plt

    v = _np(values)
    if v.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {v.shape}")
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize or (min(1.2 + 0.35 * v.shape[1], 9), min(1.0 + 0.3 * v.shape[0], 7)))
    else:
        fig = ax.figure
    if center:
        lim = float(np.nanmax(np.abs(v))) or 1.0
        im = ax.imshow(v, cmap=cmap or "RdBu", vmin=-lim, vmax=lim, aspect="auto")
    else:
        im = ax.imshow(v, cmap=cmap or "viridis", aspect="auto")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(list(xlabels), rotation=90, fontsize=7)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)))
        ax.set_yticklabels(list(ylabels), fontsize=7)
    if annotate and v.size <= 400:
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def layer_head_heatmap(scores, title: str = "", center: bool = True, ax=None, label: str = ""):
    """Scores of shape [n_layers, n_heads] with layers on the y axis."""
    s = _np(scores)
    return heatmap(s, xlabels=[str(h) for h in range(s.shape[1])], ylabels=[str(l) for l in range(s.shape[0])],
                   title=title, xlabel="head", ylabel="layer", center=center, ax=ax)


def attention_heatmap(pattern, tokens: Sequence[str], title: str = "", ax=None, max_tokens: int = 64):
    """A static attention pattern [query, key] with token labels (the fallback for circuitsvis)."""
    p = _np(pattern)[:max_tokens, :max_tokens]
    toks = [t.replace("\n", "\\n") for t in list(tokens)[:max_tokens]]
    return heatmap(p, xlabels=toks, ylabels=toks, title=title, xlabel="key (attended to)",
                   ylabel="query (attending)", center=False, cmap="Blues", ax=ax)


def attention_view(tokens: Sequence[str], patterns, head_names: Sequence[str] | None = None):
    """An interactive circuitsvis view of attention patterns [heads, query, key], offline.

    circuitsvis is told not to ping google.com (see `mi_tutor.env.keep_circuitsvis_offline`).
    """
    from .env import keep_circuitsvis_offline

    keep_circuitsvis_offline()
    import circuitsvis as cv

    pats = patterns if isinstance(patterns, torch.Tensor) else torch.as_tensor(np.asarray(patterns))
    if pats.ndim == 2:
        pats = pats[None]
    if head_names is not None:
        return cv.attention.attention_heads(attention=pats.detach().float(), tokens=list(tokens),
                                            attention_head_names=list(head_names))
    return cv.attention.attention_patterns(tokens=list(tokens), attention=pats.detach().float())


def bar(values, labels: Sequence[str], title: str = "", ylabel: str = "", ax=None, highlight: Sequence[int] = ()):
    """A labelled bar chart; bars at `highlight` indices are drawn darker."""
    import matplotlib.pyplot as plt

    v = _np(values)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(v) + 1), 3))
    else:
        fig = ax.figure
    colors = ["tab:blue" if i not in set(highlight) else "tab:red" for i in range(len(v))]
    ax.bar(range(len(v)), v, color=colors)
    ax.set_xticks(range(len(v)))
    ax.set_xticklabels(list(labels), rotation=90, fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


__all__ = ["heatmap", "layer_head_heatmap", "attention_heatmap", "attention_view", "bar"]
