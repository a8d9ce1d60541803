"""Notebook 03's evidence over every template: pooled measurements, intervals and per-head tables.

The IOI paper (Wang et al. 2022, arXiv 2211.00593) averages over 15 templates and many prompts.
Prompts of different templates have different lengths, so each template is its own batch
(`ioi.make_ioi`); this module runs every measurement per template and pools the prompts:

- `pool(model, datasets)`: logit differences, exact DLA, attention at the named positions and
  exact all-heads activation patching (ABC into IOI) per prompt, attribution patching per template;
- `head_intervals`: bootstrap intervals over prompts for chosen heads;
- `agreement`: exact vs attribution patching (Pearson, Spearman, top-k overlap, sign flips);
- `patch_at`: head patching at one named position (e.g. S1+1 for previous-token heads);
- `copy_scores`: the paper's name-mover copy score, restricted to the name tokens;
- `knockout_classes`: the completeness check (knock out each class in the circuit and in the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import ioi
from .lab import patching, readout, scores
from .lab.hooks import Head, head_label

#: The named positions whose attention the evidence table reports ("query -> key").
ATTENTION = {"attn_io": ("END", "IO"), "attn_s2": ("END", "S2"), "induction": ("S2", "S1+1"),
             "duplicate": ("S2", "S1"), "prev_token": ("S1+1", "S1")}


def all_templates(model, n: int = 8, seed: int = 0) -> list[ioi.IOIDataset]:
    """`n` prompts (half BABA, half ABBA) of every built-in template, seeded per template."""
    return [ioi.make_ioi(model, n=n, template=t, seed=seed + t) for t in range(len(ioi.TEMPLATES))]


@dataclass
class Pooled:
    """Per-prompt evidence pooled over templates (N prompts in all).

    ld [N]; template [N] (index of each prompt's template); dla [N, layers, heads] (exact
    direct effect on IO - S); dla_io, dla_s [layers, heads] (mean effect on the IO and on
    the S logit); mlp, attn [T, layers] (per-template mean DLA of each layer's MLP / attention);
    rest [T]; attention: name -> [T, layers, heads] (per-template mean, see `ATTENTION`);
    patch [N, layers, heads] (exact noising: LD change when the head takes its ABC value);
    approx [T, layers, heads] (attribution-patching estimate of the same, per-template mean);
    dla_io_t, dla_s_t [T, layers, heads] (per-template dla_io / dla_s); dlas: each template's `readout.DLA`;
    attn_io_pp, proj_pp [N, layers, heads]: per prompt, attention END -> IO and the head's output at
    END along W_U[IO] (no norm; `ov_projection` for chosen heads).
    """

    datasets: list[ioi.IOIDataset]
    ld: torch.Tensor
    template: torch.Tensor
    dla: torch.Tensor
    dla_io: torch.Tensor
    dla_s: torch.Tensor
    mlp: torch.Tensor
    attn: torch.Tensor
    rest: torch.Tensor
    attention: dict[str, torch.Tensor]
    patch: torch.Tensor
    approx: torch.Tensor
    dla_io_t: torch.Tensor | None = None
    dla_s_t: torch.Tensor | None = None
    dlas: list[readout.DLA] | None = None
    attn_io_pp: torch.Tensor | None = None
    proj_pp: torch.Tensor | None = None

    def mean(self, name: str) -> torch.Tensor:
        """Mean over prompts (equal-size templates: the mean of template means) of a per-head table."""
        x = getattr(self, name) if hasattr(self, name) else self.attention[name]
        return x.float().mean(0)

    @property
    def clean_ld(self) -> float:
        return float(self.ld.mean())

    def template_table(self) -> str:
        """Per template: prompts, mean LD with its min and max, share IO > S, and the template."""
        rows = [f"{'template':9s}{'n':>3s}{'mean LD':>9s}{'min':>7s}{'max':>7s}{'IO > S':>8s}  text"]
        for t, ds in enumerate(self.datasets):
            x = self.ld[self.template == t]
            rows.append(f"{t:<9d}{len(x):3d}{float(x.mean()):9.2f}{float(x.min()):7.2f}{float(x.max()):7.2f}"
                        f"{float((x > 0).float().mean()):8.0%}  {ds.template}")
        return "\n".join(rows)

    def as_dla(self) -> readout.DLA:
        """The pooled direct logit attribution as a `readout.DLA` (means over all prompts)."""
        mlp, attn, rest = self.mlp.mean(0), self.attn.mean(0), float(self.rest.mean())
        return readout.DLA(heads=self.dla.mean(0), attn=attn, mlp=mlp, rest=rest, total=float(attn.sum() + mlp.sum()) + rest,
                           logit_diff=self.clean_ld, per_prompt_heads=self.dla, heads_io=self.dla_io, heads_s=self.dla_s)

    def template_means(self, table: torch.Tensor) -> torch.Tensor:
        """Per-template means of a per-prompt table ``[N, ...] -> [T, ...]``."""
        return torch.stack([table[self.template == t].float().mean(0) for t in range(len(self.datasets))])


@torch.no_grad()
def _attention(model, ds: ioi.IOIDataset) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One pass: per-prompt LD, mean attention at the named positions, and per prompt and head the
    attention END -> IO and the head's output at END along W_U[IO] (the paper's Fig. 3 axes)."""
    from .lab.hooks import hook_name

    L = model.cfg.n_layers
    names = {hook_name(l, site) for l in range(L) for site in ("pattern", "z")}
    logits, cache = model.run_with_cache(ds.tokens, names_filter=lambda n: n in names)
    pats = torch.stack([cache[hook_name(l, "pattern")] for l in range(L)])
    att = {k: readout.attention_to(pats, ds.pos[q], ds.pos[kk]) for k, (q, kk) in ATTENTION.items()}
    b = torch.arange(len(ds))
    attn_io = pats[:, b, :, ds.pos["END"], ds.pos["IO"]]  # advanced indices split by slices go first: [n, L, H]
    W_O, W_U = model.W_O.detach(), model.W_U.detach()
    u = W_U[:, ds.io].T  # [n, d_model]
    z_end = torch.stack([cache[hook_name(l, "z")][b, ds.pos["END"]] for l in range(L)], 1)  # [n, L, H, d_head]
    proj = torch.einsum("nlhe,lhed,nd->nlh", z_end, W_O, u)
    return ds.metric(logits).float(), att, attn_io.float(), proj.float()


def pool(model, datasets: Sequence[ioi.IOIDataset], exact: bool = False, approx: bool = False) -> Pooled:
    """Run the per-template measurements and pool them (see `Pooled`).

    `exact` adds all-heads activation patching per prompt and `approx` attribution patching
    per template (both NaN otherwise): the exact one costs ~270 forward passes per prompt's worth of rows.
    """
    lds, tpl, dla, dio, ds_, mlp, attn, rest, att, pat, apx, dlas, a_io, prj = ([] for _ in range(14))
    for t, ds in enumerate(datasets):
        d = readout.direct_logit_attribution(model, ds.tokens, ds.io, ds.s)
        dlas.append(d)
        clean, att_t, a_io_t, prj_t = _attention(model, ds)
        lds.append(clean)
        a_io.append(a_io_t), prj.append(prj_t)
        tpl.append(torch.full((len(ds),), t))
        dla.append(d.per_prompt_heads)
        dio.append(d.heads_io)
        ds_.append(d.heads_s)
        mlp.append(d.mlp)
        attn.append(d.attn)
        rest.append(d.rest)
        att.append(att_t)
        if exact:
            pat.append(patching.patch_heads_per_prompt(model, ds.tokens, ds.abc_tokens, ds.metric) - clean[:, None, None])
        if approx:
            apx.append(patching.attribution_patch_heads(model, ds.tokens, ds.abc_tokens, ds.metric))
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    return Pooled(list(datasets), torch.cat(lds), torch.cat(tpl), torch.cat(dla), torch.stack(dio).mean(0),
                  torch.stack(ds_).mean(0), torch.stack(mlp), torch.stack(attn), torch.tensor(rest),
                  {k: torch.stack([a[k] for a in att]) for k in ATTENTION},
                  torch.cat(pat) if exact else torch.full((len(torch.cat(lds)), n_l, n_h), float("nan")),
                  torch.stack(apx) if approx else torch.full((len(datasets), n_l, n_h), float("nan")),
                  torch.stack(dio), torch.stack(ds_), dlas, torch.cat(a_io), torch.cat(prj))


def head_intervals(per_prompt: torch.Tensor, heads: Sequence[Head], n: int = 1000, seed: int = 0) -> dict[Head, scores.Interval]:
    """Bootstrap interval over prompts (axis 0) of the mean of `per_prompt[:, l, h]` for each head."""
    return {tuple(h): scores.bootstrap(per_prompt[:, h[0], h[1]], n=n, seed=seed) for h in heads}


def fmt_intervals(iv: dict[Head, scores.Interval], digits: int = 2) -> str:
    """'L9H6 +1.23 [1.01, 1.45]' per head, comma-separated."""
    return ", ".join(f"{head_label(h)} {i.value:+.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]" for h, i in iv.items())


@dataclass
class Agreement:
    """Exact vs estimated per-head effects: correlations, top-k overlap and sign flips among large exact effects."""

    pearson: float
    spearman: float
    overlap: float
    k: int
    large: list[Head]
    flipped: list[Head]


def agreement(exact: torch.Tensor, approx: torch.Tensor, k: int = 10) -> Agreement:
    """Compare two ``[layers, heads]`` tables; "large" = the `k` largest |exact| effects, "flipped" = opposite sign there."""
    e, a = exact.flatten().double(), approx.flatten().double()
    pearson = float(torch.corrcoef(torch.stack([e, a]))[0, 1])
    large = [tuple(int(x) for x in h) for h in torch.stack(torch.unravel_index(exact.abs().flatten().argsort(descending=True)[:k],
                                                                                  exact.shape), 1)]
    flipped = [h for h in large if float(exact[h]) * float(approx[h]) < 0]
    return Agreement(pearson, scores.spearman(-exact, -approx), scores.top_k_overlap(exact.abs(), approx.abs(), k), k,
                     large, flipped)


def patch_at(model, datasets: Sequence[ioi.IOIDataset], where: str, heads: Sequence[Head]) -> torch.Tensor:
    """Noising patch of each head at ONE named position (e.g. "S1+1"), per prompt: ``[N, layers, heads]``.

    BABA and ABBA prompts have the names in different places, so each order is its own batch.
    """
    out = []
    for ds in datasets:
        for order in ("BABA", "ABBA"):
            idx = [i for i, o in enumerate(ds.order) if o == order]
            if not idx:
                continue
            sub = ds.subset(idx)
            pos = sub.pos[where]
            assert bool((pos == pos[0]).all()), f"{where} differs within {order} prompts of a template"
            with torch.no_grad():
                clean = sub.metric(model(sub.tokens)).float()
            out.append(patching.patch_heads_per_prompt(model, sub.tokens, sub.abc_tokens, sub.metric, heads=heads,
                                                       pos=int(pos[0])) - clean[:, None, None])
    return torch.cat(out)


@torch.no_grad()
def copy_scores(model, name_ids: torch.Tensor, k: int = 5, negative: bool = False) -> torch.Tensor:
    """Share of names that a head's OV circuit copies: ``[layers, heads]`` in [0, 1].

    For each name token, the residual after layer 0 (embedding + first block, as the paper's
    "first MLP output"), through the head's OV circuit and the unembedding, restricted to the
    name tokens; the name counts as copied if it is among the top `k` of the names. With
    `negative=True` the OV circuit is negated (the paper's negative copy score). The paper ranks
    the whole vocabulary; restricting to names is cheaper and asks the same question of IOI.
    """
    ov = readout.effective_ov(model, name_ids)  # [L, H, n, n]: row = attended name, column = name raised
    if negative:
        ov = -ov
    top = ov.topk(k, dim=-1).indices
    own = torch.arange(len(name_ids))[:, None]
    return (top == own).any(-1).float().mean(-1)


@torch.no_grad()
def copy_scores_both(model, name_ids: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(`copy_scores`, negative `copy_scores`) from one effective-OV computation."""
    ov = readout.effective_ov(model, name_ids)
    own = torch.arange(len(name_ids))[:, None]
    return tuple((x.topk(k, dim=-1).indices == own).any(-1).float().mean(-1) for x in (ov, -ov))


def name_ids(model) -> torch.Tensor:
    """Token ids of the module's names that are single tokens (with a leading space)."""
    return torch.tensor([model.to_single_token(" " + n) for n in ioi.single_token_words(model, ioi.NAMES)])


def ov_projection(model, ds: ioi.IOIDataset, heads: Sequence[Head]) -> dict[Head, tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt, each head's attention END -> IO and its output at END along W_U[IO] (the paper's Fig. 3 scatter).

    Returns {head: (attention [n], projection [n])}; the projection is z[END] @ W_O[h] @ W_U[:, IO] (no norm).
    """
    from .lab.hooks import head_outputs

    pats = readout.attention_patterns(model, ds.tokens)
    layers = sorted({l for l, _ in heads})
    z = head_outputs(model, ds.tokens, layers)
    W_O, W_U = model.W_O.detach(), model.W_U.detach()
    b = torch.arange(len(ds))
    out = {}
    for l, h in heads:
        att = pats[l][b, h, ds.pos["END"], ds.pos["IO"]]
        proj = (z[l][b, ds.pos["END"], h] @ W_O[l, h] * W_U[:, ds.io].T).sum(-1)
        out[(l, h)] = (att.float(), proj.float())
    return out


def knockout_classes(model, datasets: Sequence[ioi.IOIDataset], classes: dict[str, list[Head]],
                     circuit: Sequence[Head]) -> dict[str, tuple[float, float]]:
    """The completeness check (Wang et al. 2022): mean-ablate (ABC means) each class K in the circuit and in the model.

    Returns {class: (LD of the circuit without K, LD of the model without K)}, means over all prompts;
    the key "(nothing)" gives the circuit and the model with no class removed. A complete circuit
    keeps the two close for every K.
    """
    from .lab.hooks import all_heads

    every = all_heads(model)
    circuit = {tuple(h) for h in circuit}
    outside = [h for h in every if h not in circuit]
    groups = {"(nothing)": []} | {c: hs for c, hs in classes.items() if hs}
    out = {c: [0.0, 0.0] for c in groups}
    n = 0
    for ds in datasets:
        means = patching.ablation_values(model, ds.tokens, "mean", reference_tokens=ds.abc_tokens)
        for c, hs in groups.items():
            ko = [tuple(h) for h in hs]
            for j, ablate in enumerate((outside + [h for h in ko if h not in outside], ko)):
                patches = patching.heads_replaced(ablate, means)
                lg = patching.run_patched(model, ds.tokens, patches) if ablate else model(ds.tokens)
                out[c][j] += float(ds.metric(lg).sum())
        n += len(ds)
    return {c: (v[0] / n, v[1] / n) for c, v in out.items()}


__all__ = ["ATTENTION", "all_templates", "Pooled", "pool", "head_intervals", "fmt_intervals", "Agreement", "agreement",
           "patch_at", "copy_scores", "copy_scores_both", "name_ids", "ov_projection", "knockout_classes"]


def evidence_table(heads: Sequence[Head], dla, attn_io, attn_s2, copy, neg_copy, patch, pp_q, pp_v, prev, prev_patch,
                   clean_ld: float) -> str:
    """One row per head: DLA, attention END->IO / END->S2, copy and negative copy scores, exact patching,
    path patching into the answer heads' queries (pp_q) and into S-inhibition values + answer keys (pp_v),
    attention S1+1->S1 and patching at S1+1; '.' = not measured. The last line gives the thresholds as shares of `clean_ld`.
    """
    def f(t, h, spec):
        if t is None:
            return "."
        v = float(t[h])
        return "." if v != v else format(v, spec)

    cols = [("DLA", dla, "+.2f"), ("->IO", attn_io, ".2f"), ("->S2", attn_s2, ".2f"), ("copy", copy, ".0%"),
            ("-copy", neg_copy, ".0%"), ("patch", patch, "+.2f"), ("pp q", pp_q, "+.2f"), ("pp v/k", pp_v, "+.2f"),
            ("S1+1>S1", prev, ".2f"), ("@S1+1", prev_patch, "+.2f")]
    rows = [f"{'head':7s}" + "".join(f"{c:>9s}" for c, _, _ in cols)]
    for h in heads:
        rows.append(f"{head_label(h):7s}" + "".join(f"{f(t, tuple(h), s):>9s}" for _, t, s in cols))
    L = abs(clean_ld)
    rows.append(f"thresholds: |DLA| >= {0.1 * L:.2f} (10% of LD), path patching <= {-0.05 * L:.2f} (5%), attention >= 0.3")
    return "\n".join(rows)


__all__ += ["evidence_table"]


@torch.no_grad()
def resid_cells(model, ds: ioi.IOIDataset, cells: Sequence[tuple[int, int]]) -> list[tuple[float, float]]:
    """What a residual patch (ABC into IOI, `resid_pre` of `layer` at position `pos`) does to each logit.

    Returns, per (layer, pos) cell, the mean change in the IO logit and in the S logit at the final
    position (their difference is the cell's change in LD): does a cell move IO, or S?
    """
    from .lab.hooks import hook_name

    names = {hook_name(l, "resid_pre") for l, _ in cells}
    _, cache = model.run_with_cache(ds.abc_tokens, names_filter=lambda n: n in names)
    copies = [[patching.Patch(l, None, cache[hook_name(l, "resid_pre")], site="resid_pre", pos=p)] for l, p in cells]
    logits, _ = patching.run_copies(model, ds.tokens, copies)
    b = torch.arange(len(ds))
    last = logits[:, :, -1]  # [1 + cells, batch, vocab]
    io, s = last[:, b, ds.io], last[:, b, ds.s]
    return [(float((io[i] - io[0]).mean()), float((s[i] - s[0]).mean())) for i in range(1, len(cells) + 1)]


@torch.no_grad()
def token_swapped_ld(model, ds: ioi.IOIDataset, pos: int) -> float:
    """Mean LD when the token at `pos` is replaced by the ABC prompt's token (an edited prompt, no patching)."""
    tokens = ds.tokens.clone()
    tokens[:, pos] = ds.abc_tokens[:, pos]
    return float(ds.metric(model(tokens)).mean())


__all__ += ["resid_cells", "token_swapped_ld"]


def speed_against_tl(model, ds: ioi.IOIDataset, exact_change: torch.Tensor, clean_ld: float, engine_s: float,
                     layer: int, n_timed: int = 3):
    """Time TransformerLens's loop (one forward per head) on `n_timed` heads of `layer`, same prompts, and compare.

    `exact_change` is the engine's ``[layers, heads]`` table (mean change in LD) computed in
    `engine_s` seconds on all heads of `ds`; returns a `reference.SpeedReport` (reusing the
    engine's table instead of running it again).
    """
    import time

    from .lab import fast_llama, reference

    heads = [(layer, h) for h in range(min(n_timed, model.cfg.n_heads))]
    t0 = time.perf_counter()
    tl = reference.tl_patch_heads(model, ds.tokens, ds.abc_tokens, ds.metric, heads)
    tl_s = time.perf_counter() - t0
    diff = max(abs(float(tl[i]) - (float(exact_change[h]) + clean_ld)) for i, h in enumerate(heads))
    name = "fast Llama engine (fast_llama)" if fast_llama.supports(model) else "growing-batch engine (run_copies)"
    return reference.SpeedReport(engine_s, tl_s, len(heads), model.cfg.n_layers * model.cfg.n_heads, diff, name)


__all__ += ["speed_against_tl"]
