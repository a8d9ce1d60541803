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

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .ablation import NoiseDenoise, Pairs, Task, noising_denoising, pair_interactions, sweep
from .env import trim_memory
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
def run_chunked(model, tokens: torch.Tensor, copies: Sequence[Sequence[Patch]], max_rows: int = 80,
                reduce=None) -> torch.Tensor:
    """Last-position logits ``[1 + n, batch, vocab]`` of the unpatched run and every copy, a few copies per pass
    (at most `max_rows` rows each, on the engine's fastest exact backend). `reduce`: applied to each pass's
    ``[k, batch, vocab]`` logits before they are kept (e.g. a logit difference), so that the full-vocabulary
    logits of every copy are never held at once."""
    run = copies_runner(model, tokens)
    keep = reduce or (lambda x: x)
    if not copies:
        return keep(run([])[:, :, -1])
    per = max(1, max_rows // tokens.shape[0] - 1)
    out = []
    for i in range(0, len(copies), per):
        x = run(list(copies[i:i + per]))[:, :, -1]
        out.append(keep(x if not out else x[1:]))
        del x
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
    z_b = head_outputs(model, tokens_b, max_prompts=8)
    every = all_heads(model)
    rng = np.random.default_rng(seed)
    sets = [heads] + [[every[i] for i in rng.choice(len(every), len(heads), replace=False)] for _ in range(n_random)]
    copies = [[Patch(l, h, z_b[l]) for l, h in s] for s in sets]
    if damage_values is not None:
        copies.append([Patch(l, h, damage_values[l]) for l, h in heads])
    rows = torch.arange(tokens_a.shape[0])
    m = run_chunked(model, tokens_a, copies, reduce=lambda x: x[:, rows, answer_a] - x[:, rows, answer_b])  # [1 + n, batch]
    lb = run_chunked(model, tokens_b, [])[0]  # B's last-position logits, without the full-vocabulary logits of every position
    b = lb[rows, answer_a] - lb[rows, answer_b]
    trim_memory()
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
    `per_prompt`: the same terms on each prompt ({"total", "direct", "norm", "heads", "rest", "per_run_direct"},
    each ``[batch]``); `part`: ``[batch]`` the sub-task (template) of each prompt, after `pool_splits`.
    """

    heads: list[Head]
    total: float
    direct: float
    norm_repair: float
    other_repair: float
    per_run_direct: float
    by_head: dict[str, float]
    rest: float
    per_prompt: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    part: torch.Tensor | None = None

    @property
    def compensation(self) -> float:
        return self.direct - self.total

    @property
    def repaired(self) -> float:
        """Share of the direct effect that came back (0 = none, 1 = all)."""
        return self.compensation / self.direct if abs(self.direct) > 1e-9 else float("nan")

    def values(self, what: str) -> torch.Tensor:
        """Per-prompt values of a term: a key of `per_prompt`, or "compensation" (direct - total)."""
        pp = self.per_prompt
        if what == "compensation":
            return pp["direct"] - pp["total"]
        if what not in pp:
            raise ValueError(f"unknown term {what!r}; use 'compensation' or one of {sorted(pp)}")
        return pp[what]

    def interval(self, what: str, n: int = 1000, seed: int = 0) -> Interval:
        """Mean of a term over prompts with its bootstrap 95% interval."""
        return bootstrap(self.values(what), n=n, seed=seed)

    def template_means(self, what: str) -> list[float]:
        """The term's mean on each sub-task (template), in order."""
        v, g = self.values(what), self.part if self.part is not None else torch.zeros(len(self.values(what)))
        return [float(v[g == i].mean()) for i in torch.unique(g).tolist()]

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
    pp_direct, pp_total, pp_norm = (hc - ha)[:, mask].sum(-1), ld_c - ld_a, ld_a - ld_a_frozen
    pp_heads = (ha - hc)[:, ~mask].sum(-1)
    pp = {"total": pp_total, "direct": pp_direct, "norm": pp_norm, "heads": pp_heads,
          "rest": pp_direct - pp_total - pp_norm - pp_heads,
          "per_run_direct": (c.per_prompt_heads - a.per_prompt_heads)[:, mask].sum(-1)}
    return FrozenSplit(heads, total, direct_f, norm_repair, other, per_run, by_head, other - float(rise[~mask].sum()),
                       {k: v.detach().float() for k, v in pp.items()})


@torch.no_grad()
def clean_reading(model, tokens, answer, wrong):
    """The clean run's DLA, per-prompt final-norm scale and logit difference (for `frozen_split`)."""
    store: dict = {}
    c = direct_logit_attribution(model, tokens, answer, wrong, fwd_hooks=[_capture_final(model, store)])
    s_c, ld_c = _scale_and_ld(model, store["x"], answer, wrong)
    return c, s_c, ld_c


# --------------------------------------------------------------------------------------
# Self-repair, pairs, noising vs denoising on many prompts (pooled over templates, with intervals)
# --------------------------------------------------------------------------------------


def _check_parts(tasks: Sequence[Task], values: Sequence | None = None) -> None:
    if not tasks:
        raise ValueError("give at least one Task (one per template)")
    if values is not None and len(values) != len(tasks):
        raise ValueError(f"give one set of replacement values per task: {len(values)} for {len(tasks)} tasks")


def _part(sizes: Sequence[int]) -> torch.Tensor:
    return torch.cat([torch.full((int(n),), i) for i, n in enumerate(sizes)])


def clean_readings(model, tasks: Sequence[Task]) -> list:
    """`clean_reading` of every sub-task (one clean pass each; reuse them across heads and cells)."""
    _check_parts(tasks)
    return [clean_reading(model, t.tokens, t.answer, t.wrong) for t in tasks]


def pooled_dla(readings: Sequence, tasks: Sequence[Task]) -> torch.Tensor:
    """``[n_layers, n_heads]``: each head's clean direct logit attribution, mean over every prompt of `tasks`."""
    _check_parts(tasks, readings)
    return sum(r[0].heads * len(t) for r, t in zip(readings, tasks)) / sum(len(t) for t in tasks)


def pool_splits(parts: Sequence[FrozenSplit]) -> FrozenSplit:
    """One `FrozenSplit` over the prompts of several (same heads, one per template); `part` records the template."""
    if not parts:
        raise ValueError("nothing to pool")
    sizes = [len(p.per_prompt["total"]) for p in parts]
    w = [n / sum(sizes) for n in sizes]
    mean = lambda a: float(sum(float(getattr(p, a)) * wi for p, wi in zip(parts, w)))  # noqa: E731
    by_head = {k: float(sum(p.by_head[k] * wi for p, wi in zip(parts, w))) for k in parts[0].by_head}
    pp = {k: torch.cat([p.per_prompt[k] for p in parts]) for k in parts[0].per_prompt}
    return FrozenSplit(parts[0].heads, mean("total"), mean("direct"), mean("norm_repair"), mean("other_repair"),
                       mean("per_run_direct"), by_head, mean("rest"), pp, _part(sizes))


def pooled_splits(model, tasks: Sequence[Task], heads: Sequence[Head], values: Sequence[dict], readings=None
                  ) -> list[FrozenSplit]:
    """`frozen_split` of each head (ablated alone, replaced by `values[i]` on `tasks[i]`), pooled over every prompt."""
    _check_parts(tasks, values)
    readings = readings or clean_readings(model, tasks)
    out = [pool_splits([frozen_split(model, t.tokens, t.answer, t.wrong, [h], v, r)
                        for t, v, r in zip(tasks, values, readings)]) for h in heads]
    trim_memory()
    return out


#: Below this, a logit-difference term prints as +0.00 and reads as nothing: float noise (e.g. the heads after
#: a last-layer head, which do not exist) must not print a sign or a ranking that another CPU would flip.
NOISE = 0.005


def _f(x: float) -> str:
    return f"{0.0 if abs(x) < NOISE else x:+.2f}"


def _iv(iv: Interval) -> str:
    return f"{_f(iv.value)} [{_f(iv.low)}, {_f(iv.high)}]"


def _word(iv: Interval) -> str:
    if max(abs(iv.low), abs(iv.high)) < NOISE:
        return "nothing"
    return "repairs" if iv.low > 0 else "worsens" if iv.high < 0 else "uncertain"


def repair_reading(f: FrozenSplit) -> str:
    """total = direct - compensation with intervals over prompts (each run read with its own final-norm scale),
    per-template compensation, and the reading the interval supports."""
    pp = f.per_prompt
    comp = pp["per_run_direct"] - pp["total"]
    t, d, c = f.interval("total"), bootstrap(pp["per_run_direct"]), bootstrap(comp)
    g = f.part if f.part is not None else torch.zeros(len(comp))
    per_t = " / ".join(f"{float(comp[g == i].mean()):+.2f}" for i in torch.unique(g).tolist())
    if c.low > 0 and t.high < 0:
        verdict = (f"over-repair: the rest of the network gives back more than the direct effect ({c.value:+.2f} of "
                   f"{d.value:+.2f}), so removing the head RAISES the logit difference")
    elif c.low > 0:
        verdict = ("self-repair: the rest of the network gives back " +
                   (f"{c.value / d.value:.0%} of the direct effect" if d.low > 0 else
                    f"{c.value:+.2f} (the direct effect itself is uncertain)"))
    elif c.high < 0:
        verdict = "the rest of the network makes the damage worse than the head's own term"
    else:
        verdict = "uncertain: the compensation's interval crosses zero"
    return (f"{head_label(f.heads[0]):6s} total {_iv(t)} = direct {_iv(d)} - compensation {_iv(c)} "
            f"(per template {per_t}) -> {verdict}")


def frozen_reading(f: FrozenSplit) -> str:
    """The frozen-scale split with intervals: compensation = final-norm scale + other heads + MLPs/embeddings."""
    c, nr, hd, rs = (f.interval(k) for k in ("compensation", "norm", "heads", "rest"))
    top = ", ".join(f"{n} {_f(v)}" for n, v in f.top(2) if abs(v) >= NOISE) or f"none above {NOISE}"
    return (f"{head_label(f.heads[0]):6s} direct {_f(f.direct)} (per-run scale {_f(f.per_run_direct)}); compensation "
            f"{_iv(c)} = final-norm scale {_iv(nr)} ({_word(nr)}) + heads {_iv(hd)} ({_word(hd)}) + MLPs/embeddings "
            f"{_iv(rs)} ({_word(rs)}) | top heads: {top}")


def pool_pairs(parts: Sequence[Pairs]) -> Pairs:
    """One `Pairs` over the prompts of several (same heads, one per template)."""
    if not parts or any(p.single_pp is None for p in parts):
        raise ValueError("pool Pairs that carry per-prompt drops (ablation.pair_interactions)")
    s, pp = torch.cat([p.single_pp for p in parts], -1), torch.cat([p.pair_pp for p in parts], -1)
    return Pairs(parts[0].heads, s.mean(-1), pp.mean(-1), s, pp, _part([p.single_pp.shape[-1] for p in parts]))


def pooled_pairs(model, tasks: Sequence[Task], heads: Sequence[Head], values: Sequence[dict], max_rows: int = 64) -> Pairs:
    """`ablation.pair_interactions` on every sub-task (its own replacement values), pooled over all prompts."""
    _check_parts(tasks, values)
    out = pool_pairs([pair_interactions(model, t, heads, v, max_rows=max_rows) for t, v in zip(tasks, values)])
    trim_memory()
    return out


def pair_intervals(pairs: Pairs, a: Head, b: Head, n: int = 1000, seed: int = 0) -> dict:
    """Bootstrap intervals over prompts of the single drops of `a` and `b` and of their interaction, and the
    interaction's mean on each template."""
    if pairs.single_pp is None:
        raise ValueError("these Pairs have no per-prompt drops")
    i, j = pairs.heads.index(tuple(a)), pairs.heads.index(tuple(b))
    inter = pairs.pair_pp[i, j] - pairs.single_pp[i] - pairs.single_pp[j]
    g = pairs.part if pairs.part is not None else torch.zeros(len(inter))
    return {"a": bootstrap(pairs.single_pp[i], n=n, seed=seed), "b": bootstrap(pairs.single_pp[j], n=n, seed=seed),
            "interaction": bootstrap(inter, n=n, seed=seed),
            "per_template": [float(inter[g == k].mean()) for k in torch.unique(g).tolist()]}


def pool_noising(parts: Sequence[NoiseDenoise]) -> NoiseDenoise:
    """One `NoiseDenoise` over the prompts of several; shares are ratios of means over all prompts."""
    if not parts or any(p.noise_pp is None for p in parts):
        raise ValueError("pool NoiseDenoise results that carry per-prompt values (ablation.noising_denoising)")
    noise, gain = torch.cat([p.noise_pp for p in parts], -1), torch.cat([p.gain_pp for p in parts], -1)
    clean, corrupt = torch.cat([p.clean_pp for p in parts]), torch.cat([p.corrupt_pp for p in parts])
    gap = float((clean - corrupt).mean())
    return NoiseDenoise(parts[0].heads, noise.mean(-1) / gap, gain.mean(-1) / gap, float(clean.mean()), float(corrupt.mean()),
                        noise, gain, clean, corrupt, _part([len(p.clean_pp) for p in parts]))


def pooled_noising(model, tasks: Sequence[Task], heads: Sequence[Head], max_rows: int = 64, evidence=None) -> NoiseDenoise:
    """`ablation.noising_denoising` on every sub-task, pooled over all prompts.

    `evidence`: the all-heads sweep of the same `tasks` (`ablation_screen.task_evidence`). Its exact resample drops
    ARE the noising drops (the same counterfactual outputs patched into the clean run), so they are read from it
    (measured first where missing) and only denoising is run."""
    _check_parts(tasks)
    if evidence is None:
        return pool_noising([noising_denoising(model, t, heads, max_rows=max_rows) for t in tasks])
    if len(evidence) != sum(len(t) for t in tasks):
        raise ValueError(f"the evidence has {len(evidence)} prompts, the tasks {sum(len(t) for t in tasks)}: "
                         "pass the evidence of these tasks")
    heads = [(int(l), int(h)) for l, h in heads]
    evidence.ensure_exact(model, heads, kinds=["resample"])
    noise = torch.stack([evidence.exact["resample"][:, l, h] for l, h in heads])
    parts, start = [], 0
    for t in tasks:
        den = sweep(model, t.counterfactual, head_outputs(model, t.tokens, max_prompts=8), t.metric, heads, max_rows)
        rows = slice(start, start + len(t))
        clean = evidence.clean[rows]
        gap = float((clean - den.clean_per_prompt).mean())
        parts.append(NoiseDenoise(heads, noise[:, rows].mean(-1) / gap, -den.drop / gap, float(clean.mean()), den.clean,
                                  noise[:, rows], -den.per_prompt, clean, den.clean_per_prompt))
        start += len(t)
    trim_memory()
    return pool_noising(parts)


def noising_intervals(nd: NoiseDenoise, head: Head, n: int = 1000, seed: int = 0) -> dict:
    """Necessity, sufficiency and their difference for `head`, each a ratio of means over prompts with its bootstrap
    interval; and per template (necessity, sufficiency)."""
    if nd.noise_pp is None:
        raise ValueError("this NoiseDenoise has no per-prompt values")
    i = nd.heads.index(tuple(head))
    x = torch.stack([nd.noise_pp[i], nd.gain_pp[i], nd.clean_pp - nd.corrupt_pp], 1)
    ratio = lambda col: (lambda t: float(t[:, col].mean() / t[:, 2].mean()))  # noqa: E731
    g = nd.part if nd.part is not None else torch.zeros(len(x))
    per = [(ratio(0)(x[g == k]), ratio(1)(x[g == k])) for k in torch.unique(g).tolist()]
    return {"necessity": bootstrap(x, ratio(0), n=n, seed=seed), "sufficiency": bootstrap(x, ratio(1), n=n, seed=seed),
            "difference": bootstrap(x, lambda t: float((t[:, 0].mean() - t[:, 1].mean()) / t[:, 2].mean()), n=n, seed=seed),
            "per_template": per}


def noising_reading(nd: NoiseDenoise, head: Head) -> str:
    """One head's necessity and sufficiency with intervals, labelled only where the intervals allow it."""
    iv = noising_intervals(nd, head)
    nec, suf, dif = iv["necessity"], iv["sufficiency"], iv["difference"]
    if nec.high < 0 and suf.high < 0:
        kind = "works against the answer both ways (a negative head)"
    elif dif.low > 0:
        kind = "necessary, not sufficient" if nec.low > 0 and suf.low <= 0 else "more necessary than sufficient"
    elif dif.high < 0:
        kind = "sufficient, not necessary" if suf.low > 0 and nec.low <= 0 else "more sufficient than necessary"
    else:
        kind = "uncertain: the interval of necessity - sufficiency crosses zero"
    per = "; ".join(f"{a:+.2f}/{b:+.2f}" for a, b in iv["per_template"])
    return (f"{head_label(tuple(head)):6s} necessity {_iv(nec)}  sufficiency {_iv(suf)} (per template {per}) -> {kind}")


__all__ = [
    "clean_readings", "pooled_dla", "pool_splits", "pooled_splits", "repair_reading", "frozen_reading", "pool_pairs",
    "pooled_pairs", "pair_intervals", "pool_noising", "pooled_noising", "noising_intervals", "noising_reading",
    "per_prompt_table", "rank_interval", "spearman_interval", "share_interval", "swap_io_s", "successor_swap",
    "run_chunked", "Flip", "interchange_flip", "frozen_direct_effect", "FrozenSplit", "frozen_split",
    "clean_reading",
]
