"""Sparse autoencoders (activation decomposition) and the stress tests of notebook 07.

An SAE (Bricken et al. 2023, "Towards Monosemanticity") rewrites an activation h as a sparse,
non-negative combination of learned directions:

    z = ReLU(W_enc (h - b_dec) + b_enc)       latents  [batch, d_sae]
    h_hat = W_dec z + b_dec                    W_dec's columns have unit norm
    loss = ||h - h_hat||^2 + l1 * ||z||_1      (summed over dimensions, averaged over the batch)

On a toy model of superposition (`mi_tutor.superposition`) the true feature directions are known,
so the SAE can be scored: `feature_recovery` is the mean, over true features, of the best cosine
similarity with any decoder direction. The stress tests measure dead latents, feature splitting,
shrinkage (L1 pulls magnitudes down) and absorption (Chanin et al. 2024, arXiv 2409.14507).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .training import History, train


class SAE(nn.Module):
    """A ReLU sparse autoencoder with unit-norm decoder columns."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0):
        super().__init__()
        if d_in < 1 or d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {d_in}, {d_sae}")
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_in, d_sae, generator=g)
        w = w / w.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())           # [d_in, d_sae]
        self.W_enc = nn.Parameter(w.T.clone())         # [d_sae, d_in] (initialised as the transpose)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.d_in, self.d_sae = d_in, d_sae

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.d_in:
            raise ValueError(f"activations have {h.shape[-1]} dimensions, this SAE expects {self.d_in}")
        return torch.relu((h - self.b_dec) @ self.W_enc.T + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.T + self.b_dec

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_hat, z)."""
        z = self.encode(h)
        return self.decode(z), z

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8))

    def directions(self) -> torch.Tensor:
        """Decoder directions as rows, [d_sae, d_in]."""
        return self.W_dec.detach().T.clone()


def sae_loss(h: torch.Tensor, h_hat: torch.Tensor, z: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """Reconstruction + sparsity: mean over the batch of ||h - h_hat||^2 (summed over dims) + l1 * sum|z|."""
    recon = ((h - h_hat) ** 2).sum(-1).mean()
    sparsity = z.abs().sum(-1).mean()
    return recon + l1_coeff * sparsity


def feature_recovery(true_dirs: torch.Tensor, learned_dirs: torch.Tensor) -> torch.Tensor:
    """Mean over true features of the max cosine similarity with any learned direction (rows are directions)."""
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    l = learned_dirs / learned_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (t @ l.T).max(dim=1).values.mean()


def cosine_matrix(true_dirs: torch.Tensor, learned_dirs: torch.Tensor) -> torch.Tensor:
    """cos(true_i, learned_j): [n_true, n_learned]."""
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    l = learned_dirs / learned_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return t @ l.T


class SAEStack(nn.Module):
    """k SAEs trained side by side as ONE batched model (a leading "copy" dimension, einsum).

    Copy i has `d_saes[i]` latents and starts exactly as `SAE(d_in, d_saes[i], seed)` would; latents
    beyond its size are masked to zero, so they get no gradient. On a CPU, where tiny models are
    bound by per-operation overhead, training k copies this way costs little more than one.
    """

    def __init__(self, d_in: int, d_saes: Sequence[int], seed: int = 0):
        super().__init__()
        if len(d_saes) < 1:
            raise ValueError("give at least one dictionary size")
        width = max(d_saes)
        k = len(d_saes)
        W_dec, b_enc = torch.zeros(k, d_in, width), torch.zeros(k, width)
        for i, d in enumerate(d_saes):
            W_dec[i, :, :d] = SAE(d_in, d, seed=seed).W_dec.detach()
        self.W_dec = nn.Parameter(W_dec)                           # [k, d_in, width]
        self.W_enc = nn.Parameter(W_dec.transpose(1, 2).clone())   # [k, width, d_in]
        self.b_enc = nn.Parameter(b_enc)
        self.b_dec = nn.Parameter(torch.zeros(k, d_in))
        self.register_buffer("latent_mask", (torch.arange(width)[None, :] < torch.tensor(list(d_saes))[:, None]).float())
        self.d_in, self.d_saes = d_in, list(d_saes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: [batch, k, d_in] (or [batch, d_in], shared by all copies) -> (h_hat [batch, k, d_in], z [batch, k, width])."""
        if h.shape[-1] != self.d_in:
            raise ValueError(f"activations have {h.shape[-1]} dimensions, these SAEs expect {self.d_in}")
        if h.ndim == 2:
            h = h[:, None, :]
        z = torch.relu(torch.einsum("kwd,bkd->bkw", self.W_enc, h - self.b_dec) + self.b_enc) * self.latent_mask
        return torch.einsum("kdw,bkw->bkd", self.W_dec, z) + self.b_dec, z

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))

    def unstack(self, i: int) -> SAE:
        """Copy i as an ordinary (frozen) `SAE`."""
        d = self.d_saes[i]
        sae = SAE(self.d_in, d)
        with torch.no_grad():
            sae.W_dec.copy_(self.W_dec[i, :, :d])
            sae.W_enc.copy_(self.W_enc[i, :d])
            sae.b_enc.copy_(self.b_enc[i, :d])
            sae.b_dec.copy_(self.b_dec[i])
        sae.eval()
        for p in sae.parameters():
            p.requires_grad_(False)
        return sae


