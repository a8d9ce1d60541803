"""How the grokked modular-addition model computes a + b (notebook 01, the mechanism).

`mi_tutor.fourier` measures the Fourier structure (basis, key frequencies, progress
measures); this module takes the circuit apart step by step, in the order a learner meets it:

1. periodicity you can see without any Fourier basis: the embedding of the numbers lies on
   circles (`embedding_circle`), and neurons are periodic over (a, b);
2. which frequencies the model *reads*: the Fourier spectrum of the neuron-to-logit map
   W_L (`readout_shares`, `readout_key_frequencies`), as Nanda et al. (2023, arXiv
   2301.05217, App. C.2) choose them, beside the embedding's spectrum;
3. the neurons are degree-2 terms of one frequency: cos(w a) cos(w b) and the like, i.e.
   both cos/sin(w (a+b)) and cos/sin(w (a-b)); the readout W_L keeps the (a+b) part and
   cancels the (a-b) part (`sum_difference_parts`);
4. the restricted loss as the paper defines it, on the logits (`restricted_loss_logits`):
   keeping only the key-frequency (a+b) terms of the logits *improves* the loss;
5. why a float32 loss misleads at the losses grokking reaches (`loss_precision`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .fourier import frequency_shares, n_freqs, sum_directions
from .grokking import all_pairs, fast_forward, params_of

# --------------------------------------------------------------------------------------
# 1. Periodicity without a Fourier basis: the embedding circle
# --------------------------------------------------------------------------------------


def embedding_circle(W_E: torch.Tensor, p: int) -> dict[str, Any]:
    """The numbers' embeddings in their top-2 principal components, and the rotation they show.

    If the embedding holds cos(w_k x) and sin(w_k x) for a dominant frequency k, the top two
    principal components of W_E[:p] form a circle on which x + 1 sits a fixed angle
    2 pi k / p after x. No Fourier basis is needed to see it: the angle of each point is
    compared with x * 2 pi k / p for every k and both directions of turning.

    Returns:
        dict with ``xy`` ``[p, 2]`` (coordinates), ``radius_cv`` (std / mean of the radii;
        0 for a perfect circle), ``k`` (the number of turns the numbers 0..p-1 make around
        the circle), ``alignment`` (|mean of exp(i (angle_x -+ 2 pi k x / p))| for that k:
        1 when every x sits exactly at a fixed step after x - 1), ``explained`` (share of the
        centred embedding's variance in the two components) and ``circulant`` (share of
        the similarity matrix E E^T, centred, explained by a function of x - y alone: 1 when
        how alike two numbers are depends only on their difference).
    """
    if W_E.ndim != 2 or W_E.shape[0] < p:
        raise ValueError(f"W_E must be [>= p, d] with one row per number (p={p}), got {tuple(W_E.shape)}")
    X = W_E[:p].detach().double()
    X = X - X.mean(0, keepdim=True)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    xy = U[:, :2] * S[:2]
    radius = xy.norm(dim=1)
    angle = torch.atan2(xy[:, 1], xy[:, 0])
    x = torch.arange(p, dtype=torch.float64)
    best_k, best_r = 0, -1.0
    for k in range(1, n_freqs(p) + 1):
        for sign in (1, -1):
            ph = angle - sign * 2 * math.pi * k * x / p
            r = float(torch.complex(torch.cos(ph), torch.sin(ph)).mean().abs())
            if r > best_r:
                best_k, best_r = k, r
    G = X @ X.T
    diff = (torch.arange(p)[:, None] - torch.arange(p)[None, :]) % p
    by_diff = torch.zeros(p, dtype=torch.float64).index_add_(0, diff.flatten(), G.flatten()) / p
    circulant = 1 - float(((G - by_diff[diff]) ** 2).sum() / ((G - G.mean()) ** 2).sum())
    return {"xy": xy.float(), "radius_cv": float(radius.std() / radius.mean()), "k": best_k, "alignment": best_r,
            "explained": float((S[:2] ** 2).sum() / (S**2).sum()), "circulant": circulant,
            "similarity": (G / G.diagonal().sqrt()[:, None] / G.diagonal().sqrt()[None, :]).float()}


def plot_embedding_circle(W_E: torch.Tensor, p: int, title: str = ""):
    """Two views of the embedding: the numbers' cosine similarities (constant along diagonals
    when similarity depends on x - y only) and the numbers in the top-2 principal components."""
    import matplotlib.pyplot as plt

    circ = embedding_circle(W_E, p)
    xy = circ["xy"].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0))
    im = axes[0].imshow(circ["similarity"].numpy(), cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
    axes[0].set_xlabel("y")
    axes[0].set_ylabel("x")
    axes[0].set_title("cosine similarity of the embeddings of x and y", fontsize=9)
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    ax = axes[1]
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(p), cmap="viridis", s=16, zorder=3)
    for i in range(0, p, max(1, p // 10)):
        ax.annotate(str(i), xy[i], fontsize=7, color="C3", zorder=4)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    fig.colorbar(sc, ax=ax, fraction=0.046, label="number x")
    ax.set_title(f"the numbers in the top two principal components ({circ['k']} turn(s) around)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_neurons(acts: torch.Tensor, neurons: Sequence[int], titles: Sequence[str] | None = None):
    """Heatmaps of a few neurons' activations over (a, b), side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(neurons), figsize=(3.3 * len(neurons), 2.9), squeeze=False)
    for i, (ax, n) in enumerate(zip(axes[0], neurons)):
        im = ax.imshow(acts[:, :, n].numpy(), cmap="viridis", origin="lower")
        ax.set_xlabel("b")
        ax.set_ylabel("a")
        ax.set_title(titles[i] if titles else f"neuron {n}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def most_active_neurons(acts: torch.Tensor, n: int = 4) -> list[int]:
    """The `n` neurons with the largest standard deviation over all (a, b)."""
    return torch.argsort(acts.flatten(0, 1).std(0), descending=True)[:n].tolist()


# --------------------------------------------------------------------------------------
# 2. Which frequencies the model reads: the readout W_L
# --------------------------------------------------------------------------------------


def readout_shares(W_L: torch.Tensor, p: int) -> torch.Tensor:
    """Each frequency's share of ||W_L||^2 along the output (logit) axis.

    Args:
        W_L: ``[d_mlp, p]``, the neuron-to-logit map W_out @ W_U.

    Returns:
        ``[(p-1)/2]``: entry k-1 is the share of the cos k and sin k components of W_L's rows
        (a function of the answer c) in ||W_L||^2.
    """
    if W_L.ndim != 2 or W_L.shape[1] != p:
        raise ValueError(f"W_L must be [d_mlp, p] with p={p}, got {tuple(W_L.shape)}")
    return frequency_shares(W_L.T, p)


def readout_key_frequencies(W_L: torch.Tensor, p: int, factor: float = 5.0) -> list[int]:
    """Frequencies whose share of ||W_L||^2 is at least `factor` times the uniform share, largest first.

    A uniform spread gives each of the (p-1)/2 frequencies 1 / ((p-1)/2) of the norm (1.8%
    for p = 113). The readout's spectrum is what the model uses to produce its answer, so
    it is the place to choose key frequencies (Nanda et al. 2023, App. C.2, use the
    frequencies with non-trivial coefficients in W_L's Fourier transform).
    """
    shares = readout_shares(W_L, p)
    uniform = 1.0 / n_freqs(p)
    order = torch.argsort(shares, descending=True)
    return [int(i) + 1 for i in order if shares[i] >= factor * uniform]


def plot_spectra(W_E: torch.Tensor, W_L: torch.Tensor, p: int, key_freqs: Sequence[int] = (), title: str = ""):
    """The embedding's and the readout's frequency shares, one above the other."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 4.4), sharex=True)
    ks = np.arange(1, n_freqs(p) + 1)
    for ax, shares, label in ((axes[0], frequency_shares(W_E, p), "W_E (what the model writes)"),
                              (axes[1], readout_shares(W_L, p), "W_L (what the model reads out)")):
        s = shares.numpy()
        ax.bar(ks, s, color=["C3" if k in key_freqs else "C0" for k in ks], width=0.8)
        ax.axhline(1 / n_freqs(p), color="grey", ls="--", lw=0.8)
        for k in key_freqs:
            ax.text(k, s[k - 1], str(k), ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("share of ||·||²", fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[1].set_xlabel("frequency k (dashed: uniform share)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 3. Neurons hold a+b and a-b; the readout keeps a+b
# --------------------------------------------------------------------------------------


def pair_directions(p: int, k: int) -> dict[str, torch.Tensor]:
    """Unit vectors over the p*p pairs (row a*p + b) for one frequency k.

    Keys: ``a`` (cos/sin(w_k a)), ``b`` (cos/sin(w_k b)), ``sum`` (cos/sin(w_k (a+b))) and
    ``diff`` (cos/sin(w_k (a-b))), each ``[2, p*p]``. Together they span every term of
    frequency k alone: cos(w a) cos(w b) = (cos(w(a+b)) + cos(w(a-b))) / 2, and so on.
    """
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    w = 2 * math.pi * k / p
    out = {}
    for name, x in (("a", a), ("b", b), ("sum", a + b), ("diff", a - b)):
        d = torch.stack([torch.cos(w * x), torch.sin(w * x)])
        out[name] = d / d.norm(dim=1, keepdim=True)
    return out


def neuron_parts(acts: torch.Tensor, p: int, k: int) -> dict[str, torch.Tensor]:
    """Each neuron's variance over (a, b) split into the frequency-k terms.

    Args:
        acts: ``[p, p, d_mlp]`` activations at "=".

    Returns:
        dict of ``[d_mlp]`` fractions of each neuron's variance (mean removed): ``a``, ``b``
        (the linear terms), ``sum`` (cos/sin(w_k (a+b))), ``diff`` (cos/sin(w_k (a-b))) and
        ``rest`` (everything else: other frequencies, and what ReLU adds).
    """
    A = acts.reshape(p * p, -1).double()
    A = A - A.mean(0, keepdim=True)
    total = (A**2).sum(0).clamp_min(1e-12)
    out = {name: ((D @ A) ** 2).sum(0) / total for name, D in pair_directions(p, k).items()}
    out["rest"] = 1 - sum(out.values())
    return {n: v.float() for n, v in out.items()}


def sum_difference_parts(acts: torch.Tensor, W_L: torch.Tensor, p: int, freqs: Sequence[int]) -> dict[str, float]:
    """How much the neurons hold of cos/sin(w_k(a+b)) and of cos/sin(w_k(a-b)), and how much of
    each reaches the logits through W_L (key frequencies `freqs`, all neurons together).

    Returns:
        dict: ``neuron_sum``, ``neuron_diff``, ``neuron_a``, ``neuron_b`` (squared norms of
        the neurons' parts along cos/sin(w_k(a+b)), cos/sin(w_k(a-b)), cos/sin(w_k a) and
        cos/sin(w_k b)), ``logit_*`` (squared norms of those parts after W_L), the (a+b)
        share of the (a+b) and (a-b) parts, ``neuron_sum_share`` and ``logit_sum_share``,
        and its share of all four, ``neuron_sum_share_all`` and ``logit_sum_share_all``.
        A readout that keeps a+b and cancels a-b has a logit share near 1 while the
        neurons hold both.
    """
    A = acts.reshape(p * p, -1).double()
    WL = W_L.double()
    res = {f"{where}_{fam}": 0.0 for where in ("neuron", "logit") for fam in ("sum", "diff", "a", "b")}
    for k in freqs:
        dirs = pair_directions(p, k)
        for fam in ("sum", "diff", "a", "b"):
            coeff = dirs[fam] @ A  # [2, d_mlp]: the neurons' coordinates along the two directions
            res[f"neuron_{fam}"] += float((coeff**2).sum())
            res[f"logit_{fam}"] += float(((coeff @ WL) ** 2).sum())  # directions are orthonormal
    res["neuron_sum_share"] = res["neuron_sum"] / max(res["neuron_sum"] + res["neuron_diff"], 1e-30)
    res["logit_sum_share"] = res["logit_sum"] / max(res["logit_sum"] + res["logit_diff"], 1e-30)
    for where in ("neuron", "logit"):  # the (a+b) share among all four families (linear terms included)
        all4 = sum(res[f"{where}_{fam}"] for fam in ("sum", "diff", "a", "b"))
        res[f"{where}_sum_share_all"] = res[f"{where}_sum"] / max(all4, 1e-30)
    return res


def plot_neuron_parts(acts: torch.Tensor, p: int, neuron: int, k: int):
    """One neuron over (a, b), beside its a+b part, its a-b part and its linear terms at frequency k."""
    import matplotlib.pyplot as plt

    A = acts.reshape(p * p, -1)[:, neuron].double()
    A = A - A.mean()
    dirs = pair_directions(p, k)
    fr = neuron_parts(acts, p, k)
    panels = [("neuron (mean removed)", A)]
    for name, label in (("sum", "cos/sin(w(a+b)) part"), ("diff", "cos/sin(w(a−b)) part")):
        panels.append((f"{label}: {float(fr[name][neuron]):.0%}", dirs[name].T @ (dirs[name] @ A)))
    lin = sum(dirs[n].T @ (dirs[n] @ A) for n in ("a", "b"))
    panels.append((f"linear in a and b: {float(fr['a'][neuron] + fr['b'][neuron]):.0%}", lin))
    lim = float(A.abs().max())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.2), sharey=True, layout="constrained")
    for ax, (label, grid) in zip(axes, panels):
        im = ax.imshow(grid.view(p, p).numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("b")
    axes[0].set_ylabel("a")
    fig.colorbar(im, ax=list(axes), fraction=0.02)
    fig.suptitle(f"neuron {neuron}, frequency {k}: shares of its variance", fontsize=9)
    return fig


def neuron_with_both_parts(acts: torch.Tensor, p: int, best_freq: torch.Tensor) -> int:
    """The neuron whose smaller share of (a+b) and (a-b) terms, at its best frequency, is largest:
    the clearest example of a neuron holding both."""
    score = torch.full((acts.shape[-1],), -1.0)
    for k in sorted({int(f) for f in best_freq.tolist() if f > 0}):
        members = torch.nonzero(best_freq == k).flatten()
        parts = neuron_parts(acts[:, :, members], p, k)
        score[members] = torch.minimum(parts["sum"], parts["diff"])
    return int(score.argmax())


# --------------------------------------------------------------------------------------
# 4. The restricted loss on the logits (the paper's definition)
# --------------------------------------------------------------------------------------


def restricted_loss_logits(logits: torch.Tensor, directions: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy when the logits keep only their mean over inputs and their part along `directions`.

    Nanda et al. (2023, §5.1) define the restricted loss on the logits: as functions of the
    input (a, b), keep only the constant and the cos/sin(w_k (a+b)) terms for the key
    frequencies, and measure the loss.

    Args:
        logits: ``[N, p]`` for N inputs; directions: ``[m, N]`` orthonormal rows over the
            inputs, each orthogonal to the constant (e.g. `fourier.sum_directions`);
        labels: ``[N]``.

    Returns:
        The cross-entropy (float64) of ``mean + directions^T (directions @ logits)``.
    """
    kept = logits.mean(0, keepdim=True) + directions.T @ (directions @ logits)
    return float(F.cross_entropy(kept.double(), labels))


def logit_level_losses(model_or_state: Any, p: int, freqs: Sequence[int], train_idx: torch.Tensor) -> dict[str, float]:
    """The paper's logit-level losses on one model: full (all pairs), restricted (all pairs) and
    excluded (the key (a+b) terms removed from the logits, on the training pairs)."""
    tokens, labels = all_pairs(p)
    with torch.no_grad():
        logits, _ = fast_forward(params_of(model_or_state), tokens)
    D = sum_directions(p, freqs)
    excluded = logits - D.T @ (D @ logits)
    return {"full": float(F.cross_entropy(logits.double(), labels)),
            "restricted": restricted_loss_logits(logits, D, labels),
            "excluded": float(F.cross_entropy(excluded[train_idx].double(), labels[train_idx]))}


# --------------------------------------------------------------------------------------
# 5. float32 vs float64 cross-entropy at tiny losses
# --------------------------------------------------------------------------------------


def loss_precision(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cross-entropy and its gradient (w.r.t. the logits) computed in float32 and in float64.

    At a loss near 1e-7 the correct class's probability is 1 - 1e-7, which float32 rounds to
    1 (its spacing near 1 is 6e-8): that example's loss becomes 0 and the gradient pushing the
    correct logit up vanishes, while the gradients pushing the wrong logits down remain.

    Returns:
        dict: ``loss32``, ``loss64``, ``grad_rel_error`` (||g32 - g64|| / ||g64||) and
        ``zero_loss_frac`` (share of examples whose float32 loss is exactly 0).
    """
    out = {}
    grads = {}
    for name, dt in (("32", torch.float32), ("64", torch.float64)):
        z = logits.detach().to(dt).clone().requires_grad_(True)
        loss = F.cross_entropy(z, labels)
        loss.backward()
        out[f"loss{name}"] = float(loss.detach())
        grads[name] = z.grad.double()
        if name == "32":
            with torch.no_grad():
                out["zero_loss_frac"] = float((F.cross_entropy(z, labels, reduction="none") == 0).double().mean())
    out["grad_rel_error"] = float((grads["32"] - grads["64"]).norm() / grads["64"].norm().clamp_min(1e-300))
    return out


def scale_to_loss(logits: torch.Tensor, labels: torch.Tensor, target: float) -> torch.Tensor:
    """The logits multiplied by the factor (found by bisection, in float64) that brings their
    cross-entropy to `target`: a confident version of the same model's answers."""
    z = logits.double()
    lo, hi = 1e-3, 1e3
    for _ in range(60):  # the bracket shrinks to a ratio of 1 + 1e-17
        mid = math.sqrt(lo * hi)
        if float(F.cross_entropy(z * mid, labels)) > target:
            lo = mid
        else:
            hi = mid
    return z * math.sqrt(lo * hi)


def spike_summary(steps: Sequence[int], train_loss: Sequence[float], weight_norm: Sequence[float],
                  factor: float = 100.0) -> dict[str, Any]:
    """The train-loss spikes of a run and what the weight norm does around them.

    A spike is a recorded step whose train loss is more than `factor` times the previous
    record's.

    Returns:
        dict: ``steps`` (the spikes), ``median_gap`` (steps between spikes), ``max_before``
        (the largest train loss just before a spike), ``norm_falls`` (spikes at which the
        weight norm fell from the previous record) and ``norm_regrows`` (gaps between two
        spikes over which the weight norm rose again from its value at the first spike to
        its value just before the second).
    """
    tl = np.asarray(train_loss, dtype=float)
    wn = np.asarray(weight_norm, dtype=float)
    idx = [i for i in range(1, len(tl)) if tl[i - 1] > 0 and tl[i] > factor * tl[i - 1]]
    gaps = np.diff([steps[i] for i in idx])
    regrows = sum(wn[j - 1] > wn[i] for i, j in zip(idx, idx[1:]))
    return {"steps": [int(steps[i]) for i in idx], "median_gap": float(np.median(gaps)) if len(gaps) else math.nan,
            "max_before": float(max(tl[i - 1] for i in idx)) if idx else math.nan,
            "spike_losses": [float(tl[i]) for i in idx],
            "norm_falls": int(sum(wn[i] < wn[i - 1] for i in idx)), "norm_regrows": int(regrows)}


__all__ = [
    "embedding_circle", "plot_embedding_circle", "plot_neurons", "most_active_neurons", "readout_shares",
    "readout_key_frequencies", "plot_spectra", "pair_directions", "neuron_parts", "sum_difference_parts",
    "plot_neuron_parts", "neuron_with_both_parts", "restricted_loss_logits", "logit_level_losses", "loss_precision",
    "scale_to_loss", "spike_summary",
]
