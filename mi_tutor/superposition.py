"""Toy models of superposition (Elhage et al. 2022, "Toy Models of Superposition", arXiv 2209.10652).

A toy model squeezes `n` sparse features into `m < n` hidden dimensions and reads them back:

    h = W x                      (W: [m, n], column W_i is feature i's direction)
    x_hat = ReLU(W^T h + b)

Each feature is active with probability `density` (= 1 - sparsity) and then uniform in [0, 1].
The loss is the importance-weighted squared error. Because the ground truth (the columns W_i
and the one-hot input directions e_i) is known, these models are the test bench on which
notebook 07 scores sparse autoencoders (`mi_tutor.sae`) and parameter decomposition
(`mi_tutor.spd`).

Training is vectorised over *instances*: `train_instances` trains k independent models (each
with its own feature density) in one batch, which is how the phase diagram stays cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .training import History, train


# ----------------------------------------------------------------------------- data

def sample_features(batch: int, n_features: int, density: float | torch.Tensor, generator: torch.Generator | None = None,
                    instances: int | None = None) -> torch.Tensor:
    """Sparse feature vectors: each feature is active with probability `density`, then ~ U(0, 1).

    Returns [batch, n_features], or [batch, instances, n_features] when `instances` is given
    (then `density` may be a tensor [instances], one density per instance).
    """
    if n_features < 1 or batch < 1:
        raise ValueError(f"batch and n_features must be positive, got batch={batch}, n_features={n_features}")
    shape = (batch, n_features) if instances is None else (batch, instances, n_features)
    dens = torch.as_tensor(density, dtype=torch.float32)
    if instances is not None and dens.ndim == 1:
        if dens.shape[0] != instances:
            raise ValueError(f"density has {dens.shape[0]} values but there are {instances} instances")
        dens = dens[None, :, None]
    if (dens < 0).any() or (dens > 1).any():
        raise ValueError("density must be in [0, 1] (it is 1 - sparsity)")
    values = torch.rand(shape, generator=generator)
    active = torch.rand(shape, generator=generator) < dens
    return values * active


# ----------------------------------------------------------------------------- the model

class ToyModel(nn.Module):
    """The ReLU-output toy model of Elhage et al. (2022): x -> h = W x -> ReLU(W^T h + b).

    Args:
        n_features: n (input and output size).
        n_hidden: m (the bottleneck); superposition needs m < n.
        instances: train k independent copies at once (W: [k, m, n]); 1 gives an ordinary model.
    """

    def __init__(self, n_features: int, n_hidden: int, instances: int = 1, seed: int = 0):
        super().__init__()
        if n_hidden < 1 or n_features < 1:
            raise ValueError("n_features and n_hidden must be positive")
        g = torch.Generator().manual_seed(seed)
        self.n_features, self.n_hidden, self.instances = n_features, n_hidden, instances
        w = torch.randn(instances, n_hidden, n_features, generator=g) * math.sqrt(2.0 / (n_hidden + n_features))
        self.W = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(instances, n_features))

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_features:
            raise ValueError(f"input has {x.shape[-1]} features, the model expects {self.n_features} "
                             "(shape [batch, n_features] or [batch, instances, n_features])")
        if x.ndim == 2:
            if self.instances != 1:
                raise ValueError("this model has several instances: pass x of shape [batch, instances, n_features]")
            x = x[:, None, :]
        return x

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """h = W x: [batch, n_hidden] (or [batch, instances, n_hidden])."""
        squeeze = x.ndim == 2
        h = torch.einsum("kmn,bkn->bkm", self.W, self._check(x))
        return h[:, 0] if squeeze else h

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """x_hat = ReLU(W^T h + b) from hidden activations h."""
        squeeze = h.ndim == 2
        if squeeze:
            h = h[:, None, :]
        out = torch.relu(torch.einsum("kmn,bkm->bkn", self.W, h) + self.b)
        return out[:, 0] if squeeze else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.hidden(x))

    def feature_directions(self, instance: int = 0) -> torch.Tensor:
        """The ground-truth feature directions in hidden space: W_i as rows, [n_features, n_hidden]."""
        return self.W[instance].detach().T.clone()


def toy_loss(model: ToyModel, x: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Importance-weighted squared error, summed over features, averaged over batch (and instances)."""
    err = (model(x) - x) ** 2
    if importance is not None:
        err = err * importance
    return err.sum(-1).mean()