@torch.no_grad()
def chance_recovery(n_true: int, n_learned: int, dim: int, draws: int = 500, seed: int = 0) -> float:
    """The `feature_recovery` that `n_learned` RANDOM unit directions reach against `n_true` random true
    directions in `dim` dimensions (mean over `draws`): the metric's chance level. In a 2-D hidden space
    it is high (10 random directions score about 0.93), so a recovery must be read against it."""
    if min(n_true, n_learned, dim, draws) < 1:
        raise ValueError("n_true, n_learned, dim and draws must be positive")
    g = torch.Generator().manual_seed(seed)
    t = torch.nn.functional.normalize(torch.randn(draws, n_true, dim, generator=g), dim=-1)
    l = torch.nn.functional.normalize(torch.randn(draws, n_learned, dim, generator=g), dim=-1)
    return float((t @ l.transpose(1, 2)).max(-1).values.mean())


@torch.no_grad()
def matched_recovery(true_dirs: torch.Tensor, writes: torch.Tensor) -> float:
    """A stricter recovery score, matched by behaviour rather than by the best of many directions.

    writes[i, j] is the vector component j writes into the hidden space when only feature i is on
    ([n_true, n_components, d]). Feature i is matched to the component that writes the most
    (largest norm) and scored by the cosine of that write with the true direction; mean over features.
    """
    if writes.ndim != 3 or writes.shape[0] != true_dirs.shape[0] or writes.shape[2] != true_dirs.shape[1]:
        raise ValueError(f"writes must be [n_true={true_dirs.shape[0]}, n_components, d={true_dirs.shape[1]}], "
                         f"got {tuple(writes.shape)}")
    best = writes.norm(dim=-1).argmax(1)
    chosen = writes[torch.arange(len(best)), best]
    return float(torch.nn.functional.cosine_similarity(chosen, true_dirs, dim=-1).mean())


@torch.no_grad()
def sae_writes(sae: SAE, h: torch.Tensor) -> torch.Tensor:
    """What each latent writes into the reconstruction for each input: z_j(h) * decoder_j, [batch, d_sae, d_in]."""
    return sae.encode(h)[:, :, None] * sae.directions()[None]


@dataclass
class SAERun:
    sae: SAE
    history: History
    l1_coeff: float
    seconds: float        # wall time of the training run (shared by `copies` SAEs trained together)
    n_params: int
    steps: int = 0
    batch: int = 0
    copies: int = 1


