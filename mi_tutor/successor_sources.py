"""Successor heads, part two: does the model have one, and where do the methods' disagreements come from?

`successor` holds the four methods. This module holds the controls a careful reading needs:

- `effective_embeddings` / `recipe_table`: the "effective embedding" a head's OV circuit is fed
  decides its successor score. Three recipes: MLP0 of the embedding with layer 0's attention
  skipped (Gould et al. 2023, arXiv 2312.09230), the token placed after BOS (a real position 1),
  and the token alone at position 0 (where attention-sink artefacts live). A head *qualifies*
  as a successor head at a score above `QUALIFY` (0.4, the threshold of a public replication
  of Gould et al.'s score).
- `ica_null`: FastICA on head tables whose tokens are relabelled within category independently
  per head (category and copying structure kept, shared succession destroyed): the null
  distribution of the best succession correlation.
- `per_prompt_effects`, `disagreement_sources`: exact mean ablation, exact patching from the
  corrupted prompts and attribution patching from the same prompts, per prompt, so that the
  disagreement splits into baseline, linearisation and prompt noise (bootstrap over prompts),
  read with top-k overlap beside Spearman.
- `attention_to_item`: do the heads with successor OV circuits attend to the item?
- `sender_routes`: a sender's effect split by the first component that reads it: all later
  heads' queries, all later heads' keys/values, all MLPs from the sender's own layer on, or
  the final residual stream directly.
- `effective_ov_head`: one head's effective OV table from plain tensors (the exercise).
"""
from __future__ import annotations


import numpy as np
import torch

from .lab.hooks import Head, head_label, head_outputs, hook_name, logprob_metric, top_heads
from .lab.patching import (Patch, ablation_values, attribution_patch_heads, copies_runner, replace_heads, run_copies,
                           run_patched)
from .lab.readout import attention_patterns, attention_to, effective_ov, resid_after_layer0
from .lab.scores import bootstrap, spearman, top_k_overlap
from .ordinal import OrdinalTokens, SuccessorPrompts
from .successor import run_ica

#: A head is called a successor head above this score (the public replication's threshold).
QUALIFY = 0.4
RECIPES = ("MLP0 of the embedding", "after BOS", "position 0, no BOS")
#: Rows (prompt copies) per batched pass in `per_prompt_effects` (bounds the peak memory).
MAX_ROWS = 128


# --------------------------------------------------------------------------------------
# Effective embeddings: three recipes
# --------------------------------------------------------------------------------------


