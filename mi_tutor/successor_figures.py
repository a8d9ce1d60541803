"""Notebook 04's figures: successor matrices, the ICA components, the four methods' maps and scatter."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .lab.hooks import head_label
from .lab.scores import ranks, spearman
from .ordinal import OrdinalTokens
from .plots import finish
from .successor import ICAResult, row_centre, successor_score




def plot_toy_history(history):
    """Test loss and successor accuracy of the toy model's training run."""
    from .training import plot_history

    return finish(plot_history(history, panels=[["test_loss"], ["successor_acc"]], title="toy successor model"))


def plot_successor_matrix(eff_ov: torch.Tensor, otok: OrdinalTokens, layer: int, head: int,
                          category: str | int = 0, ax=None):
    """Heatmap of one head's effective OV logits within one category; boxes mark true successors."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    idx = otok.in_category(category)
    m = eff_ov[layer, head][idx][:, idx]
    m = m - m.mean(-1, keepdim=True)
    own = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
    else:
        fig = ax.figure
    lim = float(m.abs().max()) or 1.0
    ax.imshow(m.numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
    labels = [otok.labels[i] for i in idx]
    ax.set_xticks(range(len(idx)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(idx)))
    ax.set_yticklabels(labels, fontsize=6)
    pos = {int(i): k for k, i in enumerate(idx)}
    for r, i in enumerate(idx.tolist()):
        j = int(otok.successor[i])
        if j in pos:
            ax.add_patch(Rectangle((pos[j] - 0.5, r - 0.5), 1, 1, fill=False, ec="k", lw=0.8))
        ax.plot(int(m[r].argmax()), r, "k.", ms=3)
    name = otok.category_names[category] if isinstance(category, int) else category
    score = successor_score(eff_ov[layer, head][idx][:, idx], otok.category[idx],
                            torch.tensor([pos.get(int(otok.successor[i]), -1) for i in idx.tolist()]))
    ax.set_title(f"{head_label((layer, head))} on {name}: score {score:.2f}", fontsize=9)
    ax.set_xlabel("output token (box = true successor, dot = top-1)", fontsize=7)
    ax.set_ylabel("input token", fontsize=7)
    fig.tight_layout()
    return finish(fig) if own else fig


def plot_top_heads(eff_ov: torch.Tensor, otok: OrdinalTokens, cat_scores: torch.Tensor, k: int = 2):
    """For every category, the effective OV tables of its `k` best heads (by that category's score)."""
    import matplotlib.pyplot as plt

    C = len(otok.category_names)
    fig, axes = plt.subplots(k, C, figsize=(2.9 * C, 2.8 * k), squeeze=False)
    for c in range(C):
        flat = cat_scores[c].flatten()
        for r, i in enumerate(torch.argsort(flat, descending=True, stable=True)[:k].tolist()):
            l, h = divmod(i, cat_scores.shape[2])
            plot_successor_matrix(eff_ov, otok, l, h, c, ax=axes[r, c])
            axes[r, c].set_xlabel("")
            axes[r, c].set_ylabel("")
    fig.tight_layout()
    return finish(fig)


def plot_ica(ica: ICAResult, otok: OrdinalTokens, show: int = 4):
    """The succession component and the `show - 1` most template-like others (first row), with each
    head's weight on them (second row). Titles give the correlation with each template."""
    import matplotlib.pyplot as plt

    k_succ = ica.best("succession")  # always shown first: it is the ICA score of the comparison
    rest = [int(k) for k in np.argsort(-np.abs(ica.template_corr).max(1)) if int(k) != k_succ]
    order = [k_succ] + rest[: show - 1]
    fig, axes = plt.subplots(2, show, figsize=(3.3 * show, 6.2), squeeze=False)
    for col, k in enumerate(order):
        c = row_centre(ica.components[k])
        lim = np.abs(c).max() or 1.0
        axes[0, col].imshow(c, cmap="RdBu", vmin=-lim, vmax=lim)
        r = ", ".join(f"{n[:4]} {v:.2f}" for n, v in zip(ica.template_names, ica.template_corr[k]))
        extra = " (succession score)" if k == k_succ else ""
        axes[0, col].set_title(f"component {k}: {ica.labels[k]}{extra}\nr: {r}", fontsize=8)
        axes[0, col].set_xlabel("output ordinal token", fontsize=7)
        axes[0, col].set_ylabel("input ordinal token", fontsize=7)
        s = ica.head_scores[k].numpy()
        lim = np.abs(s).max() or 1.0
        im = axes[1, col].imshow(s, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        axes[1, col].set_xlabel("head", fontsize=7)
        axes[1, col].set_ylabel("layer", fontsize=7)
        axes[1, col].set_title("head weights", fontsize=8)
        fig.colorbar(im, ax=axes[1, col], fraction=0.046)
    fig.tight_layout()
    return finish(fig)


def plot_four_maps(scores: dict[str, torch.Tensor], mark: Sequence[tuple[int, int]] = ()):
    """The four methods' [layer, head] score maps side by side; `mark` circles chosen heads."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.4), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        v = s.numpy()
        lim = np.abs(v).max() or 1.0
        im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for l, h in mark:
            ax.plot(h, l, "o", mfc="none", mec="k", ms=9)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, v.shape[0] // 8)
        ax.set_yticks(range(0, v.shape[0], step))
        ax.set_xticks(range(0, v.shape[1], max(1, v.shape[1] // 9)))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return finish(fig)


def plot_method_scatter(scores: dict[str, torch.Tensor], x: str, y: str, n_labels: int = 6, use_ranks: bool = False):
    """Scatter of every head's score under two methods, labelling the heads where they disagree most.

    Outliers = largest |rank_x - rank_y| among heads that at least one method ranks highly.
    """
    import matplotlib.pyplot as plt

    sx, sy = scores[x].flatten(), scores[y].flatten()
    rx, ry = ranks(scores[x]).flatten(), ranks(scores[y]).flatten()
    H = scores[x].shape[1]
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    vx, vy = (rx, ry) if use_ranks else (sx, sy)
    ax.scatter(vx.numpy(), vy.numpy(), s=12, alpha=0.6)
    n = len(sx)
    interesting = torch.minimum(rx, ry) <= max(5, n // 20)
    gap = (rx - ry).abs().float() * interesting
    for i in torch.argsort(gap, descending=True)[:n_labels].tolist():
        ax.scatter([vx[i]], [vy[i]], s=30, color="tab:red")
        ax.annotate(head_label((i // H, i % H)), (float(vx[i]), float(vy[i])), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    for i in torch.argsort(torch.maximum(rx, ry))[:3].tolist():  # heads both methods rank top
        ax.scatter([vx[i]], [vy[i]], s=30, color="tab:green")
        ax.annotate(head_label((i // H, i % H)), (float(vx[i]), float(vy[i])), fontsize=8, xytext=(3, -9),
                    textcoords="offset points", color="tab:green")
    ax.set_xlabel(f"{x} {'rank' if use_ranks else 'score'}")
    ax.set_ylabel(f"{y} {'rank' if use_ranks else 'score'}")
    if use_ranks:
        ax.invert_xaxis(); ax.invert_yaxis()
    ax.set_title(f"{x} vs {y}: Spearman {spearman(scores[x], scores[y]):.2f}\n"
                 "red = largest disagreement, green = agreed top heads", fontsize=9)
    fig.tight_layout()
    return finish(fig)


__all__ = ["plot_toy_history", "plot_successor_matrix", "plot_top_heads", "plot_ica", "plot_four_maps", "plot_method_scatter"]