def train_saes(acts_fn: Callable[[int, torch.Generator], torch.Tensor], d_in: int, d_saes: Sequence[int],
               l1_coeffs: Sequence[float], steps: int = 2000, batch: int = 512, lr: float = 3e-3, seed: int = 0,
               progress: bool = False, downstream: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[SAERun]:
    """Train one SAE per (d_sae, l1_coeff) pair, all at once (`SAEStack`), on activations drawn fresh each
    step from `acts_fn(batch, generator)` ([batch, d_in], shared by all copies, or [batch, k, d_in]).

    Each copy minimises its own `sae_loss`; the losses are summed, and since Adam's update is per
    parameter, the copies train independently of each other.

    `downstream` (a function of activations [..., d_in] -> what the model computes from them) turns
    the reconstruction term into an *end-to-end* one, in the spirit of Braun et al. 2024 (arXiv
    2405.12241): ||downstream(h_hat) - downstream(h)||^2 instead of ||h_hat - h||^2, so a latent earns
    its place only by changing what the rest of the model computes.
    """
    if len(d_saes) != len(l1_coeffs):
        raise ValueError(f"one l1_coeff per dictionary size: got {len(d_saes)} sizes and {len(l1_coeffs)} coefficients")
    if steps < 1 or batch < 1:
        raise ValueError("steps and batch must be positive")
    torch.manual_seed(seed)
    stack = SAEStack(d_in, d_saes, seed=seed)
    l1 = torch.tensor(list(l1_coeffs), dtype=torch.float32)
    opt = torch.optim.Adam(stack.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed + 1)

    def step_fn(step: int) -> float:
        h = acts_fn(batch, g)
        h_hat, z = stack(h)
        if h.ndim == 2:
            h = h[:, None, :]
        if downstream is None:
            recon = ((h - h_hat) ** 2).sum(-1).mean(0)        # [k]: sae_loss, copy by copy
        else:
            with torch.no_grad():
                target = downstream(h)
            recon = ((downstream(h_hat) - target) ** 2).sum(-1).mean(0)
        sparsity = z.abs().sum(-1).mean(0)
        loss = (recon + l1 * sparsity).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        stack.normalise_decoder()
        return loss.item()

    t0 = time.perf_counter()
    hist = train(step_fn, steps, desc="SAE", progress=progress)
    seconds = time.perf_counter() - t0
    runs = []
    for i, c in enumerate(l1_coeffs):
        sae = stack.unstack(i)
        runs.append(SAERun(sae, hist, float(c), seconds, sum(p.numel() for p in sae.parameters()), steps, batch, len(d_saes)))
    return runs


def train_sae(acts_fn: Callable[[int, torch.Generator], torch.Tensor], d_in: int, d_sae: int, l1_coeff: float = 0.01,
              steps: int = 2000, batch: int = 512, lr: float = 3e-3, seed: int = 0, progress: bool = False,
              downstream: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SAERun:
    """Train one SAE on activations drawn fresh each step from `acts_fn(batch, generator)` (`train_saes` with one copy;
    `downstream` makes it end-to-end)."""
    return train_saes(acts_fn, d_in, [d_sae], [l1_coeff], steps=steps, batch=batch, lr=lr, seed=seed, progress=progress,
                      downstream=downstream)[0]


# ----------------------------------------------------------------------------- metrics

@torch.no_grad()
def fvu(sae: SAE, h: torch.Tensor) -> float:
    """Fraction of variance unexplained: ||h - h_hat||^2 / ||h - mean h||^2."""
    h_hat, _ = sae(h)
    return float(((h - h_hat) ** 2).sum() / ((h - h.mean(0)) ** 2).sum())


@torch.no_grad()
def l0(sae: SAE, h: torch.Tensor) -> float:
    """Mean number of latents that fire (z > 0) per input."""
    return float((sae.encode(h) > 0).float().sum(-1).mean())


@torch.no_grad()
def dead_fraction(sae: SAE, h: torch.Tensor) -> float:
    """Fraction of latents that never fire on the inputs h."""
    return float((sae.encode(h) > 0).sum(0).eq(0).float().mean())


@torch.no_grad()
def latents_per_feature(sae: SAE, h: torch.Tensor, true_dirs: torch.Tensor, threshold: float = 0.9) -> float:
    """Mean number of live latents whose decoder has cos > threshold with a true feature (>1 = splitting)."""
    alive = (sae.encode(h) > 0).any(0)
    cos = cosine_matrix(true_dirs, sae.directions())[:, alive]
    return float((cos > threshold).sum(1).float().mean())


@torch.no_grad()
def shrinkage(sae: SAE, true_dirs: torch.Tensor, magnitude: float = 0.5) -> float:
    """Mean ||h_hat|| / ||h|| over single-feature inputs h = magnitude * W_i (1 = no shrinkage)."""
    h = magnitude * true_dirs
    h_hat, _ = sae(h)
    return float((h_hat.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-8)).mean())


# ----------------------------------------------------------------------------- absorption

@dataclass
class AbsorptionResult:
    parent_latent: int
    child_latents: list[int]
    fire_rate_parent_alone: float
    fire_rate_with_child: float
    child_cos_with_parent: list[float]
    directions: torch.Tensor
    sae: SAE


def hierarchical_activations(batch: int, dirs: torch.Tensor, parent: int, children: list[int], density: float,
                             g: torch.Generator) -> torch.Tensor:
    """Activations h = sum_i x_i d_i of binary features (x_i in {0, 1}), where feature `parent` is always on
    when any child is ("snake" => "starts with s")."""
    n = dirs.shape[0]
    x = (torch.rand(batch, n, generator=g) < density).float()
    on = (x[:, children] > 0).any(1)
    x[:, parent] = torch.maximum(x[:, parent], on.float())
    return x @ dirs


def absorption_experiment(n_features: int = 8, d: int = 16, children: tuple[int, ...] = (1, 2), density: float = 0.1,
                          l1_coeff: float = 0.05, steps: int = 1500, seed: int = 0) -> AbsorptionResult:
    """Train an SAE on a hierarchy (feature 0 is the parent of `children`) and measure absorption.

    Absorption: the latent that tracks the parent stops firing when a child is active, because the
    child's latent has absorbed the parent direction (one latent is cheaper in L1 than two).
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    ch = list(children)
    run = train_sae(lambda b, gen: hierarchical_activations(b, dirs, 0, ch, density, gen), d, n_features,
                    l1_coeff=l1_coeff, steps=steps, seed=seed)
    sae = run.sae
    cos = cosine_matrix(dirs, sae.directions())
    parent_latent = int(cos[0].argmax())
    child_latents = [int(cos[c].argmax()) for c in ch]
    eg = torch.Generator().manual_seed(seed + 7)
    h = hierarchical_activations(8000, dirs, 0, ch, density, eg)
    # recover which features are on by solving against the (near-orthogonal) directions
    x = torch.linalg.lstsq(dirs.T, h.T).solution.T.round()
    z = sae.encode(h)[:, parent_latent] > 0
    child_on = (x[:, ch] > 0.5).any(1)
    parent_alone = (x[:, 0] > 0.5) & ~child_on
    rate_alone = float(z[parent_alone].float().mean())
    rate_child = float(z[child_on].float().mean())
    child_cos = [float(torch.dot(sae.directions()[j], dirs[0])) for j in child_latents]
    return AbsorptionResult(parent_latent, child_latents, rate_alone, rate_child, child_cos, dirs, sae)


# ----------------------------------------------------------------------------- sweeps

@torch.no_grad()
def sae_report(sae: SAE, h: torch.Tensor, true_dirs: torch.Tensor) -> dict[str, float]:
    """Every stress-test metric of one SAE on activations h with known true directions."""
    return {
        "recovery": float(feature_recovery(true_dirs, sae.directions())),
        "fvu": fvu(sae, h),
        "l0": l0(sae, h),
        "dead": dead_fraction(sae, h),
        "latents/feature": latents_per_feature(sae, h, true_dirs),
        "shrinkage": shrinkage(sae, true_dirs),
    }


def format_sweep(name: str, values: list, reports: list[dict[str, float]]) -> str:
    """A fixed-width table: one row per swept value."""
    keys = list(reports[0])
    lines = [f"{name:>10}" + "".join(f"{k:>16}" for k in keys)]
    for v, r in zip(values, reports):
        lines.append(f"{v:>10}" + "".join(f"{r[k]:>16.2f}" for k in keys))
    return "\n".join(lines)


def plot_sweep(name: str, values: list, reports: list[dict[str, float]], keys: list[str], logx: bool = False, ax=None):
    """Metrics against a swept hyperparameter, one line per metric."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for k in keys:
        ax.plot(values, [r[k] for r in reports], "o-", label=k)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


__all__ = [
    "sae_report", "format_sweep", "plot_sweep",
    "chance_recovery", "matched_recovery", "sae_writes", "SAE", "SAEStack", "sae_loss", "feature_recovery", "cosine_matrix",
    "SAERun", "train_saes", "train_sae", "fvu", "l0", "dead_fraction",
    "latents_per_feature", "shrinkage", "AbsorptionResult", "hierarchical_activations", "absorption_experiment",
]
