"""Notebook 05's evidence layer: uncertainty over prompts, the interchange flip, and self-repair with the norm split out.

- `per_prompt_table`, `rank_interval`, `spearman_interval`, `share_interval`: bootstrap intervals over
  prompts for every rank, correlation and share the notebook reads from an all-heads sweep.
- `interchange_flip`: patch candidate heads from prompt B into prompt A (an interchange intervention,
  Geiger et al. 2021) and measure whether A's output moves to B's answer, against random head sets
  of the same size and against mean-ablating the same heads (damage).
- `frozen_split`: a head's total effect = direct effect (read with the CLEAN run's final-norm scale)
  - final-norm-scale repair - repair by the other components (Rushing & Nanda 2024, arXiv 2402.15390).
- `frozen_direct_effect`: the exercise's reference (one head, one position).
- `swap_io_s` / `successor_swap`: aligned B prompts for both tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .lab.hooks import Head, all_heads, head_label, head_outputs, hook_name
from .lab.patching import Patch, copies_runner, heads_replaced, patch_hooks
from .lab.readout import direct_logit_attribution, norm_of
from .lab.scores import Interval, bootstrap, ranks, spearman

# --------------------------------------------------------------------------------------
# Bootstrap over prompts for all-heads sweeps
# --------------------------------------------------------------------------------------


def per_prompt_table(sweep, n_layers: int, n_heads: int) -> torch.Tensor:
    """A single-head all-heads `ablation.Sweep` as per-prompt tables ``[batch, n_layers, n_heads]``."""
    if sweep.per_prompt is None or len(sweep.groups) != n_layers * n_heads:
        raise ValueError("need an all-heads sweep with per-prompt drops (ablation.sweep over every head)")
    out = torch.empty(sweep.per_prompt.shape[1], n_layers, n_heads)
    for g, v in zip(sweep.groups, sweep.per_prompt):
        out[:, g[0][0], g[0][1]] = v
    return out


def rank_interval(per_prompt: torch.Tensor, head: Head, n: int = 200, seed: int = 0) -> Interval:
    """Rank (1 = largest mean drop) of `head` among all heads, with its bootstrap interval over prompts."""
    return bootstrap(per_prompt, lambda t: float(ranks(t.mean(0))[head]), n=n, seed=seed)


def spearman_interval(a: torch.Tensor, b: torch.Tensor, n: int = 200, seed: int = 0) -> Interval:
    """Spearman correlation of two methods' mean tables, resampling the SAME prompts for both."""
    if a.shape != b.shape:
        raise ValueError(f"per-prompt tables differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    x = torch.stack([a, b], 1)
    return bootstrap(x, lambda t: spearman(t[:, 0].mean(0), t[:, 1].mean(0)), n=n, seed=seed)


def share_interval(per_prompt: torch.Tensor, keep, n: int = 200, seed: int = 0) -> Interval:
    """Interval of a share computed from a per-prompt table: ``keep(mean_table) -> float``."""
    return bootstrap(per_prompt, lambda t: float(keep(t.mean(0))), n=n, seed=seed)


# --------------------------------------------------------------------------------------
# Counterfactual prompts B, aligned with A
# --------------------------------------------------------------------------------------


def swap_io_s(ds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IOI prompts B = A with the second mention of S replaced by IO ("... Tim gave" -> "... Frank gave").

    In B the answer is A's S. Returns (tokens_b, answer_a, answer_b): same names, same positions,
    only the role of the two names swapped.
    """
    b = ds.tokens.clone()
    rows = torch.arange(len(b))
    b[rows, ds.pos["S2"]] = ds.io
    return b, ds.io.clone(), ds.s.clone()


def successor_swap(prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Successor prompts B = another prompt of the SAME category (its items, its answer).

    Returns (keep, tokens_b, answer_a, answer_b), `keep` the indices of the A prompts that have a
    partner with a different answer.
    """
    cat = prompts.category
    keep, partner = [], []
    for i in range(len(cat)):
        same = [j for j in range(len(cat)) if int(cat[j]) == int(cat[i]) and int(prompts.target[j]) != int(prompts.target[i])]
        if same:
            keep.append(i)
            partner.append(same[(i + 1) % len(same)])
    if not keep:
        raise ValueError("no category has two prompts with different answers")
    k, p = torch.tensor(keep), torch.tensor(partner)
    return k, prompts.tokens[p].clone(), prompts.target[k].clone(), prompts.target[p].clone()


# --------------------------------------------------------------------------------------
# The interchange flip
# --------------------------------------------------------------------------------------


@torch.no_grad()
def run_chunked(model, tokens: torch.Tensor, copies: Sequence[Sequence[Patch]], max_rows: int = 160) -> torch.Tensor:
    """Last-position logits ``[1 + n, batch, vocab]`` of the unpatched run and every copy, a few copies per pass
    (at most `max_rows` rows each, on the engine's fastest exact backend)."""
    run = copies_runner(model, tokens)
    per = max(1, max_rows // tokens.shape[0] - 1)
    out = []
    for i in range(0, len(copies), per):
        x = run(list(copies[i:i + per]))[:, :, -1]
        out.append(x if not out else x[1:])
    return torch.cat(out)


@dataclass
class Flip:
    """Interchange of `heads` from B into A. All values per prompt, metric = logit(answer A) - logit(answer B).

    `a`, `b`: the clean runs of A and B; `patched`: A with the heads' outputs taken from B;
    `random`: ``[n_sets, batch]``, A with random head sets of the same size taken from B;
    `damaged`: A with the same heads mean-ablated (a damage control), or None.
    """

    heads: list[Head]
    a: torch.Tensor
    b: torch.Tensor
    patched: torch.Tensor
    random: torch.Tensor
    damaged: torch.Tensor | None = None

    def moved(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Per prompt, the share of the way from A's output to B's: (a - x) / (a - b)."""
        x = self.patched if x is None else x
        return (self.a - x) / (self.a - self.b)

    def flip_rate(self, x: torch.Tensor | None = None) -> float:
        """Share of prompts whose output now prefers B's answer (metric < 0)."""
        x = self.patched if x is None else x
        return float((x < 0).float().mean(-1).mean())

    def summary(self, n: int = 500, seed: int = 0) -> dict:
        """The numbers the notebook reads, with bootstrap intervals over prompts."""
        rnd = self.moved(self.random)  # [n_sets, batch]
        out = {"moved": bootstrap(self.moved(), n=n, seed=seed), "flip rate": self.flip_rate(),
               "random moved": float(rnd.mean()), "random moved max": float(rnd.mean(1).max()),
               "random flip rate": self.flip_rate(self.random)}
        if self.damaged is not None:
            out["damage moved"] = float(self.moved(self.damaged).mean())
            out["damage flip rate"] = self.flip_rate(self.damaged)
        return out


@torch.no_grad()
def interchange_flip(model, tokens_a: torch.Tensor, tokens_b: torch.Tensor, answer_a: torch.Tensor,
                     answer_b: torch.Tensor, heads: Sequence[Head], n_random: int = 20, seed: int = 0,
                     damage_values: dict[int, torch.Tensor] | None = None) -> Flip:
    """Patch every head of `heads` (all positions) from run B into run A, in one batched pass.

    Args:
        tokens_a, tokens_b: ``[batch, pos]``, aligned. answer_a, answer_b: ``[batch]`` token ids.
        n_random: random head sets of the same size, also taken from B (the baseline).
        damage_values: {layer: z} to ablate the same heads with instead (e.g. mean ablation).
    """
    heads = [(int(l), int(h)) for l, h in heads]
    if tokens_a.shape != tokens_b.shape:
        raise ValueError(f"A and B prompts must be aligned: {tuple(tokens_a.shape)} vs {tuple(tokens_b.shape)}")
    if not heads:
        raise ValueError("give at least one head to patch")
    z_b = head_outputs(model, tokens_b)
    every = all_heads(model)
    rng = np.random.default_rng(seed)
    sets = [heads] + [[every[i] for i in rng.choice(len(every), len(heads), replace=False)] for _ in range(n_random)]
    copies = [[Patch(l, h, z_b[l]) for l, h in s] for s in sets]
    if damage_values is not None:
        copies.append([Patch(l, h, damage_values[l]) for l, h in heads])
    logits = run_chunked(model, tokens_a, copies)  # [1 + n, batch, vocab]
    rows = torch.arange(tokens_a.shape[0])
    m = logits[:, rows, answer_a] - logits[:, rows, answer_b]
    lb = model(tokens_b)[rows, -1]
    b = lb[rows, answer_a] - lb[rows, answer_b]
    return Flip(heads, m[0], b, m[1], m[2:2 + n_random], m[-1] if damage_values is not None else None)


# --------------------------------------------------------------------------------------
# Self-repair with the final-norm scale separated
# --------------------------------------------------------------------------------------


def frozen_direct_effect(out_clean: torch.Tensor, out_ablated: torch.Tensor, scale_clean: torch.Tensor,
                         scale_ablated: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Direct effect of one head on the logit difference, read with the CLEAN run's final-norm scale.

    Args:
        out_clean, out_ablated: ``[batch, d_model]`` the head's output (z @ W_O) at the answer position.
        scale_clean, scale_ablated: ``[batch]`` the final norm's scale (RMS) in each run; the
            ablated scale is NOT used: freezing the scale keeps the norm's response out of the direct effect.
        direction: ``[batch, d_model]`` the unembedding direction (W_U[:, answer] - W_U[:, wrong]) * norm weight.
    Returns ``[batch]``.
    """
    return ((out_clean - out_ablated) * direction).sum(-1) / scale_clean


@dataclass
class FrozenSplit:
    """total = direct - norm_repair - other_repair, exactly (means over prompts).

    `direct`: the ablated heads' direct effect with the clean final-norm scale; `norm_repair`: what the
    change of the final norm's scale gave back; `other_repair`: what every other head, MLP and
    embedding gave back (read with the clean scale); `per_run_direct`: the older reading, each run with
    its own scale; `by_head`: the other heads' rises (clean scale); `rest`: the summed rise of the MLPs, embeddings and biases.
    """

    heads: list[Head]
    total: float
    direct: float
    norm_repair: float
    other_repair: float
    per_run_direct: float
    by_head: dict[str, float]
    rest: float

    @property
    def compensation(self) -> float:
        return self.direct - self.total

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.by_head.items(), key=lambda kv: -kv[1])[:k]


def _capture_final(model, store: dict):
    name = hook_name(model.cfg.n_layers - 1, "resid_post")

    def hook(act, hook):
        store["x"] = act[:, -1].detach().clone()
    return (name, hook)


def _scale_and_ld(model, x: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor):
    """Per-prompt final-norm scale and logit difference from the final residual ``x`` [batch, d]."""
    from .lab.readout import apply_final_norm

    scale = norm_of(model).scale(x).reshape(-1)
    d = model.W_U[:, answer] - model.W_U[:, wrong]  # [d, batch]
    ld = (apply_final_norm(model, x) * d.T).sum(-1)
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        ld = ld + b_U[answer] - b_U[wrong]
    return scale, ld


@torch.no_grad()
def frozen_split(model, tokens: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, heads: Sequence[Head],
                 values: dict[int, torch.Tensor], clean=None) -> FrozenSplit:
    """Ablate `heads` (replace by `values`) and split the total effect with the final-norm scale frozen.

    Per prompt, with r = scale_ablated / scale_clean, every component's clean-scale reading in the
    ablated run is its own-scale DLA times r (the norm is linear once its scale is fixed), so the split
    is exact. The norm's bias (GPT-2's LayerNorm) is not scaled and is handled separately.
    `clean`: the result of `clean_reading` (reuse it across heads).
    """
    heads = [(int(l), int(h)) for l, h in heads]
    c, s_c, ld_c = clean or clean_reading(model, tokens, answer, wrong)
    store: dict = {}
    a = direct_logit_attribution(model, tokens, answer, wrong,
                                 fwd_hooks=patch_hooks(model, heads_replaced(heads, values)) + [_capture_final(model, store)])
    s_a, ld_a = _scale_and_ld(model, store["x"], answer, wrong)
    r = s_a / s_c
    norm = norm_of(model)
    bias = (((model.W_U[:, answer] - model.W_U[:, wrong]).T * norm.bias).sum(-1) if norm.bias is not None
            else torch.zeros_like(ld_a))
    ld_a_frozen = (ld_a - bias) * r + bias
    hc, ha = c.per_prompt_heads, a.per_prompt_heads * r[:, None, None]
    mask = torch.zeros(hc.shape[1:], dtype=torch.bool)
    for h in heads:
        mask[h] = True
    direct_f = float((hc - ha)[:, mask].sum(-1).mean())
    total = float((ld_c - ld_a).mean())
    norm_repair = float((ld_a - ld_a_frozen).mean())
    other = direct_f - total - norm_repair
    rise = (ha - hc).mean(0)
    by_head = {head_label((l, h)): float(rise[l, h]) for l in range(rise.shape[0]) for h in range(rise.shape[1])
               if not mask[l, h]}
    per_run = float(sum(c.heads[h] - a.heads[h] for h in heads))
    return FrozenSplit(heads, total, direct_f, norm_repair, other, per_run, by_head, other - float(rise[~mask].sum()))


@torch.no_grad()
def clean_reading(model, tokens, answer, wrong):
    """The clean run's DLA, per-prompt final-norm scale and logit difference (for `frozen_split`)."""
    store: dict = {}
    c = direct_logit_attribution(model, tokens, answer, wrong, fwd_hooks=[_capture_final(model, store)])
    s_c, ld_c = _scale_and_ld(model, store["x"], answer, wrong)
    return c, s_c, ld_c


__all__ = [
    "per_prompt_table", "rank_interval", "spearman_interval", "share_interval", "swap_io_s", "successor_swap",
    "run_chunked", "Flip", "interchange_flip", "frozen_direct_effect", "FrozenSplit", "frozen_split", "clean_reading",
]