@torch.no_grad()
def effective_embeddings(model, ids: torch.Tensor, recipe: str) -> torch.Tensor:
    """The residual stream a head's effective OV circuit is fed for each token, ``[n, d_model]``.

    - "MLP0 of the embedding": embed(t) + MLP0(embed(t)), layer 0's attention output set to
      zero (Gould et al.'s MLP0(W_E); on GPT-2 the position-0 embedding is included);
    - "after BOS": the residual after layer 0 at position 1 of the sequence [BOS, t];
    - "position 0, no BOS": the residual after layer 0 for t alone (`lab.readout.resid_after_layer0`).
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if recipe == RECIPES[2]:
        return resid_after_layer0(model, ids)
    name = hook_name(0, "resid_post")
    if recipe == RECIPES[1]:
        bos = model.to_tokens("", prepend_bos=True)[0, :1]
        toks = torch.stack([bos.expand(len(ids)), ids], 1)
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n == name)
        return cache[name][:, 1].clone()

    no_attention = Patch(0, None, torch.zeros(len(ids), 1, model.cfg.d_model), "attn_out")
    _, cap = run_copies(model, ids[:, None], [[no_attention]], capture=[name])
    return cap[name][1][:, 0]


def recipe_tables(model, otok: OrdinalTokens) -> dict[str, torch.Tensor]:
    """{recipe: effective OV tables [n_layers, n_heads, n, n]} for the three recipes."""
    return {r: effective_ov(model, otok.ids, effective_embeddings(model, otok.ids, r)) for r in RECIPES}


def recipe_table(scores: dict[str, torch.Tensor], chance: float):
    """One row per recipe: best head, its score, x chance, how many heads pass `QUALIFY` (a DataFrame)."""
    import pandas as pd

    rows = []
    for r, s in scores.items():
        (l, h), = top_heads(s, 1)
        rows.append({"recipe": r, "best head": head_label((l, h)), "score": round(float(s[l, h]), 3),
                     "x chance": round(float(s[l, h]) / chance, 1), f"heads > {QUALIFY}": int((s > QUALIFY).sum())})
    return pd.DataFrame(rows).set_index("recipe")


# --------------------------------------------------------------------------------------
# ICA against a shuffled-head null
# --------------------------------------------------------------------------------------


def shuffle_within_category(eff_ov: torch.Tensor, otok: OrdinalTokens, seed: int = 0) -> torch.Tensor:
    """Relabel each head's tokens by its own random within-category permutation (rows and columns alike).

    Category blocks and the copying diagonal survive in every head; a succession line shared
    across heads does not (each head's is scrambled differently).
    """
    g = torch.Generator().manual_seed(seed)
    L, H, n, _ = eff_ov.shape
    out = torch.empty_like(eff_ov)
    groups = [otok.in_category(c) for c in range(len(otok.category_names))]
    for l in range(L):
        for h in range(H):
            perm = torch.arange(n)
            for idx in groups:
                perm[idx] = idx[torch.randperm(len(idx), generator=g)]
            out[l, h] = eff_ov[l, h][perm][:, perm]
    return out


def ica_null(eff_ov: torch.Tensor, otok: OrdinalTokens, n_components: int = 16, n_null: int = 10,
             seed: int = 0) -> np.ndarray:
    """Best succession correlation of any ICA component on `n_null` shuffled-head tables, ``[n_null]``."""
    out = []
    for i in range(n_null):
        res = run_ica(shuffle_within_category(eff_ov, otok, seed + 1 + i), otok, n_components, seed=seed)
        out.append(float(res.template_corr[:, 0].max()))
    return np.array(out)


def succession_component(template_corr: np.ndarray, null: np.ndarray) -> tuple[int | None, float, str]:
    """Decide whether ICA found a succession component: ``(component or None, empirical p, reason)``.

    A component counts when (i) its succession correlation beats every shuffled-head null run
    and (ii) succession is its largest template correlation (otherwise it is a copying or
    category component with a faint succession line). ``p = (1 + #null runs >= best) / (1 + n_null)``
    is the empirical p-value of the best succession correlation; with `n_null` runs it cannot go
    below ``1 / (1 + n_null)``. `template_corr` is ``[k, 3]`` (succession, copying, category).
    """
    null = np.asarray(null, dtype=float)
    if null.size == 0:
        raise ValueError("the null needs at least one run: call ica_null(..., n_null=8) first")
    succ = template_corr[:, 0]
    best = int(np.argmax(succ))
    p = float((1 + (null >= succ[best]).sum()) / (1 + null.size))
    ok = [k for k in range(len(succ)) if succ[k] > null.max() and succ[k] >= template_corr[k].max()]
    if ok:
        k = max(ok, key=lambda i: succ[i])
        return k, p, f"component #{k}: succession {succ[k]:.3f} beats the null (max {null.max():.3f}) and is its largest template"
    if succ[best] > null.max():
        other = ("copying", "category")[int(np.argmax(template_corr[best, 1:]))]
        return None, p, (f"component #{best} beats the null on succession ({succ[best]:.3f} > {null.max():.3f}) but correlates "
                         f"more with {other} ({template_corr[best, 1:].max():.2f}): a {other} component, not a succession one")
    return None, p, f"no component's succession correlation beats the null (best {succ[best]:.3f} <= {null.max():.3f})"


# --------------------------------------------------------------------------------------
# Per-prompt effects: the sources of disagreement
# --------------------------------------------------------------------------------------


@torch.no_grad()
def _replace_per_prompt(model, tokens, values, metric, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """Drop in the metric per prompt with each head replaced by `values` in turn, ``[batch, n_layers, n_heads]``."""
    base = metric(copies_runner(model, tokens)([])[0]).float()  # the unpatched run, on the same backend
    return base[:, None, None] - replace_heads(model, tokens, values, metric, max_rows=max_rows, per_prompt=True)


def per_prompt_effects(model, prompts: SuccessorPrompts) -> dict[str, torch.Tensor]:
    """Drop in log p(successor) per prompt and head, ``{name: [P, n_layers, n_heads]}`` (positive = the head helps).

    - "mean ablation (exact)": each head's output replaced by its mean over the prompts;
    - "corrupt patching (exact)": replaced by its value on the prompt's corrupted twin;
    - "attribution (corrupt)": attribution patching's linear estimate of the same patch.
    """
    metric = logprob_metric(prompts.target)
    mean = ablation_values(model, prompts.tokens, "mean", prompts.tokens)
    corrupt = head_outputs(model, prompts.corrupt)
    out = {"mean ablation (exact)": _replace_per_prompt(model, prompts.tokens, mean, metric),
           "corrupt patching (exact)": _replace_per_prompt(model, prompts.tokens, corrupt, metric)}
    out["attribution (corrupt)"] = -attribution_patch_heads(model, prompts.tokens, prompts.corrupt, metric, per_prompt=True)
    return out


def _pair_stats(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[float, float]:
    return spearman(a, b), top_k_overlap(a, b, k)


def disagreement_sources(effects: dict[str, torch.Tensor], k: int = 10, n_boot: int = 200, seed: int = 0):
    """The disagreement between mean ablation and attribution, split into its sources (a DataFrame).

    Rows: baseline (mean vs corrupt, both exact), linearisation (exact vs attribution, same
    corrupt baseline), both together, and prompt noise (each method on bootstrap resamples
    of the prompts against itself on all prompts: mean and 95% range). Columns: Spearman over all heads and top-`k` overlap,
    each with a 95% bootstrap interval over prompts.
    """
    import pandas as pd

    m, c, a = effects["mean ablation (exact)"], effects["corrupt patching (exact)"], effects["attribution (corrupt)"]
    pairs = {"baseline: mean vs corrupt": (m, c),
             "linearisation: exact vs attribution": (c, a),
             "both: mean ablation vs attribution": (m, a)}
    rows = []
    for name, (x, y) in pairs.items():
        both = torch.stack([x, y], 1)  # [P, 2, L, H]
        sp = bootstrap(both, lambda t: spearman(t[:, 0].mean(0), t[:, 1].mean(0)), n=n_boot, seed=seed)
        ov = bootstrap(both, lambda t: top_k_overlap(t[:, 0].mean(0), t[:, 1].mean(0), k), n=n_boot, seed=seed)
        rows.append({"source": name, "Spearman": sp.value, "Spearman 95%": f"[{sp.low:.2f}, {sp.high:.2f}]",
                     f"top-{k} overlap": ov.value, f"top-{k} 95%": f"[{ov.low:.2f}, {ov.high:.2f}]"})
    g = torch.Generator().manual_seed(seed)
    P = m.shape[0]
    draws = [torch.randint(0, P, (P,), generator=g) for _ in range(n_boot)]
    for name, x in {"prompt noise: mean ablation": m, "prompt noise: attribution": a}.items():
        full = x.mean(0)
        sp = np.array([spearman(x[i].mean(0), full) for i in draws])
        ov = np.array([top_k_overlap(x[i].mean(0), full, k) for i in draws])
        rows.append({"source": name, "Spearman": float(sp.mean()),
                     "Spearman 95%": f"[{np.quantile(sp, 0.025):.2f}, {np.quantile(sp, 0.975):.2f}]",
                     f"top-{k} overlap": float(ov.mean()),
                     f"top-{k} 95%": f"[{np.quantile(ov, 0.025):.2f}, {np.quantile(ov, 0.975):.2f}]"})
    return pd.DataFrame(rows).set_index("source").round(2)


def _interval(cell: str) -> tuple[float, float]:
    lo, hi = cell.strip("[]").split(",")
    return float(lo), float(hi)


def disagreement_verdict(table, k: int = 10) -> list[str]:
    """Sentences read off `disagreement_sources`: which source is larger by each statistic, and
    whether its intervals separate it from the other, and how the linearisation compares with
    attribution's own prompt noise."""
    col, ci = f"top-{k} overlap", f"top-{k} 95%"
    rows = {name: [i for i in table.index if i.startswith(name)][0]
            for name in ("baseline", "linearisation", "prompt noise: attr")}
    out = []
    for stat, stat_ci, label in (("Spearman", "Spearman 95%", "Spearman"), (col, ci, f"top-{k} overlap")):
        b, lin = float(table.loc[rows["baseline"], stat]), float(table.loc[rows["linearisation"], stat])
        blo, bhi = _interval(table.loc[rows["baseline"], stat_ci])
        llo, lhi = _interval(table.loc[rows["linearisation"], stat_ci])
        worse = "the baseline" if b < lin else "the linearisation"
        sep = bhi < llo if b < lin else lhi < blo
        out.append(f"by {label}: baseline alone {b:.2f} [{blo:.2f}, {bhi:.2f}], linearisation alone {lin:.2f} "
                   f"[{llo:.2f}, {lhi:.2f}]: " + (f"{worse} changes the ranking more, and the intervals do not overlap"
                                                   if sep else f"{worse} scores lower, but the intervals overlap, so "
                                                   f"{label} cannot tell the two sources apart"))
    lin, noise = float(table.loc[rows["linearisation"], col]), float(table.loc[rows["prompt noise: attr"], col])
    out.append(f"the linearisation's top-{k} overlap ({lin:.2f}) is "
               + ("no lower than" if lin >= noise else "below")
               + f" attribution's agreement with itself on resampled prompts ({noise:.2f})"
               + (": within prompt noise" if lin >= noise else ": more than prompt noise alone"))
    return out


def top_head_stability(per_prompt: torch.Tensor, k: int = 5, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """For each of the top-`k` heads (all prompts), the share of bootstrap resamples that keep it in the top `k`."""
    g = torch.Generator().manual_seed(seed)
    P = per_prompt.shape[0]
    top = top_heads(per_prompt.mean(0), k)
    hits = {h: 0 for h in top}
    for _ in range(n_boot):
        idx = torch.randint(0, P, (P,), generator=g)
        now = set(top_heads(per_prompt[idx].mean(0), k))
        for h in top:
            hits[h] += h in now
    return {head_label(h): hits[h] / n_boot for h in top}


def attention_to_item(model, prompts: SuccessorPrompts) -> torch.Tensor:
    """Mean attention from the final comma to the last item (position -2), per head: ``[n_layers, n_heads]``."""
    B, T = prompts.tokens.shape
    return attention_to(attention_patterns(model, prompts.tokens), torch.full((B,), T - 1), torch.full((B,), T - 2))


# --------------------------------------------------------------------------------------
# Where a sender's effect goes: all receivers of each kind
# --------------------------------------------------------------------------------------


@torch.no_grad()
def sender_routes(model, prompts: SuccessorPrompts, sender: Head, per_prompt: bool = False) -> dict:
    """Split a mean-ablated sender's effect by the first component that reads its change.

    delta = the change of the sender's output (mean minus clean, through W_O). Each route's
    receivers read clean + delta (exactly what they would read if only the direct edge from
    the sender changed); everything downstream of them recomputes. Routes: "direct" (the
    final residual stream), "all later heads' queries", "all later heads' keys/values" and
    "all MLPs from the sender's layer on" (the sender's own MLP reads it first). Also "total"
    (the sender ablated outright) and "sum of routes". Drops in log p(successor): the mean over
    prompts, or with ``per_prompt=True`` one value per prompt (``[batch]`` tensors, for `route_table`).

    Each route's receivers of that kind are all held at their edge-run values, so paths from one
    receiver of a kind through later components to another receiver of the same kind are cut.
    """
    tokens, metric = prompts.tokens, logprob_metric(prompts.target)
    ls, hs = sender
    L = model.cfg.n_layers
    mean = ablation_values(model, tokens, "mean", tokens, layers=[ls])[ls]
    z = head_outputs(model, tokens, [ls])[ls]
    delta = torch.einsum("bpe,ed->bpd", mean[:, :, hs] - z[:, :, hs], model.W_O[ls, hs].detach())
    names = {s: [hook_name(l, s) for l in range(L)] for s in ("resid_pre", "resid_mid", "resid_post", "q", "k", "v", "mlp_out")}
    want = set(sum(names.values(), []))
    _, clean = model.run_with_cache(tokens, names_filter=lambda n: n in want)
    base = metric(model(tokens)).float()

    # the edge run: every receiver of the sender reads clean + delta; record what they then compute
    forced = [Patch(l, None, clean[names["resid_pre"][l]] + delta, "resid_pre") for l in range(ls + 1, L)]
    forced += [Patch(l, None, clean[names["resid_mid"][l]] + delta, "resid_mid") for l in range(ls, L)]
    keep = [names["mlp_out"][l] for l in range(ls, L)] + [names[s][l] for l in range(ls + 1, L) for s in "qkv"]
    _, cap = run_copies(model, tokens, [forced], capture=keep)
    captured = {n: cap[n][1] for n in keep}

    def drop(patches) -> torch.Tensor:
        return base - metric(run_patched(model, tokens, patches)).float()

    H, last = model.cfg.n_heads, names["resid_post"][L - 1]
    out = {"total": drop([Patch(ls, hs, mean)])}
    out["direct (final residual)"] = drop([Patch(L - 1, None, clean[last] + delta, "resid_post")])
    out["all later heads' queries"] = drop([Patch(l, h, captured[names["q"][l]], "q") for l in range(ls + 1, L)
                                            for h in range(H)])
    out["all later heads' keys/values"] = drop([Patch(l, h, captured[names[s][l]], s) for l in range(ls + 1, L) for s in "kv"
                                                for h in range(H)])
    out["all MLPs from the sender's layer on"] = drop([Patch(l, None, captured[names["mlp_out"][l]], "mlp_out")
                                                       for l in range(ls, L)])
    out["sum of routes"] = sum(v for k, v in out.items() if k != "total")
    return out if per_prompt else {k: float(v.mean()) for k, v in out.items()}


def route_table(per_prompt: dict[str, torch.Tensor], n_boot: int = 1000, seed: int = 0):
    """`sender_routes(..., per_prompt=True)` as a DataFrame: the mean drop with its 95% bootstrap
    interval over prompts ("low", "high"), and the share of the total (the ratio of the means,
    with its interval: "share low", "share high")."""
    import pandas as pd

    names = list(per_prompt)
    stack = torch.stack([per_prompt[n] for n in names], 1)  # [P, routes]
    t = names.index("total")
    rows = []
    for i, name in enumerate(names):
        d = bootstrap(stack[:, i], n=n_boot, seed=seed)
        sh = bootstrap(stack, lambda x, i=i: float(x[:, i].mean() / x[:, t].mean()), n=n_boot, seed=seed)
        rows.append({"route": name, "drop in log p(successor)": d.value, "low": d.low, "high": d.high,
                     "share of total": sh.value, "share low": sh.low, "share high": sh.high})
    return pd.DataFrame(rows).set_index("route").round(3)


# --------------------------------------------------------------------------------------
# The exercise: one head's effective OV circuit from plain tensors
# --------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last axis (a new tensor)."""
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight


def effective_ov_head(resid: torch.Tensor, w_in: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor,
                      w_final: torch.Tensor, W_U: torch.Tensor) -> torch.Tensor:
    """One head's effective OV table on an RMSNorm model, ``[n, n]`` (row = input token, column = output token).

    Args:
        resid: [n, d_model] effective embeddings of the n tokens.
        w_in: [d_model] the head's input RMSNorm weight; W_V: [d_model, d_head]; W_O: [d_head, d_model].
        w_final: [d_model] the final RMSNorm weight; W_U: [d_model, n] unembedding columns of the n tokens.

    Returns:
        rms_norm(rms_norm(resid, w_in) @ W_V @ W_O, w_final) @ W_U (eps 1e-5), a new tensor.
    """
    return rms_norm(rms_norm(resid, w_in) @ W_V @ W_O, w_final) @ W_U


__all__ = [
    "QUALIFY", "RECIPES", "effective_embeddings", "recipe_tables", "recipe_table", "shuffle_within_category",
    "ica_null", "succession_component", "per_prompt_effects", "disagreement_sources", "disagreement_verdict",
    "top_head_stability", "attention_to_item", "sender_routes", "route_table", "rms_norm", "effective_ov_head",
]