@dataclass
class ToyRun:
    """A trained toy model and what its training recorded."""

    model: ToyModel
    history: History
    densities: torch.Tensor
    importance: torch.Tensor


def train_instances(n_features: int, n_hidden: int, densities: Sequence[float],
                    importance: Sequence[float] | torch.Tensor | None = None,
                    steps: int = 3000, batch: int = 1024, lr: float = 3e-3, seed: int = 0, progress: bool = False,
                    hidden_dims: Sequence[int] | None = None) -> ToyRun:
    """Train one toy model per density (vectorised), with per-feature `importance` (default all 1).

    `importance` may be [n_features] (shared) or [instances, n_features]. `hidden_dims` (one per
    instance, each <= n_hidden) trains smaller bottlenecks in the same batch: the unused hidden
    rows of W are held at zero.
    """
    dens = torch.tensor(list(densities), dtype=torch.float32)
    k = len(dens)
    imp = torch.ones(n_features) if importance is None else torch.as_tensor(importance, dtype=torch.float32)
    if imp.shape[-1] != n_features:
        raise ValueError(f"importance has {imp.shape[-1]} entries, expected one per feature ({n_features})")
    torch.manual_seed(seed)
    model = ToyModel(n_features, n_hidden, instances=k, seed=seed)
    keep = None
    if hidden_dims is not None:
        if len(hidden_dims) != k or max(hidden_dims) > n_hidden:
            raise ValueError("hidden_dims needs one value <= n_hidden per density")
        keep = (torch.arange(n_hidden)[None, :] < torch.tensor(list(hidden_dims))[:, None]).float()[:, :, None]
        with torch.no_grad():
            model.W.mul_(keep)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    # cosine decay: the end state is cleaner and more reproducible
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    def step_fn(step: int) -> float:
        x = sample_features(batch, n_features, dens, g, instances=k)
        loss = toy_loss(model, x, imp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if keep is not None:
            with torch.no_grad():
                model.W.mul_(keep)
        return loss.item() * k  # loss summed over instances

    eval_g = torch.Generator().manual_seed(seed + 2)
    x_eval = sample_features(1024, n_features, dens, eval_g, instances=k)

    def eval_fn(step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"loss": toy_loss(model, x_eval, imp).item()}

    hist = train(step_fn, steps, eval_fn=eval_fn, eval_every=max(1, steps // 10), desc="toy model", progress=progress)
    model.eval()
    return ToyRun(model, hist, dens, imp)


def train_toy(n_features: int = 40, n_hidden: int = 10, density: float = 0.05, steps: int = 3000, seed: int = 0,
              lr: float = 3e-3, progress: bool = False) -> ToyRun:
    """Train one ordinary toy model (a single instance) with uniform importance."""
    run = train_instances(n_features, n_hidden, [density], None, steps=steps, lr=lr, seed=seed, progress=progress)
    single = ToyModel(n_features, n_hidden, instances=1, seed=seed)
    single.load_state_dict(run.model.state_dict())
    single.eval()
    for p in single.parameters():
        p.requires_grad_(False)
    return ToyRun(single, run.history, run.densities, run.importance)


def random_toy(n_features: int = 40, n_hidden: int = 10, seed: int = 1) -> ToyModel:
    """A randomly initialised (untrained) toy model: the Heap et al. (2025) control."""
    model = ToyModel(n_features, n_hidden, seed=seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def silenced_copy(model: ToyModel, feature: int, bias: float = -10.0) -> ToyModel:
    """A copy of a single-instance toy model whose output `feature` is switched off (its ReLU bias set very negative).

    The hidden activation h = W x is unchanged, so feature `feature` is still *written* into h as
    before; but its own output unit never fires, so downstream only the other outputs' interference
    terms (mostly cut by their ReLUs) can read that direction: a direction present in h that the
    model barely uses.
    """
    if model.instances != 1:
        raise ValueError("silence a feature of a single-instance toy model (train_toy)")
    if not 0 <= feature < model.n_features:
        raise ValueError(f"feature must be in 0..{model.n_features - 1}, got {feature}")
    out = ToyModel(model.n_features, model.n_hidden, instances=1)
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        out.b[0, feature] = bias
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def readout_fn(model: ToyModel):
    """The single-instance model's readout h -> ReLU(W^T h + b) as a function that broadcasts over leading dims."""
    W, b = model.W.detach()[0], model.b.detach()[0]
    return lambda h: torch.relu(h @ W + b)


# ----------------------------------------------------------------------------- geometry

def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """||W_i|| per feature (W: [m, n]): near 1 = represented, near 0 = dropped."""
    return W.norm(dim=0)


def superposition_score(W: torch.Tensor) -> torch.Tensor:
    """Elhage et al.'s per-feature interference sum_{j != i} (W_i_hat . W_j)^2 (0 = a dimension of its own)."""
    unit = W / W.norm(dim=0, keepdim=True).clamp_min(1e-8)
    dots = (unit.T @ W) ** 2
    return dots.sum(1) - torch.diagonal(dots)


def dimensions_per_feature(W: torch.Tensor) -> float:
    """m / ||W||_F^2: 1 when each represented feature has its own dimension, < 1 in superposition."""
    return float(W.shape[0] / (W ** 2).sum().clamp_min(1e-8))


def plot_geometry(run: ToyRun, title: str = "Feature directions W_i in the 2-D hidden space"):
    """One panel per instance: the columns of W (2-D hidden space) as arrows, coloured by importance."""
    import matplotlib.pyplot as plt

    W = run.model.W.detach()
    if W.shape[1] != 2:
        raise ValueError("plot_geometry draws 2-D hidden spaces: train with n_hidden=2")
    k, n = W.shape[0], W.shape[2]
    imp = run.importance if run.importance.ndim == 1 else run.importance[0]
    colors = plt.cm.viridis(np.linspace(0, 0.9, n))
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.9), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for j in range(n):
            x, y = W[i, :, j].tolist()
            ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=colors[j], lw=1.6))
            ax.text(x * 1.12, y * 1.12, str(j), color=colors[j], ha="center", va="center", fontsize=8)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
        represented = int((W[i].norm(dim=0) > 0.5).sum())
        ax.set_title(f"density {run.densities[i]:.2g}\n{represented}/{n} features represented", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + f"  (importance {imp[0]:.2g} … {imp[-1]:.2g}; label = feature index)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- phase diagram

PHASES = ("not represented", "dedicated dimension", "superposition")


@dataclass
class PhaseDiagram:
    densities: np.ndarray      # [rows]
    importances: np.ndarray    # [cols] importance of feature 1 relative to feature 0
    phase: np.ndarray          # [rows, cols] index into PHASES (what happens to feature 1)
    W: np.ndarray              # [rows, cols, 2] the 1-D weights of both features


def phase_diagram(densities: Sequence[float] = tuple(np.logspace(0, -2, 5)),
                  importances: Sequence[float] = tuple(np.logspace(-1, 1, 5)),
                  steps: int = 600, restarts: int = 2, batch: int = 256, seed: int = 0) -> PhaseDiagram:
    """Elhage et al.'s smallest phase diagram: 2 features, 1 hidden dimension.

    For each (density, relative importance of feature 1) `restarts` models are trained, all
    cells and restarts as ONE batched model (a leading "copy" dimension), and the one with the
    lowest loss is kept; feature 1 is then *not represented*
    (|W_1| < 0.5), has a *dedicated dimension* (feature 0 is dropped instead), or shares the
    dimension with feature 0 in *superposition* (both kept, pointing in opposite directions).
    """
    dens = np.asarray(densities, float)
    imps = np.asarray(importances, float)
    cells = len(dens) * len(imps)
    grid_d = np.tile(np.repeat(dens, len(imps)), restarts)
    grid_i = np.tile(np.tile(imps, len(dens)), restarts)
    importance = torch.tensor(np.stack([np.ones_like(grid_i), grid_i], 1), dtype=torch.float32)
    run = train_instances(2, 1, grid_d.tolist(), importance, steps=steps, batch=batch, lr=1e-2, seed=seed)
    g = torch.Generator().manual_seed(seed + 3)
    x = sample_features(8192, 2, torch.tensor(grid_d, dtype=torch.float32), g, instances=len(grid_d))
    with torch.no_grad():
        loss = (((run.model(x) - x) ** 2) * importance).sum(-1).mean(0)  # [instances]
    best = loss.reshape(restarts, cells).argmin(0)
    W = run.model.W.detach()[:, 0, :].reshape(restarts, cells, 2)[best, torch.arange(cells)].numpy()
    norms = np.abs(W)
    phase = np.where(norms[:, 1] < 0.5, 0, np.where(norms[:, 0] < 0.5, 1, 2))
    shape = (len(dens), len(imps))
    return PhaseDiagram(dens, imps, phase.reshape(shape), W.reshape(*shape, 2))


def plot_phase_diagram(pd: PhaseDiagram):
    """The phase diagram as a coloured grid (what happens to feature 1)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#dddddd", "#4c72b0", "#dd8452"])
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    ax.imshow(pd.phase, cmap=cmap, vmin=0, vmax=2, aspect="auto", origin="upper")
    ax.set_xticks(range(len(pd.importances)), [f"{v:.2g}" for v in pd.importances])
    ax.set_yticks(range(len(pd.densities)), [f"{v:.2g}" for v in pd.densities])
    ax.set_xlabel("importance of feature 1 / importance of feature 0")
    ax.set_ylabel("feature density (1 - sparsity)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
    ax.legend(handles, PHASES, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("2 features in 1 dimension: what happens to feature 1", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- explorer

@dataclass
class SuperpositionGrid:
    """Precomputed toy models for the sparsity/dimension explorer (one instance per (n_hidden, density))."""

    n_features: int
    densities: list[float]
    hidden: list[int]
    run: ToyRun

    def W(self, n_hidden: int, density: float) -> torch.Tensor:
        """The trained W [n_hidden, n_features] of the model nearest to (n_hidden, density)."""
        if n_hidden not in self.hidden:
            raise ValueError(f"n_hidden must be one of {self.hidden}")
        i = int(np.argmin([abs(d - density) for d in self.densities]))
        return self.run.model.W.detach()[self.hidden.index(n_hidden) * len(self.densities) + i, :n_hidden]


def superposition_grid(n_features: int = 8, hidden: Sequence[int] = (2, 3, 5), densities: Sequence[float] = (1.0, 0.3, 0.1,
                                                                                                             0.03, 0.01),
                       decay: float = 0.8, steps: int = 2000, batch: int = 256, seed: int = 0) -> SuperpositionGrid:
    """Train the explorer's models (one batched run): every (n_hidden, density) pair, importance decay**i."""
    imp = torch.tensor([decay ** i for i in range(n_features)])
    dens = [d for _ in hidden for d in densities]
    dims = [m for m in hidden for _ in densities]
    run = train_instances(n_features, max(hidden), dens, imp, steps=steps, batch=batch, lr=1e-2, seed=seed, hidden_dims=dims)
    return SuperpositionGrid(n_features, list(densities), list(hidden), run)


def plot_superposition(grid: SuperpositionGrid, n_hidden: int, density: float):
    """Explorer view: W^T W (who interferes with whom) and per-feature norm / superposition."""
    import matplotlib.pyplot as plt

    W = grid.W(n_hidden, density)
    n = W.shape[1]
    density = grid.densities[int(np.argmin([abs(d - density) for d in grid.densities]))]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.4, 3.3), gridspec_kw={"width_ratios": [1, 1.3]})
    gram = (W.T @ W).numpy()
    im = a0.imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1)
    a0.set_title("W^T W (diagonal = norm², off = interference)", fontsize=9)
    a0.set_xlabel("feature")
    a0.set_ylabel("feature")
    fig.colorbar(im, ax=a0, fraction=0.046)
    norms = feature_norms(W).numpy()
    sup = superposition_score(W).clamp(0, 1).numpy()
    a1.bar(range(n), norms, color=plt.cm.coolwarm(sup))
    a1.set_ylim(0, 1.3)
    a1.set_xlabel("feature (importance decreases →)")
    a1.set_ylabel("||W_i||")
    a1.set_title("norm (colour: blue = own dimension, red = superposed)", fontsize=9)
    fig.suptitle(f"{n} features in {n_hidden} dimensions, density {density:.2g}: "
                 f"{int((norms > 0.5).sum())} represented, dimensions/feature {dimensions_per_feature(W):.2f}", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = [
    "sample_features", "ToyModel", "toy_loss", "ToyRun", "train_instances", "train_toy", "random_toy", "silenced_copy",
    "readout_fn",
    "feature_norms", "superposition_score", "dimensions_per_feature", "plot_geometry", "PHASES", "PhaseDiagram",
    "phase_diagram", "plot_phase_diagram", "SuperpositionGrid", "superposition_grid", "plot_superposition",
]
