"""Taking the grokked modular-addition transformer apart in the Fourier basis (notebook 01).

Nanda, Chan, Lieberum, Smith & Steinhardt (2023), "Progress measures for grokking via
mechanistic interpretability" (arXiv 2301.05217) found that the trained model embeds each
input token x as cos(w_k x), sin(w_k x) for a few key frequencies w_k = 2 pi k / p, builds
cos(w_k (a+b)) and sin(w_k (a+b)) in its MLP neurons, and reads out logits proportional to
sum_k alpha_k cos(w_k (a + b - c)), which peak at c = (a + b) mod p.

Every function here takes a model *or* a state dict (a checkpoint), so the same analysis
runs on the notebook's live run and on the shipped paper-scale checkpoints.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .grokking import KEYS, all_pairs, forward_all, make_split, params_of

# --------------------------------------------------------------------------------------
# The Fourier basis over Z_p
# --------------------------------------------------------------------------------------


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """The orthonormal Fourier basis of functions on {0, ..., p-1}, p odd.

    Returns:
        (basis ``[p, p]``, names). Row 0 is the constant; rows ``2k-1`` and ``2k`` are
        cos(w_k x) and sin(w_k x) with w_k = 2 pi k / p, for k = 1 .. (p-1)/2. Every row has
        unit norm, so ``basis @ basis.T`` is the identity and ``basis @ f`` are f's
        Fourier coefficients.
    """
    if p < 3 or p % 2 == 0:
        raise ValueError(f"p must be an odd number >= 3 (a prime such as 113), got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    basis = basis / basis.norm(dim=1, keepdim=True)
    return basis.float(), names


def n_freqs(p: int) -> int:
    """Number of non-zero frequencies, (p - 1) / 2."""
    return (p - 1) // 2


def _to_p(W: torch.Tensor, p: int) -> torch.Tensor:
    if W.ndim != 2 or W.shape[0] < p:
        raise ValueError(f"expected a matrix with at least p={p} rows (one per number), got shape {tuple(W.shape)}")
    return W[:p].detach().float()


def frequency_norms(W: torch.Tensor, p: int) -> torch.Tensor:
    """Squared norm of W's Fourier components, summed per frequency (cos + sin).

    Args:
        W: ``[>= p, d]``, one row per number 0..p-1 (e.g. W_E; the "=" row is ignored).

    Returns:
        ``[(p-1)/2]``: entry k-1 is ||cos_k part||^2 + ||sin_k part||^2 (the constant is left out).
    """
    basis, _ = fourier_basis(p)
    coeffs = basis @ _to_p(W, p)  # [p, d]
    sq = (coeffs**2).sum(-1)
    return sq[1::2] + sq[2::2]


def frequency_shares(W: torch.Tensor, p: int) -> torch.Tensor:
    """`frequency_norms` as fractions of ||W[:p]||^2 (constant included in the total)."""
    W = _to_p(W, p)
    return frequency_norms(W, p) / (W**2).sum()


def key_frequencies(W_E: torch.Tensor, p: int, threshold: float = 0.04) -> list[int]:
    """Frequencies k whose share of ||W_E||^2 is at least `threshold`, largest first.

    Uniform spread would give each of the (p-1)/2 frequencies ~2/p of the norm (1.8% for
    p=113): a threshold of 4% picks the frequencies that stand out.
    """
    shares = frequency_shares(W_E, p)
    order = torch.argsort(shares, descending=True)
    return [int(i) + 1 for i in order if shares[i] >= threshold]


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative values: 0 when all equal, towards 1 when one dominates."""
    x = torch.sort(values.detach().double().flatten().abs()).values
    n = x.numel()
    if n == 0 or x.sum() == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


# --------------------------------------------------------------------------------------
# Weights and activations of a model or a checkpoint
# --------------------------------------------------------------------------------------


def W_E(model_or_state: Any) -> torch.Tensor:
    """The embedding ``[d_vocab, d_model]`` (the "=" row last)."""
    return params_of(model_or_state)[KEYS["W_E"]].detach().float()


def W_L(model_or_state: Any) -> torch.Tensor:
    """The neuron-to-logit map W_out @ W_U: ``[d_mlp, p]``."""
    s = params_of(model_or_state)
    return (s[KEYS["out"]].T @ s[KEYS["U"]].T).detach().float()


def weight_norm(model_or_state: Any) -> float:
    """Sum of squared weights (what weight decay shrinks)."""
    return float(sum((v.detach().double() ** 2).sum() for v in params_of(model_or_state).values()))


@torch.no_grad()
def last_position(model_or_state: Any, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[p, p, p]`` and neuron activations ``[p, p, d_mlp]`` at "=", indexed [a, b, ...]."""
    tokens, _ = all_pairs(p)
    logits, acts = forward_all(params_of(model_or_state), tokens)
    return logits.view(p, p, -1).float(), acts.view(p, p, -1).float()


def fourier_2d(grid: torch.Tensor, p: int) -> torch.Tensor:
    """2D Fourier coefficients over the (a, b) axes of ``grid[a, b, ...]``."""
    basis, _ = fourier_basis(p)
    g = grid.float()
    rest = g.shape[2:]
    g = (basis @ g.reshape(p, -1)).reshape(p, p, -1)  # transform over a
    g = torch.einsum("jb,ibn->ijn", basis, g)  # then over b
    return g.reshape(p, p, *rest)


def frequency_fraction(coeffs: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of each neuron's variance carried by frequency k alone.

    Args:
        coeffs: ``[p, p, n]`` 2D Fourier coefficients of n neurons' activations over (a, b)
            (`fourier_2d`; basis order const, cos 1, sin 1, cos 2, ...).
        k: the frequency (1 .. (p-1)/2).

    Returns:
        ``[n]``: the squared coefficients whose a- and b-indices both lie in
        {const, cos k, sin k} (except the (const, const) mean), over all squared
        coefficients except the mean.
    """
    sq = coeffs.double() ** 2
    total = sq.sum((0, 1)) - sq[0, 0]
    idx = torch.tensor([0, 2 * k - 1, 2 * k])
    part = sq[idx][:, idx].sum((0, 1)) - sq[0, 0]
    return (part / total.clamp_min(1e-12)).float()


def neuron_frequency_fractions(acts: torch.Tensor, p: int) -> torch.Tensor:
    """For each neuron and frequency k, the fraction of the neuron's variance over (a, b)
    explained by the terms built from frequency k alone: cos/sin(w_k a), cos/sin(w_k b) and
    their four products (`frequency_fraction`).

    Args:
        acts: ``[p, p, d_mlp]`` activations at "=" (see `last_position`).

    Returns:
        ``[d_mlp, (p-1)/2]`` fractions in [0, 1].
    """
    if acts.ndim != 3 or acts.shape[0] != p or acts.shape[1] != p:
        raise ValueError(f"acts must be [p, p, d_mlp] with p={p}, got {tuple(acts.shape)}")
    sq = fourier_2d(acts, p) ** 2
    total = (sq.sum((0, 1)) - sq[0, 0]).clamp_min(1e-12)
    out = []
    for k in range(1, n_freqs(p) + 1):  # the same sums as `frequency_fraction`, squaring once
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        out.append((sq[idx][:, idx].sum((0, 1)) - sq[0, 0]) / total)
    return torch.stack(out, dim=1)


def single_frequency_neurons(acts: torch.Tensor, p: int, threshold: float = 0.85) -> tuple[float, torch.Tensor]:
    """Fraction of (active) neurons whose best single frequency explains > `threshold` of their variance.

    Returns:
        (fraction, each neuron's best frequency ``[d_mlp]`` (0 for neurons never active)).
    """
    fr = neuron_frequency_fractions(acts, p)
    best, freq = fr.max(dim=1)
    active = acts.flatten(0, 1).var(0) > 1e-8
    freq = torch.where(active, freq + 1, torch.zeros_like(freq))
    return float(((best > threshold) & active).float().sum() / active.float().sum().clamp_min(1)), freq


def cos_sum_fit(logits: torch.Tensor, p: int, freqs: Sequence[int]) -> tuple[float, torch.Tensor]:
    """Fit logits[a, b, c] ~ sum_k alpha_k cos(w_k (a + b - c)) and report the fit.

    Logits are centred over c for each (a, b) first (adding a constant to one input's logits
    changes nothing). The cos terms are orthogonal, so each alpha_k is a projection.

    Returns:
        (fraction of logit variance explained, alphas ``[len(freqs)]``).
    """
    if logits.shape != (p, p, p):
        raise ValueError(f"logits must be [p, p, p] (a, b, c) with p={p}, got {tuple(logits.shape)}")
    L = logits.double() - logits.double().mean(-1, keepdim=True)
    r = torch.arange(p, dtype=torch.float64)
    s = r[:, None, None] + r[None, :, None] - r[None, None, :]
    fit = torch.zeros_like(L)
    alphas = []
    for k in freqs:
        u = torch.cos(2 * math.pi * k * s / p)
        alpha = (L * u).sum() / (u * u).sum()
        fit += alpha * u
        alphas.append(float(alpha))
    fve = 1 - float(((L - fit) ** 2).sum() / (L**2).sum())
    return fve, torch.tensor(alphas)


# --------------------------------------------------------------------------------------
# Progress measures (restricted and excluded loss)
# --------------------------------------------------------------------------------------


def sum_directions(p: int, freqs: Sequence[int]) -> torch.Tensor:
    """Unit vectors over the p*p pairs (row a*p + b): cos(w_k (a+b)) and sin(w_k (a+b)) per key k.

    Returns ``[2 * len(freqs), p*p]``; the rows are orthonormal.
    """
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    rows = []
    for k in freqs:
        w = 2 * math.pi * k / p
        rows += [torch.cos(w * (a + b)), torch.sin(w * (a + b))]
    if not rows:
        return torch.zeros(0, p * p)
    d = torch.stack(rows)
    return (d / d.norm(dim=1, keepdim=True)).float()


def key_frequency_part(acts: torch.Tensor, p: int, freqs: Sequence[int]) -> torch.Tensor:
    """The part of the neuron activations ``[p*p, d_mlp]`` along cos/sin(w_k (a+b)) for the key freqs."""
    D = sum_directions(p, freqs)
    return D.T @ (D @ acts)


def restricted_loss(model_or_state: Any, p: int, freqs: Sequence[int]) -> float:
    """Loss (over all p*p pairs) when the neurons keep only their mean and their key-frequency
    cos/sin(w_k (a+b)) components, read out through W_L; the logits' mean is restored.

    Low restricted loss = the key-frequency circuit alone does the task.
    """
    tokens, labels = all_pairs(p)
    with torch.no_grad():
        logits, acts = forward_all(params_of(model_or_state), tokens)
        kept = acts.mean(0, keepdim=True) + key_frequency_part(acts, p, freqs)
        new = kept @ W_L(model_or_state)
        new = new + logits.mean(0, keepdim=True) - new.mean(0, keepdim=True)
    return float(F.cross_entropy(new.double(), labels))


def excluded_loss_from_activations(logits: torch.Tensor, acts: torch.Tensor, W_L: torch.Tensor,
                                   directions: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy after removing the neurons' components along `directions`.

    Args:
        logits: ``[N, p]``; acts: ``[N, d_mlp]`` neuron activations of the same N inputs;
        W_L: ``[d_mlp, p]``; directions: ``[m, N]`` orthonormal rows over the inputs;
        labels: ``[N]``.

    The neurons' part along the directions is D^T (D acts); it reaches the logits through
    W_L, so the excluded logits are ``logits - D^T (D acts) W_L``.
    """
    removed = directions.T @ (directions @ acts)
    return float(F.cross_entropy((logits - removed @ W_L).double(), labels))


def excluded_loss(model_or_state: Any, p: int, freqs: Sequence[int], train_idx: torch.Tensor) -> float:
    """Training loss after removing the neurons' key-frequency cos/sin(w_k (a+b)) components.

    High excluded loss with low train loss = the model needs the key frequencies on the
    training data, i.e. it no longer relies on memorisation alone. (The directions are
    orthonormal over all p*p pairs; the loss is read on the training pairs.)
    """
    tokens, labels = all_pairs(p)
    with torch.no_grad():
        logits, acts = forward_all(params_of(model_or_state), tokens)
        removed = key_frequency_part(acts, p, freqs) @ W_L(model_or_state)
        new = logits - removed
    return float(F.cross_entropy(new[train_idx].double(), labels[train_idx]))


def measures_at(state: Mapping[str, torch.Tensor], p: int, key_freqs: Sequence[int], train_idx: torch.Tensor,
                basis: torch.Tensor | None = None) -> dict[str, float]:
    """All progress measures of one checkpoint, from a single forward pass.

    Same definitions as `restricted_loss` and `excluded_loss` (which the tests compare with
    this), plus the Gini of W_E's and W_L's Fourier-component norms and the weight norm.
    """
    st = {k: v.float() for k, v in params_of(state).items()}
    basis = fourier_basis(p)[0] if basis is None else basis
    tokens, labels = all_pairs(p)
    with torch.no_grad():
        logits, acts = forward_all(st, tokens)
    wl = W_L(st)
    part = key_frequency_part(acts, p, key_freqs)
    restricted = (acts.mean(0, keepdim=True) + part) @ wl
    restricted = restricted + logits.mean(0, keepdim=True) - restricted.mean(0, keepdim=True)
    excluded = (logits - part @ wl)[train_idx]
    return {
        "restricted_loss": float(F.cross_entropy(restricted.double(), labels)),
        "excluded_loss": float(F.cross_entropy(excluded.double(), labels[train_idx])),
        "gini_W_E": gini((basis @ W_E(st)[:p]).norm(dim=1)),
        "gini_W_L": gini((wl @ basis.T).norm(dim=0)),
        "weight_norm": weight_norm(st),
    }


def progress_measures(states: Mapping[int, Mapping[str, torch.Tensor]], cfg: Any,
                      key_freqs: Sequence[int] | None = None) -> dict[str, list]:
    """All progress measures over a run's checkpoints (`measures_at` at each).

    Args:
        states: step -> state dict (a `GrokRun`'s `checkpoints`, or checkpoints read from disk).
        cfg: the run's `GrokConfig` (p and the split).
        key_freqs: defaults to the key frequencies of the last checkpoint's embedding.

    Returns:
        dict with ``steps``, ``key_freqs``, and per step ``restricted_loss``, ``excluded_loss``,
        ``gini_W_E``, ``gini_W_L``, ``weight_norm``.
    """
    steps = sorted(states)
    p = cfg.p
    if key_freqs is None:
        key_freqs = key_frequencies(W_E(states[steps[-1]]), p)
    train_idx, _ = make_split(p, cfg.frac_train, cfg.data_seed, cfg.split)
    basis, _ = fourier_basis(p)
    out: dict[str, list] = {"steps": steps, "key_freqs": list(key_freqs)}
    for s in steps:
        for name, value in measures_at(states[s], p, key_freqs, train_idx, basis).items():
            out.setdefault(name, []).append(value)
    return out


def _first(steps: Sequence[int], values: Sequence[float | None], pred) -> int | None:
    for s, v in zip(steps, values):
        if v is not None and pred(v):
            return int(s)
    return None


def phase_boundaries(steps: Sequence[int], metrics: Mapping[str, Sequence[float]]) -> dict[str, int | None]:
    """Where the measures put the three phases' edges (not where the paper put them).

    - memorisation ends when train accuracy first reaches 99%;
    - circuit formation ends (cleanup starts) when the excluded loss peaks: from here on
      the memorised part is being removed faster than the key-frequency circuit grows
      (not reached if the excluded loss never rose or test accuracy never reached 50%);
    - cleanup ends when test accuracy first reaches 99% *and* the Gini of W_L's Fourier
      norms has risen to within 10% of its final value.
    """
    mem_end = _first(steps, metrics["train_acc"], lambda v: v >= 0.99)
    out: dict[str, int | None] = {"memorisation_end": mem_end, "cleanup_start": None, "cleanup_end": None}
    if mem_end is None:
        return out
    after = [i for i, s in enumerate(steps) if s >= mem_end]
    exc = [metrics["excluded_loss"][i] for i in after]
    peak = int(np.argmax(exc))
    if peak == 0 or max(metrics["test_acc"]) < 0.5:
        return out  # the excluded loss has not risen, or the model has not begun to generalise
    out["cleanup_start"] = int(steps[after[peak]])
    g_final = metrics["gini_W_L"][-1]
    g_start = metrics["gini_W_L"][after[0]]
    for i in after:
        if (steps[i] >= out["cleanup_start"] and metrics["test_acc"][i] >= 0.99
                and metrics["gini_W_L"][i] - g_start >= 0.9 * (g_final - g_start)):
            out["cleanup_end"] = int(steps[i])
            break
    return out


def pick_checkpoints(steps: Sequence[int], phases: Mapping[str, int | None], n: int = 8) -> list[int]:
    """A few steps worth shipping: the first, the last, the phase edges, the rest spread evenly."""
    steps = sorted(steps)
    chosen = [steps[0], steps[-1]] + [v for v in phases.values() if v is not None and v in steps]
    for g in np.linspace(0, len(steps) - 1, num=max(n, 2)):
        chosen.append(steps[int(round(g))])
    unique: list[int] = []
    for s in chosen:
        if s not in unique:
            unique.append(s)
    return sorted(unique[:n])


__all__ = [
    "fourier_basis", "n_freqs", "frequency_norms", "frequency_shares", "key_frequencies", "gini", "W_E", "W_L",
    "weight_norm", "last_position", "fourier_2d", "frequency_fraction", "neuron_frequency_fractions", "single_frequency_neurons",
    "cos_sum_fit", "sum_directions", "key_frequency_part", "restricted_loss", "excluded_loss_from_activations", "excluded_loss",
    "measures_at", "progress_measures", "phase_boundaries", "pick_checkpoints",
]


# --------------------------------------------------------------------------------------
# Figures and explorers
# --------------------------------------------------------------------------------------

PHASE_COLOURS = {"memorisation": "#fde2c8", "circuit formation": "#d8e8f8", "cleanup": "#dcf3dc"}


def phase_spans(phases: Mapping[str, int | None], last_step: int) -> dict[str, tuple[int, int]]:
    """(start, end) of each phase from `phase_boundaries`' edges (phases not reached are left out)."""
    m, c0, c1 = phases.get("memorisation_end"), phases.get("cleanup_start"), phases.get("cleanup_end")
    spans: dict[str, tuple[int, int]] = {}
    if m is not None:
        spans["memorisation"] = (0, m)
        if c0 is not None:
            spans["circuit formation"] = (m, c0)
            spans["cleanup"] = (c0, c1 if c1 is not None else last_step)
    return spans


def shade_phases(ax, phases: Mapping[str, int | None], last_step: int, labels: bool = True) -> None:
    """Shade the phases on an axis with step on x."""
    for name, (lo, hi) in phase_spans(phases, last_step).items():
        ax.axvspan(lo, hi, color=PHASE_COLOURS[name], alpha=0.6, lw=0, zorder=0)
        if labels:
            ax.text((lo + hi) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7)


def plot_progress(steps: Sequence[int], metrics: Mapping[str, Sequence[float]], phases: Mapping[str, int | None],
                  title: str = "", paper_phases: Mapping[str, int] | None = None):
    """Four panels over training: losses (train, test, restricted, excluded), Gini of the Fourier
    norms of W_E and W_L, the weight norm, and accuracy; the measured phases are shaded."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    panels = [
        (["train_loss", "test_loss", "restricted_loss", "excluded_loss"], True, "loss"),
        (["gini_W_E", "gini_W_L"], False, "Gini of Fourier norms"),
        (["weight_norm"], False, "sum of squared weights"),
        (["train_acc", "test_acc"], False, "accuracy"),
    ]
    styles = {"restricted_loss": "--", "excluded_loss": ":"}
    for ax, (names, log, label) in zip(axes, panels):
        shade_phases(ax, phases, steps[-1], labels=ax is axes[0])
        for n in names:
            if n in metrics:
                ax.plot(steps, metrics[n], styles.get(n, "-"), label=n, lw=1.4)
        if paper_phases:
            for x in paper_phases.values():
                if x <= steps[-1]:
                    ax.axvline(x, color="k", lw=0.6, ls="-.")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_frequency_shares(W: torch.Tensor, p: int, key_freqs: Sequence[int] = (), ax=None, title: str = ""):
    """Bar chart: each frequency's share of ||W[:p]||^2, key frequencies highlighted."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 2.8))
    shares = frequency_shares(W, p).numpy()
    ks = np.arange(1, len(shares) + 1)
    colours = ["C3" if k in key_freqs else "C0" for k in ks]
    ax.bar(ks, shares, color=colours, width=0.8)
    for k in key_freqs:
        ax.text(k, shares[k - 1], str(k), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("frequency k")
    ax.set_ylabel("share of ||W_E||²")
    ax.set_title(title or "embedding: share of each frequency", fontsize=9)
    return ax.figure


def plot_neuron(acts: torch.Tensor, neuron: int, ax=None, title: str = ""):
    """Heatmap of one neuron's activation over (a, b)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(3.4, 3))
    im = ax.imshow(acts[:, :, neuron].numpy(), cmap="viridis", origin="lower")
    ax.set_xlabel("b")
    ax.set_ylabel("a")
    ax.set_title(title or f"neuron {neuron}", fontsize=9)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax.figure


def scrubber_view(run: Any, step: int, neuron: int, key_freqs: Sequence[int], phases: Mapping[str, int | None] | None = None):
    """A training step in context: where it sits on the loss curves, the embedding's Fourier
    spectrum at that checkpoint, and one neuron's activation over (a, b)."""
    import matplotlib.pyplot as plt

    state = run.state_at(step)
    shown = min(run.checkpoints, key=lambda s: abs(s - step))
    h = run.history
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.3), gridspec_kw={"width_ratios": [1.1, 1.5, 0.9]})
    ax = axes[0]
    if phases:
        shade_phases(ax, phases, h.steps[-1], labels=False)
    for n in ("train_loss", "test_loss"):
        ax.plot(h.steps, h[n], label=n)
    ax.set_yscale("log")
    ax.axvline(shown, color="k", lw=1.2)
    ax.set_xlabel("step")
    ax.set_title(f"step {shown}", fontsize=9)
    ax.legend(fontsize=7)
    plot_frequency_shares(W_E(state), run.p, key_freqs, ax=axes[1], title=f"embedding spectrum at step {shown}")
    _, acts = last_position(state, run.p)
    plot_neuron(acts, neuron, ax=axes[2], title=f"neuron {neuron} at step {shown}")
    fig.tight_layout()
    return fig


class FrequencyPicker:
    """Precomputes a model's logits and neurons once; `view(freq)` then shows one frequency:
    where the numbers sit in the embedding's (cos k, sin k) plane, and the loss when the
    neurons keep only that frequency or lose it."""

    def __init__(self, model_or_state: Any, p: int, key_freqs: Sequence[int]):
        self.p, self.key_freqs = p, list(key_freqs)
        self.state = {k: v.detach().float() for k, v in params_of(model_or_state).items()}
        tokens, self.labels = all_pairs(p)
        with torch.no_grad():
            self.logits, self.acts = forward_all(self.state, tokens)
        self.W_L = W_L(self.state)
        basis, _ = fourier_basis(p)
        self.basis = basis
        self.coeffs = basis @ W_E(self.state)[:p]  # [p, d_model]
        self.base_loss = float(F.cross_entropy(self.logits.double(), self.labels))

    def losses(self, freq: int) -> dict[str, float]:
        """Loss on all pairs: as trained, without frequency `freq` in the neurons, and with only it (+ mean)."""
        D = sum_directions(self.p, [freq])
        part = D.T @ (D @ self.acts)
        without = self.logits - part @ self.W_L
        only = (self.acts.mean(0, keepdim=True) + part) @ self.W_L
        only = only + self.logits.mean(0, keepdim=True) - only.mean(0, keepdim=True)
        ce = lambda z: float(F.cross_entropy(z.double(), self.labels))  # noqa: E731
        return {"as trained": self.base_loss, f"without k={freq}": ce(without), f"only k={freq}": ce(only)}

    def view(self, freq: int):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 1.3, 1]})
        # 1. each number's embedding along the cos-k and sin-k components
        c, s = self.coeffs[2 * freq - 1], self.coeffs[2 * freq]
        x = torch.arange(self.p)
        E = W_E(self.state)[: self.p]
        u = c / c.norm().clamp_min(1e-9)
        v = s - (s @ u) * u
        v = v / v.norm().clamp_min(1e-9)
        px, py = (E @ u).numpy(), (E @ v).numpy()
        sc = axes[0].scatter(px, py, c=(freq * x % self.p).numpy(), cmap="hsv", s=14)
        for i in range(0, self.p, max(1, self.p // 12)):
            axes[0].annotate(str(i), (px[i], py[i]), fontsize=6)
        axes[0].set_title(f"numbers in the embedding's cos/sin {freq} plane", fontsize=9)
        axes[0].set_aspect("equal", adjustable="datalim")
        fig.colorbar(sc, ax=axes[0], fraction=0.046, label=f"{freq}·x mod p")
        # 2. the two basis functions themselves
        axes[1].plot(x, self.basis[2 * freq - 1].numpy(), label=f"cos(2π·{freq}x/p)")
        axes[1].plot(x, self.basis[2 * freq].numpy(), label=f"sin(2π·{freq}x/p)")
        axes[1].set_xlabel("x")
        share = float(frequency_shares(E, self.p)[freq - 1])
        axes[1].set_title(f"k={freq}: {share:.1%} of ||W_E||²" + (" (key)" if freq in self.key_freqs else ""), fontsize=9)
        axes[1].legend(fontsize=7, loc="upper right")
        # 3. what removing or keeping it does to the loss
        losses = self.losses(freq)
        names = list(losses)
        axes[2].bar(names, [max(losses[n], 1e-8) for n in names], color=["C0", "C3", "C2"])
        axes[2].set_yscale("log")
        axes[2].axhline(math.log(self.p), color="grey", ls="--", lw=0.8)
        axes[2].text(2.4, math.log(self.p), "chance", fontsize=7, ha="right", va="bottom")
        axes[2].set_title("loss on all pairs", fontsize=9)
        axes[2].tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        return fig


def example_neurons(acts: torch.Tensor, p: int, best_freq: torch.Tensor, key_freqs: Sequence[int], n: int = 4) -> list[int]:
    """The most active neuron of each of the first `n` key frequencies (then the most active others)."""
    scale = acts.flatten(0, 1).std(0)
    chosen: list[int] = []
    for k in list(key_freqs)[:n]:
        members = torch.nonzero(best_freq == k).flatten()
        if len(members):
            chosen.append(int(members[scale[members].argmax()]))
    for i in torch.argsort(scale, descending=True).tolist():
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(int(i))
    return chosen


__all__ += ["example_neurons", "phase_spans", "shade_phases", "plot_progress", "plot_frequency_shares", "plot_neuron",
            "scrubber_view",
            "FrequencyPicker"]
